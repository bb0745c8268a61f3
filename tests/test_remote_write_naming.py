"""OTLP names to Prometheus names, per OpenTelemetry's Prometheus compatibility spec (tables of cases)."""

from __future__ import annotations

import re

import pytest

from exporters.remote_write.naming import (
    MetricKind,
    float_label,
    job_label,
    label_name,
    label_plan,
    metric_name,
    unit_suffix,
)

GAUGE = MetricKind.GAUGE
COUNTER = MetricKind.MONOTONIC_SUM
UPDOWN = MetricKind.NON_MONOTONIC_SUM
METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


@pytest.mark.parametrize(
    ("unit", "words"),
    [
        ("s", "seconds"),
        ("ms", "milliseconds"),
        ("us", "microseconds"),
        ("ns", "nanoseconds"),
        ("min", "minutes"),
        ("h", "hours"),
        ("d", "days"),
        ("By", "bytes"),
        ("KiBy", "kibibytes"),
        ("MiBy", "mebibytes"),
        ("GiBy", "gibibytes"),
        ("KBy", "kilobytes"),
        ("m", "meters"),
        ("V", "volts"),
        ("W", "watts"),
        ("Cel", "celsius"),
        ("Hz", "hertz"),
        ("%", "percent"),
        ("By/s", "bytes_per_second"),
        ("m/s", "meters_per_second"),
        ("{packet}/s", "per_second"),
        ("1/s", "per_second"),
        ("By/{request}", "bytes"),
        ("{packet}", ""),
        ("{request}", ""),
        ("", ""),
        ("  ", ""),
        ("packets", "packets"),
        ("foo.bar", "foo_bar"),
        ("widgets/min", "widgets_per_minute"),
    ],
)
def test_a_unit_becomes_the_words_prometheus_uses(unit: str, words: str) -> None:
    assert unit_suffix(unit, MetricKind.HISTOGRAM) == words


@pytest.mark.parametrize(
    ("name", "unit", "kind", "expected"),
    [
        # invalid characters become `_`, runs of `_` collapse
        ("http.server.active_requests", "{request}", UPDOWN, "http_server_active_requests"),
        ("(lambda).function.executions(#)", "", GAUGE, "_lambda_function_executions_"),
        ("a..b__c", "", GAUGE, "a_b_c"),
        ("ns:metric.x", "", GAUGE, "ns:metric_x"),
        ("héllo", "", GAUGE, "h_llo"),
        # a unit is appended as words, before the type suffix
        ("http.server.request.duration", "s", GAUGE, "http_server_request_duration_seconds"),
        ("system.filesystem.usage", "By", GAUGE, "system_filesystem_usage_bytes"),
        ("process.cpu.time", "s", COUNTER, "process_cpu_time_seconds_total"),
        ("network.io", "By/s", GAUGE, "network_io_bytes_per_second"),
        ("system.network.dropped", "{packets}", COUNTER, "system_network_dropped_total"),
        ("system.network.dropped", "packets", COUNTER, "system_network_dropped_packets_total"),
        # no unit twice
        ("request_duration_seconds", "s", GAUGE, "request_duration_seconds"),
        ("request_duration_seconds_total", "s", COUNTER, "request_duration_seconds_total"),
        ("request_duration_total", "s", COUNTER, "request_duration_seconds_total"),
        ("seconds", "s", GAUGE, "seconds"),
        ("my.seconds.count", "s", GAUGE, "my_seconds_count_seconds"),
        # monotonic sums end in _total, once
        ("requests", "", COUNTER, "requests_total"),
        ("requests_total", "", COUNTER, "requests_total"),
        ("requests.total", "", COUNTER, "requests_total"),
        ("requests", "", UPDOWN, "requests"),
        ("requests_total", "", GAUGE, "requests_total"),
        # unit "1" means ratio on gauges only
        ("system.memory.utilization", "1", GAUGE, "system_memory_utilization_ratio"),
        ("cache.hit_ratio", "1", GAUGE, "cache_hit_ratio"),
        ("items.processed", "1", COUNTER, "items_processed_total"),
        ("items.in_flight", "1", UPDOWN, "items_in_flight"),
        ("cpu.utilization", "%", GAUGE, "cpu_utilization_percent"),
        # a name may not start with a digit
        ("2xx.responses", "", COUNTER, "_2xx_responses_total"),
        ("", "s", GAUGE, ""),
    ],
)
def test_a_metric_name_follows_the_compatibility_spec(name: str, unit: str, kind: MetricKind, expected: str) -> None:
    assert metric_name(name, unit, kind) == expected


@pytest.mark.parametrize("name", ["a", "a.b-c/d", "1st", "__x__", "...", "%", "ü", "x_total", "_"])
@pytest.mark.parametrize("kind", list(MetricKind))
@pytest.mark.parametrize("unit", ["", "1", "s", "{x}/s", "a b/c d"])
def test_every_translated_metric_name_is_valid_for_remote_write(name: str, kind: MetricKind, unit: str) -> None:
    assert METRIC_NAME.fullmatch(metric_name(name, unit, kind))


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("http.route", "http_route"),
        ("http.response.status_code", "http_response_status_code"),
        ("service-name", "service_name"),
        ("a..b", "a_b"),
        ("a__b", "a_b"),
        ("ns:label", "ns_label"),
        ("2xx", "key_2xx"),
        ("_private", "key_private"),
        ("__reserved__", "key_reserved_"),
        ("__name__", "key_name_"),
        (".hidden", "key_hidden"),
        ("_", "key_"),
        ("ключ", "key_"),
        ("", ""),
    ],
)
def test_a_label_name_follows_the_compatibility_spec(key: str, expected: str) -> None:
    assert label_name(key) == expected


@pytest.mark.parametrize("key", ["a", "a.b", "1", "_", "__", "___x", "::", "ü.ü", "key_"])
def test_an_attribute_can_never_become_a_reserved_double_underscore_label(key: str) -> None:
    name = label_name(key)
    assert LABEL_NAME.fullmatch(name)
    assert not name.startswith("__")


def _apply(plan, values, fixed_values=()):
    return [
        (name, fixed_values[fixed] if fixed >= 0 else ";".join(values[i] for i in sources))
        for name, fixed, sources in plan
    ]


def test_colliding_attribute_keys_join_their_values_with_semicolons_ordered_by_original_key() -> None:
    keys = ("b.c", "a", "b_c", "b-c")
    plan = label_plan(keys, ())
    assert _apply(plan, ["dot", "x", "underscore", "dash"]) == [("a", "x"), ("b_c", "dash;dot;underscore")]


def test_a_label_plan_is_sorted_by_label_name_with_fixed_labels_merged_in() -> None:
    plan = label_plan(("zone", "http.route"), ("__name__", "job"))
    assert _apply(plan, ["z1", "/a"], ["m", "svc"]) == [
        ("__name__", "m"),
        ("http_route", "/a"),
        ("job", "svc"),
        ("zone", "z1"),
    ]


def test_a_fixed_label_wins_over_an_attribute_with_the_same_name() -> None:
    plan = label_plan(("job",), ("__name__", "job"))
    assert _apply(plan, ["from-attribute"], ["m", "from-resource"]) == [("__name__", "m"), ("job", "from-resource")]


def test_a_repeated_attribute_key_keeps_its_last_value() -> None:
    plan = label_plan(("k", "k"), ())
    assert _apply(plan, ["first", "last"]) == [("k", "last")]


@pytest.mark.parametrize(
    ("name", "namespace", "job"),
    [("checkout", "shop", "shop/checkout"), ("checkout", "", "checkout"), ("", "shop", "")],
)
def test_job_is_namespace_slash_service_name_or_the_name_alone(name: str, namespace: str, job: str) -> None:
    assert job_label(name, namespace) == job


def test_a_weak_label_is_used_only_when_no_fixed_label_or_attribute_has_its_name() -> None:
    plan = label_plan(("region",), ("__name__",), ("region", "zone"))
    assert _apply(plan, ["from-point"], ["m", "from-resource-region", "from-resource-zone"]) == [
        ("__name__", "m"),
        ("region", "from-point"),
        ("zone", "from-resource-zone"),
    ]


def test_a_reserved_name_is_never_produced_from_an_attribute() -> None:
    plan = label_plan(("le", "route"), ("__name__",), (), ("le",))
    assert _apply(plan, ["x", "/a"], ["m"]) == [("__name__", "m"), ("route", "/a")]


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.005, "0.005"),
        (0.01, "0.01"),
        (0.1, "0.1"),
        (1.0, "1"),
        (2.5, "2.5"),
        (10.0, "10"),
        (100000.0, "100000"),
        (1e6, "1e+06"),
        (1234567.0, "1.234567e+06"),
        (0.0001, "0.0001"),
        (1e-05, "1e-05"),
        (1.5e-07, "1.5e-07"),
        (0.0, "0"),
        (-0.0, "-0"),
        (-2.5, "-2.5"),
        (-1e6, "-1e+06"),
        (1e300, "1e+300"),
        (0.3333333333333333, "0.3333333333333333"),
        (float("inf"), "+Inf"),
        (float("-inf"), "-Inf"),
        (float("nan"), "NaN"),
    ],
)
def test_a_bound_or_quantile_is_written_as_go_formats_floats_like_prometheus(value: float, text: str) -> None:
    assert float_label(value) == text
