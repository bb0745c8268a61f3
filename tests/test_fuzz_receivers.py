"""No 5xx for client bytes: every receiver, both signals, protobuf and JSON, answered with 2xx or a 4xx that
says what is wrong, whatever the bytes; and the agent keeps serving after each.

One agent runs in this process for the whole module (tests/agent_in_thread.py), with every layer behind the
receivers: the sampler's wire scanner, span metrics, the remote-write exporter's translation and its shape path
(the metrics seeds are sent whole first, so same-length mutations are read from the bytes), the gateway's
decoders. Payloads (tests/hostile_payloads.py) are valid requests from the OpenTelemetry SDK's encoders and the
remote-write senders' encoders, mutated (flips, insertions, deletions, truncation, huge varints and lengths,
other wire types, invalid UTF-8), compressed or not (over gRPC also compressed bytes mutated on the wire, by
tests/grpc_mangling_proxy.py), and generated ones (random bytes, nesting thousands of
levels deep, odd JSON). After each example a valid request must be accepted, and nothing may have been logged
at ERROR (an unexpected exception anywhere, a decision pass that failed); at the end the agent must stop
cleanly with nothing logged at ERROR either.

Examples are derandomized, so CI runs the same 300 per test every time; `HEADWATER_FUZZ_EXAMPLES=5000` runs
that many random ones instead, for a longer local hunt.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterator

import grpc
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from agent.receivers.proto.rpc_status_pb2 import Status
from exporters.remote_write.encoding import compress
from tests.agent_in_thread import GRPC_METHODS, TIMEOUT, AgentInThread
from tests.grpc_mangling_proxy import MangledGrpc
from tests.hostile_payloads import (
    REMOTE_WRITE_ENCODERS,
    deep_json,
    deep_protobuf,
    json_of,
    metrics_seeds,
    mutate,
    mutated,
    number_request,
    odd_json,
    series_batch,
    shaped,
    span_request,
    trace_seeds,
)

HUNT = int(os.environ.get("HEADWATER_FUZZ_EXAMPLES", "0"))
FUZZ = settings(max_examples=HUNT or 300, derandomize=not HUNT, database=None, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
PB = "application/x-protobuf"
JSON = "application/json"
SIGNALS = {"traces": ExportTraceServiceRequest, "metrics": ExportMetricsServiceRequest}
VALID = {"traces": span_request(), "metrics": number_request()}


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentInThread]:
    running = AgentInThread(tmp_path_factory.mktemp("fuzz"))
    with running:
        for seed in metrics_seeds():  # twice: the second is read through the learnt shape where there is one
            for _ in range(3):
                assert running.post_http("/v1/metrics", seed, {"Content-Type": PB})[0] == 200
        yield running
    assert running.errors() == [], "\n\n".join(running.errors())


def seeds(signal: str) -> list[bytes]:
    return trace_seeds() if signal == "traces" else metrics_seeds()


def protobuf_payloads(signal: str) -> st.SearchStrategy[bytes]:
    found = mutated(seeds(signal)) | deep_protobuf(signal) | st.binary(max_size=256)
    return found | shaped() if signal == "metrics" else found


def json_payloads(signal: str) -> st.SearchStrategy[bytes]:
    json_seeds = [json_of(seed, SIGNALS[signal]) for seed in seeds(signal)]
    return odd_json(json_seeds) | deep_json | st.binary(max_size=64)


def encoded(body: bytes, encoding: str, mangle: int) -> tuple[bytes, dict[str, str]]:
    """`body` in `encoding`; a nonzero `mangle` also mutates the compressed bytes."""
    if encoding == "identity":
        return body, {}
    data = gzip.compress(body) if encoding == "gzip" else zstandard.ZstdCompressor().compress(body)
    if mangle:
        data = mutate(data, mangle, 1)
    return data, {"Content-Encoding": encoding}


def assert_still_serving(agent: AgentInThread, signal: str) -> None:
    status, body = agent.post_http(f"/v1/{signal}", VALID[signal], {"Content-Type": PB})
    assert status == 200, (status, body)
    assert agent.alive
    assert agent.errors() == [], "\n\n".join(agent.errors())


ODD_ENCODINGS = ["gzip", "deflate", "zstd", "identity", "br", "gzip, gzip", "GZIP", " zstd ", "x-gzip", "none", ""]


def assert_http_answer(status: int, body: bytes, json_body: bool, unsupported: bool = False) -> None:
    assert status in ((200, 400, 413, 415) if unsupported else (200, 400, 413)), (status, body[:300])
    if status != 200:
        message = json.loads(body)["message"] if json_body else Status.FromString(body).message
        assert message, "a refusal must say what is wrong"


# -- OTLP/HTTP ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("signal", SIGNALS)
def test_http_protobuf_answers_every_body_with_200_or_a_4xx_that_says_why(agent: AgentInThread, signal: str) -> None:
    @FUZZ
    @given(payload=protobuf_payloads(signal), encoding=st.sampled_from(["identity", "gzip", "zstd"]),
           mangle=st.sampled_from([0, 0, 0, 1, 2]), declared=st.none() | st.sampled_from(ODD_ENCODINGS))
    def check(payload: bytes, encoding: str, mangle: int, declared: str | None) -> None:
        body, headers = encoded(payload, encoding, mangle)
        if declared is not None:  # a Content-Encoding that lies about the body, or that no one speaks
            headers["Content-Encoding"] = declared
        status, answer = agent.post_http(f"/v1/{signal}", body, {"Content-Type": PB, **headers})
        assert_http_answer(status, answer, json_body=False, unsupported=declared is not None)
        assert_still_serving(agent, signal)

    check()


@pytest.mark.parametrize("signal", SIGNALS)
def test_http_json_answers_every_body_with_200_or_a_4xx_that_says_why(agent: AgentInThread, signal: str) -> None:
    @FUZZ
    @given(payload=json_payloads(signal))
    def check(payload: bytes) -> None:
        status, answer = agent.post_http(f"/v1/{signal}", payload, {"Content-Type": JSON})
        assert_http_answer(status, answer, json_body=True)
        assert_still_serving(agent, signal)

    check()


# -- OTLP/gRPC ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("signal", SIGNALS)
def test_grpc_answers_every_message_with_ok_or_invalid_argument_that_says_why(agent: AgentInThread,
                                                                               signal: str) -> None:
    @FUZZ
    @given(payload=protobuf_payloads(signal))
    def check(payload: bytes) -> None:
        code, details = agent.call_grpc(signal, payload)
        assert code in (grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT), (code, details)
        if code != grpc.StatusCode.OK:
            assert details
        assert agent.call_grpc(signal, VALID[signal]) == (grpc.StatusCode.OK, "")
        assert_still_serving(agent, signal)

    check()


@pytest.mark.parametrize("signal", SIGNALS)
def test_grpc_answers_every_compressed_message_even_one_that_does_not_inflate_with_ok_or_a_status_that_says_why(
        agent: AgentInThread, signal: str) -> None:
    """The client compresses (gzip or deflate); a proxy then mutates the compressed bytes on the wire, or not."""
    mangle: list[int | None] = [None]

    def rewrite(flag: int, message: bytes) -> tuple[int, bytes]:
        return flag, message if mangle[0] is None else mutate(message, mangle[0], 1)

    assert agent.agent is not None and agent.agent.grpc is not None
    with MangledGrpc(agent.agent.grpc.bound_port, rewrite) as target, grpc.insecure_channel(target) as channel:
        export = channel.unary_unary(GRPC_METHODS[signal], request_serializer=None, response_deserializer=None)

        @FUZZ
        @given(payload=protobuf_payloads(signal), seed=st.none() | st.integers(0, 2**32),
               compression=st.sampled_from([grpc.Compression.Gzip, grpc.Compression.Deflate]))
        def check(payload: bytes, seed: int | None, compression: grpc.Compression) -> None:
            mangle[0] = seed
            try:
                export(payload, compression=compression, timeout=TIMEOUT)
            except grpc.RpcError as exc:
                allowed = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED)
                assert exc.code() in allowed and exc.details(), (exc.code(), exc.details())
            assert agent.call_grpc(signal, VALID[signal]) == (grpc.StatusCode.OK, "")
            assert_still_serving(agent, signal)

        check()


# -- the gateway's remote-write receiver ----------------------------------------------------------------------


ODD_HEADER_VALUES = ["", "0", "-1", "2", "18446744073709551616", "99999999999999999999999999", "zz", "1.5",
                     "ffffffffffffffff", "application/json", "gzip", "snappy, zstd", " 1 "]


@pytest.mark.parametrize("protocol", REMOTE_WRITE_ENCODERS)
def test_the_gateway_answers_every_body_with_204_or_a_4xx_that_says_why(agent: AgentInThread, protocol: str) -> None:
    """Bodies are mutated before compression (to reach the decoders) or after; one header may get an odd value.
    A compact request is fuzzed as the second of its session, so it refers to the dictionary the first built."""
    def request() -> tuple[bytes, dict[str, str]]:
        """A valid request, the second of a new session for compact (the first is sent and committed)."""
        encoder = REMOTE_WRITE_ENCODERS[protocol]()
        if protocol.startswith("compact"):
            first = encoder.encode(series_batch())
            assert agent.post_gateway(first.body, first.headers)[0] == 204
            assert first.commit is not None
            first.commit()
        encoded = encoder.encode(series_batch(step=1))
        return encoded.body, dict(encoded.headers)

    body, headers = request()
    codec = headers.get("Content-Encoding", "snappy")
    raw = _decompressed(codec, body)

    @FUZZ
    @given(payload=mutated([raw]) | st.binary(max_size=256), after=st.booleans(),
           header=st.none() | st.tuples(st.sampled_from(sorted(headers)), st.sampled_from(ODD_HEADER_VALUES)))
    def check(payload: bytes, after: bool, header: tuple[str, str] | None) -> None:
        body, headers = request()
        sent = mutate(body, len(payload), 1 + len(payload) % 3) if after else compress(codec, payload)
        if header is not None:
            headers[header[0]] = header[1]
        status, answer = agent.post_gateway(sent, headers)
        assert status in (204, 400, 409, 413, 415), (status, answer[:300])
        if status != 204:
            assert answer.strip()
        status, answer = agent.post_gateway(*request())
        assert status == 204, (status, answer)
        assert_still_serving(agent, "metrics")

    check()


def _decompressed(codec: str, body: bytes) -> bytes:
    from exporters.remote_write.encoding import decompress

    return decompress(codec, body, 1 << 24)
