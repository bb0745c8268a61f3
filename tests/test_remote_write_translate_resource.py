"""Resource attributes: job and instance, one target_info series per resource, promotion to labels."""

from __future__ import annotations

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import ResourceMetrics, ScopeMetrics
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from exporters.remote_write.translate import SampleBatch, translate
from tests.test_remote_write_translate import T_MS, T_NS, any_value, attrs, gauge, point, request, sum_metric

SERVICE = attrs(service__name="checkout", service__namespace="shop", service__instance__id="pod-1")


def target_infos(batch: SampleBatch) -> list[tuple[dict[str, str], float, int]]:
    return [
        (dict(labels), value, ts)
        for labels, value, ts in zip(batch.labels, batch.values, batch.timestamps)
        if dict(labels)["__name__"] == "target_info"
    ]


def resources(*entries: tuple[list[KeyValue], list]) -> ExportMetricsServiceRequest:
    return ExportMetricsServiceRequest(
        resource_metrics=[
            ResourceMetrics(resource=Resource(attributes=resource), scope_metrics=[ScopeMetrics(metrics=metrics)])
            for resource, metrics in entries
        ]
    )


@pytest.mark.parametrize(
    ("resource", "expected"),
    [
        pytest.param(
            SERVICE + attrs(host__name="n1", k8s__pod__name="p"),
            [
                {
                    "__name__": "target_info",
                    "job": "shop/checkout",
                    "instance": "pod-1",
                    "host_name": "n1",
                    "k8s_pod_name": "p",
                }
            ],
            id="the other attributes, with job and instance",
        ),
        pytest.param(
            attrs(service__name="checkout", deployment__environment="prod", port=8080, sampled=True),
            [
                {
                    "__name__": "target_info",
                    "job": "checkout",
                    "deployment_environment": "prod",
                    "port": "8080",
                    "sampled": "true",
                }
            ],
            id="non-string values as text, no instance without an instance id",
        ),
        pytest.param(SERVICE, [], id="no other attributes: no target_info"),
        pytest.param([], [], id="an empty resource: no target_info"),
        pytest.param(
            attrs(service__name="svc")
            + [KeyValue(key="a.b", value=any_value("dot")), KeyValue(key="a-b", value=any_value("dash"))],
            [{"__name__": "target_info", "job": "svc", "a_b": "dash;dot"}],
            id="keys that collide after sanitizing are joined with ; in original key order",
        ),
        pytest.param(
            attrs(service__name="svc", job="other", instance="other"),
            [{"__name__": "target_info", "job": "svc"}],
            id="attributes named job or instance never replace them",
        ),
    ],
)
def test_a_resource_gets_one_target_info_series_of_value_1_with_its_other_attributes(
    resource: list[KeyValue], expected: list[dict[str, str]]
) -> None:
    batch = translate(request(gauge("g", point(1.0)), gauge("h", point(2.0)), resource=resource))
    assert [labels for labels, _, _ in target_infos(batch)] == expected
    assert all(value == 1.0 and ts == T_MS for _, value, ts in target_infos(batch))


def test_target_info_never_carries_data_point_or_scope_labels_and_other_series_never_carry_resource_attributes() -> (
    None
):
    batch = translate(
        request(
            gauge("g", point(1.0, attrs(k="v"))),
            resource=SERVICE + attrs(host__name="n1"),
            scope=InstrumentationScope(name="lib", version="1"),
        )
    )
    labels = [dict(labels) for labels in batch.labels]
    assert labels == [
        {
            "__name__": "g",
            "job": "shop/checkout",
            "instance": "pod-1",
            "k": "v",
            "otel_scope_name": "lib",
            "otel_scope_version": "1",
        },
        {"__name__": "target_info", "job": "shop/checkout", "instance": "pod-1", "host_name": "n1"},
    ]


def test_target_info_takes_the_newest_timestamp_of_its_resource() -> None:
    batch = translate(
        request(gauge("g", point(1.0), point(2.0, time_unix_nano=T_NS + 5 * 10**9)), resource=SERVICE + attrs(a="b"))
    )
    ((_, _, ts),) = target_infos(batch)
    assert ts == T_MS + 5000


def test_a_resource_without_translated_points_gets_no_target_info() -> None:
    batch = translate(request(gauge("g", point(1.0, time_unix_nano=0)), resource=SERVICE + attrs(a="b")))
    assert target_infos(batch) == []


def test_identical_resources_in_one_request_share_one_target_info() -> None:
    resource = SERVICE + attrs(a="b")
    batch = translate(
        resources(
            (resource, [gauge("g", point(1.0))]), (resource, [gauge("h", point(1.0, time_unix_nano=T_NS + 10**9))])
        )
    )
    assert [(labels["a"], ts) for labels, _, ts in target_infos(batch)] == [("b", T_MS + 1000)]


def test_two_instances_of_a_service_get_one_target_info_each() -> None:
    a = attrs(service__name="svc", service__instance__id="a", zone="z1")
    b = attrs(service__name="svc", service__instance__id="b", zone="z2")
    batch = translate(resources((a, [gauge("g", point(1.0))]), (b, [gauge("g", point(1.0))])))
    assert [(labels["instance"], labels["zone"]) for labels, _, _ in target_infos(batch)] == [("a", "z1"), ("b", "z2")]


def test_a_native_histogram_alone_gives_its_resource_a_target_info() -> None:
    from tests.test_remote_write_translate_histograms import buckets, exp_point, exponential

    metric = exponential("e", exp_point(scale=0, positive=buckets(0, [1]), count=1))
    batch = translate(request(metric, resource=SERVICE + attrs(a="b")), native_histograms=True)
    assert [(labels["a"], ts) for labels, _, ts in target_infos(batch)] == [("b", T_MS)]


PROMOTE_CASES = [
    pytest.param(
        ("k8s.namespace.name",),
        attrs(k8s__namespace__name="prod"),
        {"__name__": "c_total", "job": "shop/checkout", "instance": "pod-1", "k8s_namespace_name": "prod"},
        id="a promoted attribute on every series",
    ),
    pytest.param(
        ("k8s.namespace.name", "absent"),
        attrs(),
        {"__name__": "c_total", "job": "shop/checkout", "instance": "pod-1"},
        id="a promoted attribute the resource lacks adds nothing",
    ),
    pytest.param(
        ("region",),
        attrs(region="eu"),
        {"__name__": "c_total", "job": "shop/checkout", "instance": "pod-1", "region": "from-point"},
        id="a data point attribute of the same name wins over the promoted one",
    ),
    pytest.param(
        ("a.b", "a-b"),
        [KeyValue(key="a.b", value=any_value("dot")), KeyValue(key="a-b", value=any_value("dash"))],
        {"__name__": "c_total", "job": "shop/checkout", "instance": "pod-1", "a_b": "dash;dot"},
        id="promoted keys that collide are joined like attributes",
    ),
]


@pytest.mark.parametrize(("promote", "extra", "expected"), PROMOTE_CASES)
def test_promoted_resource_attributes_are_copied_onto_every_series(
    promote: tuple[str, ...], extra: list[KeyValue], expected: dict[str, str]
) -> None:
    point_attrs = attrs(region="from-point") if "region" in promote else []
    batch = translate(request(sum_metric("c", point(1, point_attrs)), resource=SERVICE + extra), promote=promote)
    assert dict(batch.labels[0]) == expected


def test_promoted_attributes_stay_on_target_info() -> None:
    batch = translate(request(gauge("g", point(1.0)), resource=SERVICE + attrs(region="eu")), promote=("region",))
    assert [labels for labels, _, _ in target_infos(batch)] == [
        {"__name__": "target_info", "job": "shop/checkout", "instance": "pod-1", "region": "eu"}
    ]
    assert dict(batch.labels[0])["region"] == "eu"
