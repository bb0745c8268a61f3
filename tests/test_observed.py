"""exporters.observed.OwnedMeter: observable instruments that several objects report through, so a second
endpoint, or the one a reload builds in place of another, shows its own gauges."""

from __future__ import annotations

from opentelemetry.metrics import Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from exporters.observed import OwnedMeter
from exporters.remote_write.exporter import RemoteWriteExporter
from exporters.retry import RetryPolicy


def reader_and_meter():
    reader = InMemoryMetricReader()
    return reader, MeterProvider(metric_readers=[reader]).get_meter("test")


def gauge(reader: InMemoryMetricReader, name: str) -> dict[tuple, float]:
    data = reader.get_metrics_data()
    return {tuple(sorted(p.attributes.items())): p.value
            for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics if m.name == name
            for p in m.data.data_points}


class Owner:
    def __init__(self, meter, name: str, value: float) -> None:
        self.observed = OwnedMeter(meter, self)
        self.observed.create_observable_gauge("depth", callbacks=[lambda _o: [Observation(value, {"owner": name})]])


def test_every_owner_of_a_name_reports_and_a_forgotten_one_stops():
    reader, meter = reader_and_meter()
    a, _b = Owner(meter, "a", 1.0), Owner(meter, "b", 2.0)
    assert gauge(reader, "depth") == {(("owner", "a"),): 1.0, (("owner", "b"),): 2.0}
    a.observed.forget()
    assert gauge(reader, "depth") == {(("owner", "b"),): 2.0}


def test_where_two_owners_report_the_same_attributes_the_newer_one_is_kept():
    reader, meter = reader_and_meter()
    _old, _new = Owner(meter, "prom", 5.0), Owner(meter, "prom", 0.0)  # an exporter and its replacement
    assert gauge(reader, "depth") == {(("owner", "prom"),): 0.0}


def test_two_remote_write_endpoints_on_one_meter_both_report_their_queue():
    reader, meter = reader_and_meter()
    _exporters = [RemoteWriteExporter(name, "http://127.0.0.1:9/api/v1/write", {}, 1.0, RetryPolicy(), 10, 1 << 20,
                                     1.0, meter=meter) for name in ("a", "b")]
    assert {dict(k)["exporter"] for k in gauge(reader, "headwater_queue_bytes")} == {"a", "b"}
