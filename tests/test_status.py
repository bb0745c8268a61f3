"""`headwater status`: the summary it computes from two reads of /metrics and one of /status, how it lays that
out, and where it looks for the agent. The command against a real agent is in tests/test_e2e_status.py."""

from __future__ import annotations

import pytest

from agent.status import EXIT_USAGE, Reading, StatusError, render, resolve_endpoint, summarize

STATUS = {"version": "0.1.0", "config": "/etc/headwater/agent.yaml", "uptime_seconds": 192.0, "ready": True,
          "recent_problems": []}


def metrics_text(values: dict[str, float]) -> str:
    """Prometheus text from {'name{labels}': value}, with a TYPE line per family as the agent serves them."""
    lines, typed = [], set()
    for series, value in values.items():
        name = series.split("{", 1)[0]
        family = name.removesuffix("_total").removesuffix("_count").removesuffix("_sum").removesuffix("_bucket")
        kind = "counter" if name.endswith("_total") else "histogram" if family != name else "gauge"
        if family not in typed:
            lines.append(f"# HELP {family} something")
            lines.append(f"# TYPE {family} {kind}")
            typed.add(family)
        lines.append(f"{series} {value}")
    return "\n".join(lines) + "\n"


def reading(values: dict[str, float]) -> Reading:
    return Reading.parse(metrics_text(values))


SCOPE = 'otel_scope_name="headwater.x",otel_scope_schema_url="",otel_scope_version=""'


def test_ingest_rates_are_counter_differences_over_the_window_between_the_reads():
    first = reading({f'headwater_receiver_accepted_items_total{{{SCOPE},signal="traces",transport="http"}}': 100,
                     f'headwater_receiver_accepted_items_total{{{SCOPE},signal="traces",transport="grpc"}}': 50,
                     f'headwater_receiver_accepted_items_total{{{SCOPE},signal="metrics",transport="http"}}': 0})
    second = reading({f'headwater_receiver_accepted_items_total{{{SCOPE},signal="traces",transport="http"}}': 300,
                      f'headwater_receiver_accepted_items_total{{{SCOPE},signal="traces",transport="grpc"}}': 150,
                      f'headwater_receiver_accepted_items_total{{{SCOPE},signal="metrics",transport="http"}}': 1000})

    summary = summarize(STATUS, first, second, 2.0, "127.0.0.1:8888")

    assert summary["ingest"]["spans"] == {"total": 450, "per_second": 150}
    assert summary["ingest"]["data_points"] == {"total": 1000, "per_second": 500}
    assert summary["window_seconds"] == 2.0


def test_a_single_read_gives_totals_and_no_rates():
    second = reading({f'headwater_receiver_accepted_items_total{{{SCOPE},signal="traces",transport="http"}}': 7})

    summary = summarize(STATUS, None, second, None, "127.0.0.1:8888")

    assert summary["ingest"]["spans"] == {"total": 7, "per_second": None}
    assert "7 spans since start" in render(summary)


def test_sampling_shows_each_tier_in_order_with_spans_in_and_kept_per_second_and_its_rate_now():
    def tiers(kept_p0: float, kept_p2: float, dropped_p2: float) -> Reading:
        return reading({
            'headwater_sampling_effective_rate{tier="P0"}': 0.99,
            'headwater_sampling_effective_rate{tier="P2"}': 0.05,
            'headwater_sampling_kept_spans_total{tier="P0"}': kept_p0,
            'headwater_sampling_kept_spans_total{tier="P2"}': kept_p2,
            'headwater_sampling_dropped_spans_total{tier="P2"}': dropped_p2,
            "headwater_sampling_buffered_traces": 12,
            "headwater_sampling_buffered_bytes": 3 * 1024 * 1024,
            'headwater_sampling_dropped_spans_by_reason_total{reason="sampled"}': dropped_p2,
        })

    summary = summarize(STATUS, tiers(10, 5, 95), tiers(20, 10, 190), 1.0, "127.0.0.1:8888")

    p0, p2 = summary["sampling"]["tiers"]
    assert (p0["tier"], p0["rate"], p0["spans_in"]["per_second"], p0["spans_kept"]["per_second"]) == ("P0", 0.99, 10, 10)
    assert (p2["tier"], p2["rate"], p2["spans_in"]["per_second"], p2["spans_kept"]["per_second"]) == ("P2", 0.05, 100, 5)
    assert summary["sampling"]["buffered_traces"] == 12
    screen = render(summary)
    assert "buffered 12 traces, 3.0 MiB" in screen
    assert "spans dropped: sampled 190" in screen


def test_without_a_traces_pipeline_sampling_is_shown_as_off():
    summary = summarize(STATUS, None, reading({}), None, "127.0.0.1:8888")

    assert summary["sampling"] is None
    assert "sampling    off" in render(summary)


def endpoint_reading(sent: float, errors: float, latency_sum: float, latency_count: float) -> Reading:
    e = 'exporter="prom"'
    return reading({
        f'headwater_remote_write_samples_sent_total{{{e}}}': sent,
        f'headwater_remote_write_protocol{{{e},protocol="rw2"}}': 0,
        f'headwater_remote_write_protocol{{{e},protocol="rw1"}}': 1,
        f'headwater_remote_write_requests_total{{{e},protocol="rw1",status="204"}}': 10,
        f'headwater_remote_write_requests_total{{{e},protocol="rw1",status="503"}}': errors,
        f'headwater_queue_bytes{{{e},medium="memory"}}': 2048,
        f'headwater_queue_bytes{{{e},medium="disk"}}': 4096,
        f'headwater_queue_oldest_age_seconds{{{e}}}': 4.5,
        f'headwater_sender_latency_seconds_count{{{e}}}': latency_count,
        f'headwater_sender_latency_seconds_sum{{{e}}}': latency_sum,
        f'headwater_sender_retries_total{{{e},reason="server"}}': errors,
        f'headwater_remote_write_samples_dropped_total{{{e},reason="rejected"}}': 3,
        f'headwater_sender_circuit_open{{{e}}}': 0,
    })


def test_each_remote_write_endpoint_shows_protocol_queue_latency_and_errors():
    summary = summarize(STATUS, endpoint_reading(1000, 2, 1.0, 10), endpoint_reading(6000, 6, 1.5, 15), 2.0,
                        "127.0.0.1:8888")

    [prom] = summary["remote_write"]
    assert prom["exporter"] == "prom" and prom["protocol"] == "rw1"
    assert prom["queue"] == {"memory_bytes": 2048, "disk_bytes": 4096, "oldest_age_seconds": 4.5}
    assert prom["samples_sent"]["per_second"] == 2500
    assert prom["latency"] == {"mean_seconds": pytest.approx(0.1), "over": "window", "requests": 5}
    assert prom["request_errors"] == {"total": 6, "per_second": 2, "by_status": {"503": 6}}
    assert prom["samples_dropped"] == {"rejected": 3}
    screen = render(summary)
    assert "prom        rw1, queue 2.0 KiB in memory + 4.0 KiB on disk, oldest 4.5 s" in screen
    assert "sent 2,500 samples/s (6,000 since start" in screen and "latency 100 ms mean" in screen
    assert "errors: requests 2.0/s (6 since start: 503 6), retries 6, samples dropped 3 (rejected 3)" in screen


def test_samples_sent_show_the_average_since_start_beside_a_window_that_saw_no_flush():
    # Remote write sends once per batch.flush_interval (5 s by default): a 1 s window often sees nothing.
    summary = summarize(STATUS, endpoint_reading(1920, 0, 1.0, 10), endpoint_reading(1920, 0, 1.0, 10), 1.0,
                        "127.0.0.1:8888")

    assert summary["remote_write"][0]["samples_sent"] == {"total": 1920, "per_second": 0, "average_per_second": 10}
    assert "sent 0 samples/s (1,920 since start: 10.0/s on average)" in render(summary)


def test_latency_falls_back_to_the_mean_since_start_when_no_request_was_answered_in_the_window():
    summary = summarize(STATUS, endpoint_reading(0, 0, 2.0, 10), endpoint_reading(0, 0, 2.0, 10), 1.0,
                        "127.0.0.1:8888")

    assert summary["remote_write"][0]["latency"] == {"mean_seconds": 0.2, "over": "since_start", "requests": 10}
    assert "latency 200 ms mean since start" in render(summary)


def test_an_endpoint_that_has_not_sent_yet_has_no_protocol():
    summary = summarize(STATUS, None, reading({
        'headwater_remote_write_samples_sent_total{exporter="vm"}': 0,
        'headwater_remote_write_protocol{exporter="vm",protocol="vm"}': 0,
        'headwater_remote_write_protocol{exporter="vm",protocol="rw1"}': 0}), None, "127.0.0.1:8888")

    assert summary["remote_write"][0]["protocol"] is None
    assert "vm          no format yet" in render(summary)


def test_refusals_are_by_reason_and_admission_429s_are_not_counted_twice():
    summary = summarize(STATUS, None, reading({
        'headwater_admission_refused_requests_total{reason="budget",signal="traces"}': 4,
        'headwater_admission_refused_requests_total{reason="queue_full",signal="metrics"}': 0,
        'headwater_receiver_refused_requests_total{signal="traces",status="429",transport="http"}': 3,
        'headwater_receiver_refused_requests_total{signal="traces",status="RESOURCE_EXHAUSTED",transport="grpc"}': 1,
        'headwater_receiver_refused_requests_total{signal="metrics",status="413",transport="http"}': 2,
        'headwater_receiver_refused_items_total{signal="traces",transport="http"}': 9,
    }), None, "127.0.0.1:8888")

    reasons = {(r["signal"], r["reason"]): r["total"] for r in summary["refused"]["requests"]}
    assert all(r["per_second"] is None for r in summary["refused"]["requests"])
    assert reasons == {("traces", "budget"): 4, ("metrics", "queue_full"): 0, ("metrics", "too_large"): 2}
    assert "refused     traces budget 4, metrics too_large 2, traces invalid items 9 since start" in render(summary)


def test_the_same_reason_from_two_transports_is_one_row():
    summary = summarize(STATUS, None, reading({
        'headwater_receiver_refused_requests_total{signal="traces",status="400",transport="http"}': 2,
        'headwater_receiver_refused_requests_total{signal="traces",status="INVALID_ARGUMENT",transport="grpc"}': 3,
    }), None, "127.0.0.1:8888")

    assert summary["refused"]["requests"] == [{"signal": "traces", "reason": "malformed", "total": 5,
                                               "per_second": None}]


def test_a_trace_exporter_that_has_only_failed_so_far_is_listed():
    summary = summarize(STATUS, None, reading({
        'headwater_exporter_sent_spans_total{exporter="file"}': 4,
        'headwater_exporter_failed_spans_total{exporter="otlp",reason="rejected"}': 7,
    }), None, "127.0.0.1:8888")

    assert [(t["exporter"], t["spans_failed"]) for t in summary["trace_exporters"]] == [
        ("file", {}), ("otlp", {"rejected": 7})]
    assert "otlp        sent 0 spans since start, failed 7" in render(summary)


def test_a_counter_that_went_down_between_the_reads_counts_from_zero():
    first = reading({'headwater_receiver_accepted_items_total{signal="traces",transport="http"}': 500})
    second = reading({'headwater_receiver_accepted_items_total{signal="traces",transport="http"}': 30})

    summary = summarize(STATUS, first, second, 1.0, "127.0.0.1:8888")

    assert summary["ingest"]["spans"]["per_second"] == 30


def test_the_screen_says_not_ready_uptime_config_and_the_newest_problems_last():
    problems = [{"time": f"2026-11-29T17:00:0{i}.000Z", "level": "warning", "logger": "headwater.x",
                 "message": f"problem {i}", "fields": {"exporter": "prom"}} for i in range(8)]
    problems[-1]["repeated"] = 3
    status = {**STATUS, "ready": False, "recent_problems": problems}

    screen = render(summarize(status, None, reading({}), None, "127.0.0.1:8888"), width=200)

    assert screen.startswith("headwater 0.1.0 at 127.0.0.1:8888: NOT READY, up 3m12s; no rates (--interval 0)\n")
    assert "config      /etc/headwater/agent.yaml" in screen
    assert "(newest last, 2 older in --json)" in screen
    assert "problem 1" not in screen and "problem 2" in screen
    assert screen.rstrip().endswith("17:00:07 warning problem 7 (x3) exporter=prom")


def test_endpoint_comes_from_the_config_file_and_a_wildcard_address_is_reached_on_loopback(tmp_path):
    config = tmp_path / "agent.yaml"
    config.write_text("telemetry: {endpoint: 0.0.0.0:9999}\n")

    assert resolve_endpoint(None, str(config)) == ("http://127.0.0.1:9999", f"telemetry.endpoint in {config}")
    assert resolve_endpoint("[::1]:8888", str(config)) == ("http://[::1]:8888", "--endpoint")


def test_a_config_with_telemetry_turned_off_is_a_usage_error_saying_so(tmp_path):
    config = tmp_path / "agent.yaml"
    config.write_text("telemetry: {enabled: false}\n")

    with pytest.raises(StatusError, match="telemetry.enabled: false") as exc:
        resolve_endpoint(None, str(config))
    assert exc.value.code == EXIT_USAGE


def test_an_endpoint_without_a_port_is_a_usage_error():
    with pytest.raises(StatusError, match="expected HOST:PORT") as exc:
        resolve_endpoint("localhost", None)
    assert exc.value.code == EXIT_USAGE
