"""Where a py-spy profile's time went, as text: self and inclusive share per function from collapsed stacks.

    python bench/profile_summary.py PROFILE.txt [--top 30] [--filter SUBSTRING]

Why: the benchmarks record with `py-spy record --format raw` (one collapsed stack per line, then a count) so
that a terminal session, CI log or issue note can show the hot functions without opening a flame graph.
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path


def frames(stack: str) -> list[str]:
    """Function names with their file's last component, py-spy's `func (path/file.py:line)` made shorter."""
    out = []
    for frame in stack.split(";"):
        name, _, where = frame.partition(" (")
        file = where.rsplit(":", 1)[0].rsplit("/", 1)[-1]
        out.append(f"{name} ({file})" if file else name)
    return out


def summarize(lines: list[str], top: int, needle: str | None) -> str:
    self_counts: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in lines:
        stack, _, count_text = line.rstrip().rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        names = frames(stack)
        self_counts[names[-1]] += count
        for name in set(names):
            inclusive[name] += count
    if not total:
        return "no samples"
    out = [f"{total} samples"]
    for title, counter in (("self", self_counts), ("inclusive", inclusive)):
        out.append(f"\n{title}:")
        for name, count in counter.most_common():
            if needle and needle not in name:
                continue
            out.append(f"  {100 * count / total:5.1f}%  {name}")
            if len(out) > 2 * top + 4 and title == "inclusive" or title == "self" and len(out) > top + 2:
                break
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--filter", default=None, help="only functions whose name contains this")
    args = parser.parse_args(argv)
    print(summarize(args.profile.read_text().splitlines(), args.top, args.filter))
    return 0


if __name__ == "__main__":
    sys.exit(main())
