"""The two counters every trace exporter keeps, under one name each so dashboards sum them by `exporter`."""

from __future__ import annotations

from collections.abc import Iterable

from opentelemetry import metrics


def span_counters(meter: metrics.Meter, exporter: str, reasons: Iterable[str]) -> tuple[metrics.Counter, metrics.Counter]:
    """(sent, failed): spans delivered, and spans dropped (with a `reason` attribute). Both start at 0 for
    `exporter` (failed: for each of `reasons`), so a dashboard shows 0 rather than no data."""
    sent = meter.create_counter(
        "headwater_exporter_sent_spans", unit="{span}", description="Spans the exporter delivered."
    )
    failed = meter.create_counter(
        "headwater_exporter_failed_spans", unit="{span}", description="Spans the exporter dropped, by reason."
    )
    sent.add(0, {"exporter": exporter})
    for reason in reasons:
        failed.add(0, {"exporter": exporter, "reason": reason})
    return sent, failed
