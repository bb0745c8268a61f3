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


WAITING = frozenset({"EpollSelector.select (selectors.py)", "Thread.run (threading.py)", "_worker (thread.py)"})
"""Leaf frames of threads that wait (the event loop's poll, idle thread-pool workers): not CPU, left out."""


def summarize(lines: list[str], top: int, needle: str | None, idle: bool = False) -> str:
    self_counts: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = waiting = 0
    for line in lines:
        stack, _, count_text = line.rstrip().rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        names = frames(stack)
        if not idle and names[-1] in WAITING:
            waiting += count
            continue
        total += count
        self_counts[names[-1]] += count
        for name in set(names):
            inclusive[name] += count
    if not total:
        return "no samples"
    out = [f"{total} samples, shares of them ({waiting} of waiting threads left out)"]
    for title, counter in (("self", self_counts), ("inclusive", inclusive)):
        out.append(f"\n{title}:")
        shown = [(name, count) for name, count in counter.most_common() if not needle or needle in name][:top]
        out += [f"  {100 * count / total:5.1f}%  {name}" for name, count in shown]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--filter", default=None, help="only functions whose name contains this")
    parser.add_argument("--idle", action="store_true", help="keep the stacks of waiting threads")
    args = parser.parse_args(argv)
    print(summarize(args.profile.read_text().splitlines(), args.top, args.filter, args.idle))
    return 0


if __name__ == "__main__":
    sys.exit(main())
