"""google.rpc.Status bodies for OTLP errors, in protobuf or JSON to match the request."""

from __future__ import annotations

import json
import math

from google.protobuf.any_pb2 import Any as AnyMessage
from google.protobuf.duration_pb2 import Duration

from agent.receivers.proto.rpc_status_pb2 import RetryInfo, Status

# gRPC status codes (google.rpc.Code), which OTLP/HTTP also puts in its error bodies.
INVALID_ARGUMENT = 3
DEADLINE_EXCEEDED = 4
NOT_FOUND = 5
RESOURCE_EXHAUSTED = 8
UNIMPLEMENTED = 12
INTERNAL = 13
UNAVAILABLE = 14
UNAUTHENTICATED = 16

RETRY_INFO_TYPE_URL = "type.googleapis.com/google.rpc.RetryInfo"


def status(code: int, message: str, retry_after: float | None = None) -> Status:
    result = Status(code=code, message=message)
    if retry_after is not None:
        whole = math.floor(retry_after)
        delay = RetryInfo(retry_delay=Duration(seconds=whole, nanos=int((retry_after - whole) * 1e9)))
        result.details.append(AnyMessage(type_url=RETRY_INFO_TYPE_URL, value=delay.SerializeToString()))
    return result


def status_json(code: int, message: str) -> bytes:
    return json.dumps({"code": code, "message": message}).encode()
