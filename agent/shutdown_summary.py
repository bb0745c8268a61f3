"""The exit summary: what each exporter had not delivered when shutdown ended, logged one line per exporter.

Why it decides the exit status: an agent that exits 0 after dropping what it held tells systemd, scripts and
the person at the terminal that nothing was lost. Data still in a remote-write disk queue is not lost (it is
sent after the next start, as after any restart), so it is reported as kept, at warning level, and does not
make the exit non-zero; data dropped (a memory queue's, lines not written in time) is reported as an error
and does.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from agent.logs import kv
from exporters.leftover import Leftover

log = logging.getLogger("headwater.agent")

EXIT_DROPPED = 3
"""`headwater run`'s exit status when shutdown dropped data (1 is a config or start failure)."""


def _counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{n} {unit}" for unit, n in counts.items() if n)


def report(leftovers: Mapping[str, Leftover]) -> bool:
    """Log what each exporter dropped or kept; True when anything was dropped."""
    dropped = False
    for name, left in leftovers.items():
        if left.lost:
            dropped = True
            log.error("shutdown dropped data", **kv(exporter=name, dropped=_counts(left.dropped), why=left.why))
        if any(left.kept.values()):
            log.warning("shutdown left data in the disk queue; it is not lost and is sent after the next start",
                        **kv(exporter=name, kept=_counts(left.kept), queue=left.kept_in))
    return dropped
