"""Kept spans checked by protobuf before they reach a trace exporter: what the sampler's wire scanner does not
read, protobuf may still refuse.

Why: the sampler reads spans from the wire without parsing them (samplers/wire.py checks framing and IDs, not
every field), so a span whose strings are not valid UTF-8, or whose attribute values nest past protobuf's
recursion limit (100 levels in upb), is accepted and buffered. Protobuf refuses such a message whole: the file
exporter cannot parse the request it is handed, and an upstream collector answers 400 for the whole batch, so
one client's bad span would take every other span of the batch down with it (and, exported from inside a
request, answer that request with a 500). Parsing every request on receipt would cost ~0.55 us per span
(about a sixth of the agent's per-span budget); checking only what leaves costs that for kept spans alone, and
the rare request that fails is split so that only its malformed spans are dropped (counted, and warned about).
"""

from __future__ import annotations

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from samplers.wire import WireError, frame_request, scan_request


def _parses(data: bytes) -> str | None:
    """None when protobuf reads `data` as an ExportTraceServiceRequest, else why not."""
    try:
        ExportTraceServiceRequest.FromString(data)
    except DecodeError as exc:
        return str(exc)
    except RecursionError:
        return "nested too deeply"
    return None


def wellformed(data: bytes, spans: int) -> tuple[bytes, int, int, str]:
    """(the request without its malformed spans, spans left, spans dropped, the first problem) for one framed
    ExportTraceServiceRequest of `spans` spans. A request protobuf reads is returned as it is."""
    if _parses(data) is None:
        return data, spans, 0, ""
    try:
        groups = scan_request(data).groups
    except WireError as exc:  # not expected: the sampler framed it; drop it whole rather than send it
        return b"", 0, spans, f"request: {exc}"
    kept_groups = []
    left = 0
    first = ""
    for resource_part, scopes in groups:
        # Each part is checked framed alone, at the depth it has in a request (nesting limits count from there).
        problem = _parses(frame_request([(resource_part, ())]))
        if problem is not None:
            first = first or f"resource: {problem}"
            continue
        kept_scopes = []
        for scope_part, scope_spans in scopes:
            problem = _parses(frame_request([(b"", [(scope_part, ())])]))
            if problem is not None:
                first = first or f"scope: {problem}"
                continue
            good = []
            for span in scope_spans:
                problem = _parses(frame_request([(b"", [(b"", (span,))])]))
                if problem is None:
                    good.append(span)
                else:
                    first = first or f"span: {problem}"
            if good:
                kept_scopes.append((scope_part, good))
                left += len(good)
        if kept_scopes:
            kept_groups.append((resource_part, kept_scopes))
    return (frame_request(kept_groups) if kept_groups else b""), left, spans - left, first or "not valid protobuf"
