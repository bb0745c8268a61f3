"""The Grafana dashboards in this folder, as code. `make dashboards` (or `python configs/grafana/dashboards.py`)
writes the JSON files beside this one; `--check` only compares and exits 1 when a file differs from what the code
makes. tests/test_dashboards.py does the same, so the committed JSON and this code never disagree.

- `headwater-agent.json`: the agent itself, from its self-telemetry (`headwater_*`, scraped from /metrics or
  pushed with `telemetry.remote_write`): ingest and refusals, sampling by tier and reason, the trace buffer and
  its evictions, per remote-write endpoint the queue and the sender, trace exporters, span metrics, CPU and
  memory.
- `headwater-services.json`: the observed services' RED metrics from span metrics
  (`traces_span_metrics_*`, the names the Collector's spanmetrics connector gives): rate, errors and duration
  percentiles per service and span name.

Why a small generator and not a dashboard library (grafanalib, grafana-foundation-sdk): the dashboards use five
kinds of objects (row, time series, table, datasource and query variables), which a few functions here write as
plain dicts; grafanalib's last release is from 2024, and grafana-foundation-sdk is alpha, versioned per Grafana
release with epochs (pip's newest is built for Grafana 10.1) and would change the JSON with its releases. Plain
dicts keep the JSON exactly what is written here, and the tests need nothing installed.

Every panel and variable reads the `${datasource}` variable (type Prometheus), so the files import into any
Grafana 10 or later without editing. Only these Grafana macros appear: `$__rate_interval` in range vectors and
`$__range` for totals over the time picker's range.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
SCHEMA_VERSION = 39  # Grafana 10.4 / 11.x; older schemas are migrated on import, newer Grafanas read it
RATE = "[$__rate_interval]"

Panel = dict[str, Any]


# -- building blocks --------------------------------------------------------------------------------------


def target(expr: str, legend: str = "", *, instant: bool = False) -> dict[str, Any]:
    """One PromQL query of a panel (refId is set by `panel`)."""
    return {"datasource": DATASOURCE, "editorMode": "code", "expr": expr, "legendFormat": legend or "__auto",
            "range": not instant, "instant": instant, **({"format": "table"} if instant else {})}


def timeseries(title: str, description: str, targets: Sequence[dict[str, Any]], unit: str = "short", *,
               width: int = 8, stack: bool = False, minimum: float | None = 0) -> Panel:
    """A time-series panel; `unit` is a Grafana unit id (`short`, `bytes`, `s`, `ms`, `percentunit`, ...)."""
    defaults: dict[str, Any] = {"unit": unit, "custom": {
        "drawStyle": "line", "lineWidth": 1, "fillOpacity": 10 if not stack else 30, "showPoints": "never",
        "spanNulls": False, "stacking": {"mode": "normal" if stack else "none", "group": "A"}}}
    if minimum is not None:
        defaults["min"] = minimum
    return _panel("timeseries", title, description, targets, width, {
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                    "tooltip": {"mode": "multi", "sort": "desc"}}})


def table(title: str, description: str, columns: Sequence[tuple[str, str, str]], by: Sequence[str], *,
          width: int = 24, height: int = 10) -> Panel:
    """A table of instant queries joined on the `by` labels: `columns` are (header, unit, expr)."""
    targets = [target(expr, header, instant=True) for header, _unit, expr in columns]
    # Grafana names the value column of one query "Value", of several "Value #<refId>".
    names = ["Value"] if len(columns) == 1 else [f"Value #{chr(ord('A') + i)}" for i in range(len(columns))]
    overrides = [{"matcher": {"id": "byName", "options": names[i]},
                  "properties": [{"id": "displayName", "value": header}, {"id": "unit", "value": unit}]}
                 for i, (header, unit, _expr) in enumerate(columns)]
    panel = _panel("table", title, description, targets, width, {
        "fieldConfig": {"defaults": {"custom": {"align": "auto"}}, "overrides": overrides},
        "options": {"showHeader": True, "sortBy": [{"displayName": columns[0][0], "desc": True}]},
        "transformations": [{"id": "merge", "options": {}},
                            {"id": "organize", "options": {"excludeByName": {"Time": True},
                                                           "indexByName": {name: i for i, name in enumerate(by)}}}]})
    panel["gridPos"]["h"] = height
    return panel


def _panel(kind: str, title: str, description: str, targets: Sequence[dict[str, Any]], width: int,
           extra: dict[str, Any]) -> Panel:
    return {"type": kind, "title": title, "description": description, "datasource": DATASOURCE,
            "gridPos": {"h": 8, "w": width, "x": 0, "y": 0},
            "targets": [{**t, "refId": chr(ord("A") + i)} for i, t in enumerate(targets)], **extra}


def row(title: str) -> Panel:
    return {"type": "row", "title": title, "collapsed": False, "panels": [], "gridPos": {"h": 1, "w": 24, "x": 0, "y": 0}}


def datasource_variable() -> dict[str, Any]:
    return {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
            "current": {}, "hide": 0, "includeAll": False, "multi": False, "options": [], "refresh": 1, "regex": ""}


def query_variable(name: str, label: str, query: str) -> dict[str, Any]:
    """A multi-value variable from `label_values(...)`, "All" by default, whose All is `.*` (so series that
    lack the label still match)."""
    return {"name": name, "label": label, "type": "query", "datasource": DATASOURCE, "definition": query,
            "query": {"query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]}, "hide": 0, "includeAll": True,
            "allValue": ".*", "multi": True, "options": [], "refresh": 2, "regex": "", "sort": 1}


def layout(items: Iterable[Panel]) -> list[Panel]:
    """Place panels left to right in rows of 24 columns, each `row` starting a new line; number them."""
    placed, x, y, line_height = [], 0, 0, 0
    for number, item in enumerate(items, start=1):
        grid = item["gridPos"]
        if item["type"] == "row" or x + grid["w"] > 24:
            x, y, line_height = 0, y + line_height, 0
        grid["x"], grid["y"] = x, y
        if item["type"] == "row":
            y += grid["h"]
        else:
            x += grid["w"]
            line_height = max(line_height, grid["h"])
        placed.append({"id": number, **item})
    return placed


def dashboard(uid: str, title: str, description: str, variables: Sequence[dict[str, Any]],
              items: Iterable[Panel]) -> dict[str, Any]:
    return {
        "annotations": {"list": [{"builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                                  "enable": True, "hide": True, "iconColor": "rgba(0, 211, 255, 1)",
                                  "name": "Annotations & Alerts", "type": "dashboard"}]},
        "description": description,
        "editable": True,
        "graphTooltip": 1,
        "links": [],
        "panels": layout(items),
        "refresh": "30s",
        "schemaVersion": SCHEMA_VERSION,
        "tags": ["headwater"],
        "templating": {"list": [datasource_variable(), *variables]},
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "title": title,
        "uid": uid,
        "version": 1,
    }


# -- the agent --------------------------------------------------------------------------------------------

AGENT = 'job=~"$job", instance=~"$instance"'
ENDPOINT = f'{AGENT}, exporter=~"$exporter"'


def rate(metric: str, selector: str = AGENT) -> str:
    return f"rate({metric}{{{selector}}}{RATE})"


def agent_dashboard() -> dict[str, Any]:
    variables = [
        query_variable("job", "Job", "label_values(headwater_admission_inflight_bytes, job)"),
        query_variable("instance", "Instance", 'label_values(headwater_admission_inflight_bytes{job=~"$job"}, instance)'),
        query_variable("exporter", "Exporter",
                       'label_values(headwater_sender_concurrency{job=~"$job", instance=~"$instance"}, exporter)'),
    ]
    items = [
        row("Ingest"),
        timeseries("Accepted per second", "Spans (traces) and data points or samples (metrics) the receivers "
                   "accepted, by signal and transport.",
                   [target(f"sum by (signal, transport) ({rate('headwater_receiver_accepted_items_total')})",
                           "{{signal}} {{transport}}")]),
        timeseries("Refused requests per second", "Requests refused whole, by signal and the answer given "
                   "(HTTP status or gRPC code): 429 / RESOURCE_EXHAUSTED is admission control, 400 a body that "
                   "does not parse, 413 too large, 415 an unsupported content type or encoding.",
                   [target(f"sum by (signal, status) ({rate('headwater_receiver_refused_requests_total')})",
                           "{{signal}} {{status}}")]),
        timeseries("Refused items per second", "Spans or data points refused inside accepted requests "
                   "(partial success, e.g. a trace ID that is not 16 bytes).",
                   [target(f"sum by (signal) ({rate('headwater_receiver_refused_items_total')})", "{{signal}}")]),
        timeseries("Admission refusals per second", "Why admission control refused: budget "
                   "(admission.max_inflight passed) or queue_full (a remote-write queue full under "
                   "when_full: refuse).",
                   [target(f"sum by (signal, reason) ({rate('headwater_admission_refused_requests_total')})",
                           "{{signal}} {{reason}}")]),
        timeseries("Bytes in flight", "Bytes being received and decoded plus what the signal's memory queues "
                   "hold, against admission.max_inflight.",
                   [target(f"sum by (instance, signal) (headwater_admission_inflight_bytes{{{AGENT}}})",
                           "{{instance}} {{signal}}")], "bytes"),

        row("Sampling"),
        timeseries("Spans per second: in, kept, dropped", "Every span the sampler received, and the spans of "
                   "traces it kept and dropped.",
                   [target(f"sum({rate('headwater_sampling_spans_in_total')})", "in"),
                    target(f"sum({rate('headwater_sampling_kept_spans_total')})", "kept"),
                    target(f"sum({rate('headwater_sampling_dropped_spans_total')})", "dropped")]),
        timeseries("Kept spans per second by tier", "Spans of kept traces, by the tier that decided them.",
                   [target(f"sum by (tier) ({rate('headwater_sampling_kept_spans_total')})", "{{tier}}")],
                   stack=True),
        timeseries("Dropped spans per second by tier", "Spans of dropped traces, by tier.",
                   [target(f"sum by (tier) ({rate('headwater_sampling_dropped_spans_total')})", "{{tier}}")],
                   stack=True),
        timeseries("Kept spans per second by reason", "tier: the tier's rate; error, http_5xx, latency: forced "
                   "keeps (sampling.always_keep).",
                   [target(f"sum by (reason) ({rate('headwater_sampling_kept_spans_by_reason_total')})",
                           "{{reason}}")], stack=True),
        timeseries("Dropped spans per second by reason", "sampled: not picked at the tier's rate (shedding "
                   "included); memory_pressure: evicted past sampling.max_memory; late_span_of_dropped_trace.",
                   [target(f"sum by (reason) ({rate('headwater_sampling_dropped_spans_by_reason_total')})",
                           "{{reason}}")], stack=True),
        timeseries("Traces per second: in and kept by tier", "Traces the sampler saw, and traces kept by tier.",
                   [target(f"sum({rate('headwater_sampling_traces_in_total')})", "in"),
                    target(f"sum by (tier) ({rate('headwater_sampling_kept_traces_total')})", "kept {{tier}}")]),
        timeseries("Effective rate by tier", "The fraction of traces each tier keeps now: its configured rate, "
                   "or less under sampling.max_spans_per_second or when exporters fall behind.",
                   [target(f"max by (instance, tier) (headwater_sampling_effective_rate{{{AGENT}}})",
                           "{{instance}} {{tier}}")], "percentunit"),

        row("Trace buffer"),
        timeseries("Buffered bytes", "Live bytes of all buffered spans, bounded by sampling.max_memory.",
                   [target(f"sum by (instance) (headwater_sampling_buffered_bytes{{{AGENT}}})", "{{instance}}")],
                   "bytes"),
        timeseries("Buffered traces", "Traces waiting for their decision.",
                   [target(f"sum by (instance) (headwater_sampling_buffered_traces{{{AGENT}}})", "{{instance}}")]),
        timeseries("Evicted spans per second", "Spans dropped because the buffer passed sampling.max_memory "
                   "(the lowest tier's largest, oldest traces first).",
                   [target("sum by (instance) (rate(headwater_sampling_dropped_spans_by_reason_total"
                           f'{{{AGENT}, reason="memory_pressure"}}{RATE}))', "{{instance}}")]),
        timeseries("Decision lag", "How far past its deadline the last decided trace was.",
                   [target(f"max by (instance) (headwater_sampling_decision_lag_seconds{{{AGENT}}})",
                           "{{instance}}")], "s"),

        row("Remote write, per endpoint"),
        timeseries("Samples sent per second", "Samples the receiver accepted.",
                   [target("sum by (exporter) "
                           f"({rate('headwater_remote_write_samples_sent_total', ENDPOINT)})", "{{exporter}}")]),
        timeseries("Samples dropped or failed per second", "dropped: on purpose, by reason (rejected by the "
                   "receiver, too_old, queue_full, corrupt, error); failed: left in a memory queue at shutdown.",
                   [target("sum by (exporter, reason) "
                           f"({rate('headwater_remote_write_samples_dropped_total', ENDPOINT)})",
                           "{{exporter}} {{reason}}"),
                    target("sum by (exporter) "
                           f"({rate('headwater_remote_write_samples_failed_total', ENDPOINT)})",
                           "{{exporter}} failed")]),
        timeseries("Queue depth", "Bytes each endpoint's queue holds, in memory (estimated, the pending flush "
                   "included) and in segment files on disk.",
                   [target(f"sum by (instance, exporter, medium) (headwater_queue_bytes{{{ENDPOINT}}})",
                           "{{instance}} {{exporter}} {{medium}}")], "bytes"),
        timeseries("Oldest queued data", "Age of the oldest data each endpoint's queue holds; it grows while the "
                   "receiver is down or slow, and sender.sample_age_limit drops what passes it.",
                   [target(f"max by (instance, exporter) (headwater_queue_oldest_age_seconds{{{ENDPOINT}}})",
                           "{{instance}} {{exporter}}")], "s"),
        table("Wire format in use", "The format each endpoint speaks now (negotiated with protocol: auto).",
              [("Endpoints", "short",
                f"count by (exporter, protocol) (headwater_remote_write_protocol{{{ENDPOINT}}} == 1)")],
              ["exporter", "protocol"], width=8, height=8),

        row("Senders"),
        timeseries("Request latency", "Time from sending a request to its answer: median and 99th percentile, "
                   "per endpoint (trace exporters included).",
                   [target("histogram_quantile(0.5, sum by (exporter, le) "
                           f"({rate('headwater_sender_latency_seconds_bucket', ENDPOINT)}))", "{{exporter}} p50"),
                    target("histogram_quantile(0.99, sum by (exporter, le) "
                           f"({rate('headwater_sender_latency_seconds_bucket', ENDPOINT)}))", "{{exporter}} p99")],
                   "s"),
        timeseries("Concurrency", "Requests each sender may have in flight now; it adapts to throughput, "
                   "latency and errors, up to sender.max_concurrency.",
                   [target(f"max by (instance, exporter) (headwater_sender_concurrency{{{ENDPOINT}}})",
                           "{{instance}} {{exporter}}")]),
        timeseries("Samples per request", "Most samples per request now; it shrinks when acknowledgements "
                   "take longer than a second.",
                   [target(f"max by (instance, exporter) (headwater_sender_batch_samples{{{ENDPOINT}}})",
                           "{{instance}} {{exporter}}")]),
        timeseries("Retries per second", "Requests sent again, by reason: network (no answer), server (5xx), "
                   "throttled (429 or Retry-After).",
                   [target(f"sum by (exporter, reason) ({rate('headwater_sender_retries_total', ENDPOINT)})",
                           "{{exporter}} {{reason}}")]),
        timeseries("Dropped by the sender per second", "Samples (spans, for trace exporters) dropped on purpose: "
                   "rejected (a 4xx), too_old (past sample_age_limit), error (a bug, logged).",
                   [target("sum by (exporter, reason) "
                           f"({rate('headwater_sender_dropped_samples_total', ENDPOINT)})",
                           "{{exporter}} {{reason}}")]),
        timeseries("Circuit open", "1 while an endpoint failed repeatedly and is only probed every "
                   "retry.max_backoff.",
                   [target(f"max by (instance, exporter) (headwater_sender_circuit_open{{{ENDPOINT}}})",
                           "{{instance}} {{exporter}}")]),

        row("Trace exporters and span metrics"),
        timeseries("Spans exported per second", "Kept spans each trace exporter delivered.",
                   [target(f"sum by (exporter) ({rate('headwater_exporter_sent_spans_total')})", "{{exporter}}")]),
        timeseries("Spans failed per second", "Kept spans a trace exporter could not deliver, by reason.",
                   [target(f"sum by (exporter, reason) ({rate('headwater_exporter_failed_spans_total')})",
                           "{{exporter}} {{reason}}")]),
        timeseries("Span metrics series", "Series the span metrics hold (bounded by span_metrics.max_series), "
                   "and spans folded into the overflow series per second.",
                   [target(f"sum by (instance) (headwater_span_metrics_series{{{AGENT}}})", "{{instance}} series"),
                    target(f"sum by (instance) ({rate('headwater_span_metrics_overflow_spans_total')})",
                           "{{instance}} overflow spans/s")]),

        row("Process"),
        timeseries("CPU", "CPU time the agent uses, user and system, in cores.",
                   [target(f"sum by (instance) ({rate('headwater_process_cpu_seconds_total')})", "{{instance}}")],
                   width=12),
        timeseries("Resident memory", "Resident set size of the agent's process.",
                   [target(f"sum by (instance) (headwater_process_resident_memory_bytes{{{AGENT}}})",
                           "{{instance}}")], "bytes", width=12),
    ]
    return dashboard("headwater-agent", "Headwater agent",
                     "The Headwater agent's own telemetry: ingest, sampling, buffers, remote-write queues and "
                     "senders, process. Needs the agent's metrics in the data source: telemetry.remote_write, or "
                     "a scrape of /metrics.", variables, items)


# -- the observed services (span metrics) -------------------------------------------------------------------

CALLS = "traces_span_metrics_calls_total"
BUCKETS = "traces_span_metrics_duration_milliseconds_bucket"
SPANS = 'service_name=~"$service", span_name=~"$span_name", span_kind=~"$span_kind"'
ERRORS = f'{SPANS}, status_code="STATUS_CODE_ERROR"'


def error_ratio(by: str) -> str:
    """Errors / calls; `or ... * 0` so a service without errors shows 0, not a gap."""
    calls = f"sum by ({by}) (rate({CALLS}{{{SPANS}}}{RATE}))"
    errors = f"sum by ({by}) (rate({CALLS}{{{ERRORS}}}{RATE}))"
    return f"({errors} or {calls} * 0) / {calls}"


def quantile(q: float, by: str) -> str:
    return f"histogram_quantile({q}, sum by ({by}, le) (rate({BUCKETS}{{{SPANS}}}{RATE})))"


def services_dashboard() -> dict[str, Any]:
    variables = [
        query_variable("service", "Service", f"label_values({CALLS}, service_name)"),
        query_variable("span_kind", "Span kind", f'label_values({CALLS}{{service_name=~"$service"}}, span_kind)'),
        query_variable("span_name", "Span name",
                       f'label_values({CALLS}{{service_name=~"$service", span_kind=~"$span_kind"}}, span_name)'),
    ]
    per_service = "service_name"
    per_span = "service_name, span_name"
    items = [
        row("Per service"),
        timeseries("Rate", "Spans per second (every span, counted before sampling).",
                   [target(f"sum by ({per_service}) (rate({CALLS}{{{SPANS}}}{RATE}))", "{{service_name}}")],
                   "reqps"),
        timeseries("Errors", "Share of spans with status ERROR.",
                   [target(error_ratio(per_service), "{{service_name}}")], "percentunit"),
        timeseries("Duration", "Span duration percentiles (from the span metrics histogram's buckets).",
                   [target(quantile(0.5, per_service), "{{service_name}} p50"),
                    target(quantile(0.95, per_service), "{{service_name}} p95"),
                    target(quantile(0.99, per_service), "{{service_name}} p99")], "ms"),

        row("Per span name"),
        timeseries("Rate", "Spans per second by service and span name.",
                   [target(f"sum by ({per_span}) (rate({CALLS}{{{SPANS}}}{RATE}))",
                           "{{service_name}} {{span_name}}")], "reqps"),
        timeseries("Errors", "Share of spans with status ERROR, by service and span name.",
                   [target(error_ratio(per_span), "{{service_name}} {{span_name}}")], "percentunit"),
        timeseries("Duration p95", "95th percentile of span duration by service and span name.",
                   [target(quantile(0.95, per_span), "{{service_name}} {{span_name}}")], "ms"),
        table("Span names", "Per service and span name over the dashboard's time range: spans, rate now, error "
              "share and duration percentiles.",
              [("Spans in range", "short", f"sum by ({per_span}) (increase({CALLS}{{{SPANS}}}[$__range]))"),
               ("Rate", "reqps", f"sum by ({per_span}) (rate({CALLS}{{{SPANS}}}{RATE}))"),
               ("Errors", "percentunit", error_ratio(per_span)),
               ("p50", "ms", quantile(0.5, per_span)),
               ("p95", "ms", quantile(0.95, per_span)),
               ("p99", "ms", quantile(0.99, per_span))],
              ["service_name", "span_name"]),
    ]
    return dashboard("headwater-services", "Services (span metrics)",
                     "Rate, errors and duration of the observed services, from the span metrics Headwater counts "
                     "from every span before sampling (pipelines.metrics.span_metrics: true).", variables, items)


# -- files --------------------------------------------------------------------------------------------------

DASHBOARDS = {"headwater-agent.json": agent_dashboard, "headwater-services.json": services_dashboard}


def render(build: Any) -> str:
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 if a file differs")
    parser.add_argument("--out", type=Path, default=HERE, help="folder to write to (default: this one)")
    args = parser.parse_args(argv)
    stale = []
    for name, build in DASHBOARDS.items():
        path, text = args.out / name, render(build)
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            continue
        if args.check:
            stale.append(name)
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
    if stale:
        print(f"out of date: {', '.join(stale)}; run `make dashboards`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
