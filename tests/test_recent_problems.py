"""The ring of recent warnings and errors that `/status` serves: what it keeps and its bound in bytes."""

from __future__ import annotations

import json
import logging

import pytest

from agent.logs import RecentProblems, kv


@pytest.fixture
def ring_and_log():
    ring = RecentProblems(max_bytes=4096, max_entry_bytes=512)
    log = logging.getLogger("headwater.test.recent_problems")
    log.setLevel(logging.DEBUG)
    log.propagate = False
    log.addHandler(ring)
    yield ring, log
    log.removeHandler(ring)


def size(entries: list[dict]) -> int:
    return sum(len(json.dumps(e, ensure_ascii=False).encode()) for e in entries)


def test_warnings_and_errors_are_kept_with_their_fields_and_info_is_not(ring_and_log):
    ring, log = ring_and_log
    log.info("started")
    log.warning("request failed, retrying", **kv(exporter="prom", status=503))
    log.error("cannot write the queue", **kv(exporter="prom"))

    entries = ring.entries()
    assert [(e["level"], e["message"]) for e in entries] == [("warning", "request failed, retrying"),
                                                             ("error", "cannot write the queue")]
    assert entries[0]["fields"] == {"exporter": "prom", "status": "503"}
    assert entries[0]["logger"] == "headwater.test.recent_problems"


def test_the_oldest_entries_go_first_when_the_ring_passes_its_bytes(ring_and_log):
    ring, log = ring_and_log
    for i in range(200):
        log.warning(f"problem number {i}")

    entries = ring.entries()
    assert size(entries) <= 4096
    assert entries[-1]["message"] == "problem number 199"
    assert len(entries) < 200 and entries[0]["message"] == f"problem number {200 - len(entries)}"


def test_an_entry_over_its_bound_is_shortened_to_fit(ring_and_log):
    ring, log = ring_and_log
    log.error("x" * 5000, **kv(body="y" * 5000, other="z"))

    [entry] = ring.entries()
    assert size([entry]) <= 512
    assert entry["message"].startswith("xxx") and entry["message"].endswith("…")


def test_the_same_event_again_right_after_itself_is_counted_instead_of_kept_twice(ring_and_log):
    ring, log = ring_and_log
    log.warning("other")
    for attempt in range(5):
        log.warning("request failed, retrying", **kv(attempt=attempt))

    entries = ring.entries()
    assert [e["message"] for e in entries] == ["other", "request failed, retrying"]
    assert entries[-1]["repeated"] == 5 and entries[-1]["fields"] == {"attempt": "4"}


def test_bounds_too_small_to_hold_an_entry_are_refused():
    with pytest.raises(ValueError, match="max_entry_bytes"):
        RecentProblems(max_bytes=100, max_entry_bytes=100)
