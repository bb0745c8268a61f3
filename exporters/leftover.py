"""What an exporter had not delivered when its shutdown ended: the agent's exit summary reads it.

Two different things, kept apart because only one is a loss: `dropped` data is gone (a memory queue's
entries, lines that could not be written in time); `kept` data waits in a disk queue and is sent after the
next start, exactly as it would have been (remote write's queue under `<state_dir>/queue/<name>`).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Leftover:
    """Counts per unit (`{"samples": 1200}`, `{"spans": 3, "data points": 40}`). `why` says what happened to
    the dropped data, `kept_in` where the kept data waits."""

    dropped: dict[str, int] = field(default_factory=dict)
    kept: dict[str, int] = field(default_factory=dict)
    why: str = ""
    kept_in: str = ""

    @property
    def lost(self) -> bool:
        return any(self.dropped.values())
