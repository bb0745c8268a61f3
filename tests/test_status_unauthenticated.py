"""`headwater status` names requests refused for a missing or wrong bearer token `unauthenticated`, one row
for both transports."""

from __future__ import annotations

from agent.status import render, summarize
from tests.test_status import STATUS, reading


def test_401s_and_unauthenticated_calls_are_one_unauthenticated_row():
    summary = summarize(STATUS, None, reading({
        'headwater_receiver_refused_requests_total{signal="traces",status="401",transport="http"}': 2,
        'headwater_receiver_refused_requests_total{signal="traces",status="UNAUTHENTICATED",transport="grpc"}': 5,
    }), None, "127.0.0.1:8888")

    assert summary["refused"]["requests"] == [{"signal": "traces", "reason": "unauthenticated", "total": 7,
                                               "per_second": None}]
    assert "traces unauthenticated 7" in render(summary)
