"""What the agent's own process costs, as OpenTelemetry instruments with `headwater_` names.

Why not the Prometheus client's `process_*` series: those exist only on `/metrics` (the client's process
collector), never in what `telemetry.remote_write` pushes, which is the SDK's data. These two come from the
SDK, so a scrape and a push carry the same series and the dashboard reads one name either way:

- `headwater_process_cpu_seconds_total`: user + system CPU time of the process (`os.times`);
- `headwater_process_resident_memory_bytes`: resident set size now (`/proc/self/statm`; absent where there is
  no /proc).
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from opentelemetry import metrics

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def register_process_metrics(meter: metrics.Meter) -> None:
    meter.create_observable_counter(
        "headwater_process_cpu_seconds", callbacks=[_cpu], unit="s",
        description="CPU time the agent's process has used, user and system together.")
    meter.create_observable_gauge(
        "headwater_process_resident_memory_bytes", callbacks=[_rss], unit="By",
        description="Resident memory of the agent's process.")


def _cpu(_options: object) -> Iterable[metrics.Observation]:
    times = os.times()
    return [metrics.Observation(times.user + times.system)]


def resident_bytes() -> int | None:
    """Resident set size in bytes, None where /proc/self/statm cannot be read."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE_SIZE
    except (OSError, IndexError, ValueError):
        return None


def _rss(_options: object) -> Iterable[metrics.Observation]:
    rss = resident_bytes()
    return [] if rss is None else [metrics.Observation(rss)]
