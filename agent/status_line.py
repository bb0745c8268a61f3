"""The one line `systemctl status headwater` shows under "Status:", built from counters the agent's objects
already hold (no /metrics text is rendered or parsed, so it costs a few attribute reads).

    spans in 1.2k/s, kept 130/s, buffered 420 traces (3.1 MiB); queued prometheus 12.0 MiB, otlp 0 B

Rates are per second since the previous line; the first line after start gives totals instead.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class StatusSources:
    """Where each number comes from. `spans_in`/`spans_kept` are running totals; None means no trace pipeline."""

    spans_in: Callable[[], int] | None
    spans_kept: Callable[[], int] | None
    buffered_traces: Callable[[], int] | None
    buffered_bytes: Callable[[], int] | None
    queued_bytes: Mapping[str, Callable[[], int]]  # per exporter that buffers, in memory


class StatusLine:
    """`line(now)` -> the text; keeps the previous totals to turn them into rates."""

    def __init__(self, sources: StatusSources) -> None:
        self._sources = sources
        self._last: tuple[float, int, int] | None = None

    def line(self, now: float) -> str:
        s = self._sources
        parts = []
        if s.spans_in is not None and s.spans_kept is not None:
            spans_in, kept = s.spans_in(), s.spans_kept()
            if self._last is None or now <= self._last[0]:
                parts.append(f"spans in {_count(spans_in)}, kept {_count(kept)}")
            else:
                elapsed = now - self._last[0]
                parts.append(f"spans in {_count((spans_in - self._last[1]) / elapsed)}/s, "
                             f"kept {_count((kept - self._last[2]) / elapsed)}/s")
            self._last = (now, spans_in, kept)
        else:
            parts.append("traces off")
        if s.buffered_traces is not None and s.buffered_bytes is not None:
            parts.append(f"buffered {s.buffered_traces()} traces ({_bytes(s.buffered_bytes())})")
        if s.queued_bytes:
            parts.append("queued " + ", ".join(f"{name} {_bytes(f())}" for name, f in s.queued_bytes.items()))
        return "; ".join(parts)


def _count(n: float) -> str:
    if n >= 999_500:
        return f"{n / 1e6:.1f}M"
    if n >= 9_995:
        return f"{n / 1e3:.0f}k"
    if n >= 1_000:
        return f"{n / 1e3:.1f}k"
    return f"{n:.0f}"


def _bytes(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"
