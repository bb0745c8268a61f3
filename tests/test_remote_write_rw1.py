"""Remote write 1.0 bodies: grouping, ordering and the snappy block format."""

from __future__ import annotations

import cramjam

from exporters.remote_write import rw1

A = (("__name__", "a"), ("job", "j"))
B = (("__name__", "b"),)


def test_samples_of_one_series_share_a_single_timeseries_in_timestamp_order() -> None:
    request = rw1.build_write_request([A, B, A, A], [3.0, 9.0, 1.0, 2.0], [300, 900, 100, 200])
    assert len(request.timeseries) == 2
    first, second = request.timeseries
    assert [(label.name, label.value) for label in first.labels] == list(A)
    assert [(s.timestamp, s.value) for s in first.samples] == [(100, 1.0), (200, 2.0), (300, 3.0)]
    assert [(label.name, label.value) for label in second.labels] == list(B)
    assert [(s.timestamp, s.value) for s in second.samples] == [(900, 9.0)]


def test_series_appear_in_the_order_of_their_first_sample() -> None:
    request = rw1.build_write_request([B, A, B], [1.0, 2.0, 3.0], [1, 2, 3])
    assert [ts.labels[0].value for ts in request.timeseries] == ["b", "a"]


def test_samples_with_equal_timestamps_keep_their_arrival_order() -> None:
    request = rw1.build_write_request([A, A], [5.0, 6.0], [100, 100])
    assert [s.value for s in request.timeseries[0].samples] == [5.0, 6.0]


def test_a_body_is_snappy_block_format_of_the_serialized_write_request() -> None:
    body = rw1.encode([A], [1.5], [1000])
    raw = bytes(cramjam.snappy.decompress_raw(body))
    assert raw == rw1.build_write_request([A], [1.5], [1000]).SerializeToString()
    assert rw1.decode(body).timeseries[0].samples[0].value == 1.5


def test_the_schema_is_registered_under_a_file_name_of_our_own() -> None:
    from exporters.remote_write.proto import remote_write_v1_pb2

    assert remote_write_v1_pb2.DESCRIPTOR.name == "headwater/remote_write_v1.proto"
    assert remote_write_v1_pb2.WriteRequest.DESCRIPTOR.full_name == "prometheus.WriteRequest"


def test_the_required_protocol_headers_are_declared() -> None:
    assert rw1.HEADERS == {
        "Content-Encoding": "snappy",
        "Content-Type": "application/x-protobuf",
        "X-Prometheus-Remote-Write-Version": "0.1.0",
    }
