"""The two counters every trace exporter keeps, under one name each so dashboards sum them by `exporter`."""

from __future__ import annotations

from opentelemetry import metrics


def span_counters(meter: metrics.Meter) -> tuple[metrics.Counter, metrics.Counter]:
    """(sent, failed): spans delivered, and spans dropped (with a `reason` attribute)."""
    sent = meter.create_counter(
        "headwater_exporter_sent_spans", unit="{span}", description="Spans the exporter delivered."
    )
    failed = meter.create_counter(
        "headwater_exporter_failed_spans", unit="{span}", description="Spans the exporter dropped, by reason."
    )
    return sent, failed
