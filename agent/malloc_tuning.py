"""Process-wide malloc thresholds for the agent (glibc): the buffers of one request stay in the heap.

Why: each remote-write request allocates and frees buffers of about a megabyte (a gateway's rw1 body for the
5,230 samples of one node-exporter tick of ten hosts is 1.15 MB before snappy; a node's batcher holds a flush's
columns). glibc serves an allocation past its mmap threshold (128 KiB, raised at run time only to the largest
mmapped chunk freed so far) with a fresh mmap, and gives the top of its heap back to the kernel once more than
its trim threshold (twice the mmap threshold) is free there. Either way the next request's buffer is memory
the kernel must map again, a page fault per 4 KiB it touches. Measured in bench/remote_write.py (compact, node
-> gateway -> Prometheus 2.42): ~550 minor faults a second in the gateway at a 1 s flush and ~375 in the node
at 5 s, with 2-6 ms of system time a second between them; with the thresholds below, 0-10.

Fixed thresholds (which also turn glibc's run-time adjustment off): allocations up to `MMAP_THRESHOLD` come from
the heap, and up to `TRIM_THRESHOLD` of free memory at the heap's top is kept for the next request rather than
unmapped, so the process may stay that much larger than it strictly needs. A threshold set in the environment
(`MALLOC_MMAP_THRESHOLD_`, `MALLOC_TRIM_THRESHOLD_`, `GLIBC_TUNABLES`) is left as it is, and so is any C library
without `mallopt` (musl's accepts and ignores it).
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Mapping

MMAP_THRESHOLD = 8 << 20
"""Bytes: larger allocations (an OTLP request of several megabytes) still get their own mapping."""
TRIM_THRESHOLD = 16 << 20
"""Bytes of free memory at the top of the heap kept rather than given back."""

_M_TRIM_THRESHOLD = -1  # glibc's malloc.h
_M_MMAP_THRESHOLD = -3
_ENVIRONMENT = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")


def tune_malloc(environ: Mapping[str, str] = os.environ) -> bool:
    """Set the thresholds above; False when the environment sets malloc options or there is no `mallopt`."""
    if any(name in environ for name in _ENVIRONMENT):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
