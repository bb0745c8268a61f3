"""agent.malloc_tuning: megabyte buffers allocated request after request stop costing page faults."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from agent.malloc_tuning import tune_malloc

# 50 requests, each holding three buffers of a megabyte (a body, its pieces, its compressed form), a little
# larger each time as bodies are, written and then freed. Prints the minor page faults the loop cost (field 10 of
# /proc/self/stat).
_LOOP = textwrap.dedent("""
    import sys
    from agent.malloc_tuning import tune_malloc
    if sys.argv[1] == "tuned":
        assert tune_malloc({})
    def faults():
        with open("/proc/self/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[7])
    before = faults()
    for i in range(50):
        buffers = [b"x" * (1_000_000 + 4096 * i) for _ in range(3)]
        del buffers
    print(faults() - before)
""")


def _faults(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", _LOOP, mode], capture_output=True, text=True, check=True,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": sys.path[0] or "."})
    return int(done.stdout)


def test_buffers_of_a_megabyte_reuse_the_heap_instead_of_faulting_in_fresh_pages() -> None:
    untuned, tuned = _faults("default"), _faults("tuned")
    assert untuned > 10_000  # glibc maps each one afresh, ~250 pages of 4 KiB: ~30,000
    assert tuned < 1_000  # the heap grows by the few pages each request adds


def test_malloc_options_set_in_the_environment_are_left_alone() -> None:
    for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES"):
        assert tune_malloc({name: "1"}) is False
