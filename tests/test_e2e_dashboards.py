"""End to end: every panel of every dashboard in configs/grafana returns data from a real Prometheus 2.42.

One run serves the module: the agent writes span metrics and, with `telemetry.remote_write`, its own metrics
into Prometheus (no scrape job), while an OpenTelemetry SDK client sends spans of two services (some of them
errors) and the agent exports the kept ones to an OTLP sink and a file. Then each dashboard's variables are
resolved the way Grafana resolves them (their `label_values` queries against Prometheus, in order, each later
one filled with the earlier ones' values), every panel query is filled with them and with Grafana's macros
(tests/promql_names.py), and run as an instant query.

- A panel naming a series the agent does not produce fails, listing the names (read from each expression with a
  small PromQL tokenizer) that Prometheus does not have.
- A panel query that returns nothing, or only NaN, fails with the panel's title and the filled query.
- What the push wrote is what a scrape of /metrics shows: the same `headwater_*` names.
- Before any traffic, every counter the agent's dashboard reads is already on /metrics, at 0.
"""

from __future__ import annotations

import json
import math
import re
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from opentelemetry import trace as api
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode

from tests.agent_process import AgentProcess
from tests.otlp_sink import OtlpSink
from tests.peers.prometheus import INSTALL_HINT, PROMETHEUS_BINARY, PrometheusServer
from tests.promql_names import fill, metric_names

ROOT = Path(__file__).resolve().parent.parent
GRAFANA = ROOT / "configs" / "grafana"
PUSH_INTERVAL = 1.0
ROUNDS = 4
SERVICES = {
    "checkout": [("GET /cart", SpanKind.SERVER), ("SELECT cart", SpanKind.CLIENT), ("payments.Charge", SpanKind.CLIENT)],
    "payments": [("POST /charge", SpanKind.SERVER), ("fraud.Check", SpanKind.INTERNAL)],
}


@dataclass
class Run:
    prometheus: PrometheusServer
    agent: AgentProcess
    spans: int


def agent_config(prometheus: PrometheusServer) -> dict:
    return {
        "sampling": {"decision_wait": "1s", "root_delay": "200ms",
                     "tiers": [{"name": "P0", "rate": 1.0, "when": {"span_attributes": {"sampling.priority": "P0"}}},
                               {"name": "P2", "rate": 0.5}]},
        "exporters": {"remote_write": [{
            "name": "prom", "url": prometheus.remote_write_url, "batch": {"flush_interval": "200ms"},
            "sender": {"retry": {"initial_backoff": "100ms", "max_backoff": "1s"}}}]},
        "span_metrics": {"flush_interval": "1s"},
        "pipelines": {"metrics": {"exporters": ["prom"], "span_metrics": True}},
        "telemetry": {"remote_write": "prom", "remote_write_interval": f"{PUSH_INTERVAL}s"},
    }


def send_spans(agent: AgentProcess, round_: int) -> int:
    """One round of traces from each service through the OpenTelemetry SDK over OTLP/HTTP; the spans sent."""
    sent = 0
    for service, operations in SERVICES.items():
        provider = TracerProvider(resource=Resource.create({"service.name": service, "service.instance.id": "node-1"}))
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=agent.http_url + "/v1/traces")))
        tracer = provider.get_tracer("dashboards-test")
        now = time.time_ns()
        for trace in range(10):
            root_name, root_kind = operations[0]
            start = now - 1_000_000_000
            attributes = {"sampling.priority": "P0"} if trace % 5 == 0 else {}
            root = tracer.start_span(root_name, kind=root_kind, start_time=start, attributes=attributes)
            for i, (name, kind) in enumerate(operations[1:], start=1):
                child = tracer.start_span(name, kind=kind, start_time=start + i * 1_000_000,
                                          context=api.set_span_in_context(root))
                if (trace + round_) % 4 == 0:
                    child.set_status(Status(StatusCode.ERROR, "failed"))
                child.end(end_time=start + i * 1_000_000 + (1 + trace * 7 + i * 13) * 1_000_000)
                sent += 1
            root.end(end_time=start + (20 + trace * 37) * 1_000_000)
            sent += 1
        provider.shutdown()  # flushes this round
    return sent


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    if not PROMETHEUS_BINARY.is_file():
        pytest.fail(f"Prometheus binary missing at {PROMETHEUS_BINARY}: {INSTALL_HINT}", pytrace=False)
    with PrometheusServer(tmp_path_factory.mktemp("prometheus")) as prometheus, OtlpSink() as sink:
        agent = AgentProcess(tmp_path_factory.mktemp("agent"), otlp_exporter_url=sink.url,
                             extra_config=agent_config(prometheus))
        agent.start()
        try:
            spans = 0
            for round_ in range(ROUNDS):  # spread over a few pushes, so every rate has an increase to show
                spans += send_spans(agent, round_)
                time.sleep(PUSH_INTERVAL)
            prometheus.wait_for_query(f"sum(traces_span_metrics_calls_total) == {spans}", timeout=30)
            prometheus.wait_for_query(f"sum(headwater_sampling_spans_in_total) == {spans}", timeout=30)
            prometheus.wait_for_query("sum(headwater_exporter_sent_spans_total) > 0", timeout=30)
            yield Run(prometheus, agent, spans)
        finally:
            agent.stop_cleanly()


def dashboards() -> dict[str, dict]:
    return {path.name: json.loads(path.read_text(encoding="utf-8")) for path in sorted(GRAFANA.glob("*.json"))}


def queries(dashboard: dict) -> list[tuple[str, str]]:
    """(panel title, expression) of every panel target."""
    return [(p["title"], t["expr"]) for p in dashboard["panels"] if p["type"] != "row" for t in p["targets"]]


def get_json(prometheus: PrometheusServer, path: str, params: list[tuple[str, str]]) -> dict:
    with urllib.request.urlopen(f"{prometheus.url}{path}?{urllib.parse.urlencode(params)}", timeout=10) as response:
        payload = json.load(response)
    assert payload["status"] == "success", payload
    return payload


def regex_of(values: list[str]) -> str:
    """A multi-value variable's value as Grafana writes it into `=~"..."`: alternatives, regex-escaped, with
    backslashes doubled for the PromQL string."""
    escaped = [re.sub(r"([\\^$.|?*+()\[\]{}])", r"\\\\\1", v) for v in values]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


def resolve_variables(prometheus: PrometheusServer, dashboard: dict) -> dict[str, str]:
    """Each query variable's values, as Grafana gets them: `label_values(selector, label)` over the series
    Prometheus holds, the selector filled with the variables before it."""
    values: dict[str, str] = {}
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", variable["query"]["query"])
        assert match, f"variable {variable['name']}: not a label_values query: {variable['query']}"
        selector, label = fill(match.group(1), values), match.group(2)
        series = get_json(prometheus, "/api/v1/series", [("match[]", selector)])["data"]
        found = sorted({s[label] for s in series if label in s})
        assert found, f"variable {variable['name']}: {selector} has no {label!r} values in Prometheus"
        values[variable["name"]] = regex_of(found)
    return values


def has_data(result: list[dict]) -> bool:
    return any(not math.isnan(float(r["value"][1])) for r in result)


def test_every_dashboard_names_only_series_the_agent_produced(run):
    produced = set(get_json(run.prometheus, "/api/v1/label/__name__/values", [])["data"])
    missing = {}
    for name, dashboard in dashboards().items():
        named = {m for _title, expr in queries(dashboard) for m in metric_names(expr)}
        named |= {m for v in dashboard["templating"]["list"] if v["type"] == "query"
                  for m in metric_names(v["query"]["query"].removeprefix("label_values(").rsplit(",", 1)[0])}
        if named - produced:
            missing[name] = sorted(named - produced)
    assert not missing, f"panels name series that Prometheus does not have after the run: {missing}"


@pytest.mark.parametrize("name", sorted(dashboards()))
def test_every_panel_query_returns_data_with_its_variables_and_grafanas_macros_filled_in(run, name):
    dashboard = dashboards()[name]
    variables = resolve_variables(run.prometheus, dashboard)
    empty = []
    for title, expr in queries(dashboard):
        filled = fill(expr, variables)
        if not has_data(run.prometheus.query(filled)):
            empty.append(f"{title}: {filled}")
    assert not empty, "panel queries without data:\n" + "\n".join(empty)


def headwater_names(metrics_text: str) -> set[str]:
    return {re.split(r"[{ ]", line, maxsplit=1)[0] for line in metrics_text.splitlines()
            if line.startswith("headwater_")}


def test_a_scrape_of_metrics_shows_the_same_headwater_series_names_as_the_push(run):
    def scrape() -> set[str]:
        with urllib.request.urlopen(run.agent.telemetry_url + "/metrics", timeout=10) as response:
            return headwater_names(response.read().decode())

    before = scrape()
    time.sleep(2 * PUSH_INTERVAL + 0.5)  # the next push, flushed and written
    pushed = {n for n in get_json(run.prometheus, "/api/v1/label/__name__/values", [])["data"]
              if n.startswith("headwater_")}
    after = scrape()
    assert before <= pushed <= after, (f"only scraped: {sorted(before - pushed)}; "
                                       f"only pushed: {sorted(pushed - after)}")


def test_every_counter_the_agent_dashboard_reads_is_on_metrics_at_0_before_any_traffic(prometheus, otlp_sink,
                                                                                        start_agent):
    config = agent_config(prometheus)
    config["telemetry"]["remote_write_interval"] = "1h"  # no push yet either: nothing has happened
    agent = start_agent(otlp_exporter_url=otlp_sink.url, extra_config=config)
    with urllib.request.urlopen(agent.telemetry_url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("headwater_"):
            name, value = re.split(r"[{ ]", line, maxsplit=1)[0], float(line.rsplit(" ", 1)[1])
            values[name] = values.get(name, 0.0) + value
    counters = {m for _title, expr in queries(dashboards()["headwater-agent.json"]) for m in metric_names(expr)
                if m.endswith("_total") and m != "headwater_process_cpu_seconds_total"}
    missing = sorted(counters - set(values))
    assert counters and not missing, f"not exported before traffic: {missing}"
    assert {name: values[name] for name in counters if values[name]} == {}  # nothing happened yet
