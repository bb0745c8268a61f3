"""`headwater status`: one screen, for a person at a terminal, of how the running agent is doing.

It reads the agent's telemetry endpoint the way a monitoring system would: `/status` (version, config file,
uptime, readiness, the last warnings and errors) and `/metrics` twice, `--interval` apart, because the
per-second rates are differences of counters. The screen and `--json` are two renderings of one summary
(`summarize`), which is a pure function of those reads and is what the unit tests check.

Exit status: 0 ready; 1 the agent cannot be reached or does not answer like a Headwater agent; 2 bad usage
(argparse's code) or a config file that does not load; 3 reachable but not ready (starting or stopping).
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TextIO

from prometheus_client.parser import text_string_to_metric_families

EXIT_READY, EXIT_UNREACHABLE, EXIT_USAGE, EXIT_NOT_READY = 0, 1, 2, 3
MAX_METRICS_BYTES = 16 * 1024 * 1024  # an agent with dozens of exporters serves well under 1 MiB
MAX_STATUS_BYTES = 256 * 1024  # /status holds at most 16 KiB of log entries
RECENT_PROBLEMS_SHOWN = 6

# Receiver refusals by the status they answered. 429 / RESOURCE_EXHAUSTED are admission control's refusals,
# which `headwater_admission_refused_requests_total` already counts by reason (budget, queue_full).
_RECEIVER_REASONS = {"400": "malformed", "INVALID_ARGUMENT": "malformed", "413": "too_large",
                     "415": "unsupported_encoding", "429": None, "RESOURCE_EXHAUSTED": None,
                     "401": "unauthenticated", "UNAUTHENTICATED": "unauthenticated"}


class StatusError(Exception):
    """Why status cannot say anything; `code` is the exit status."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


# -- where the agent listens --------------------------------------------------------------------------------


def resolve_endpoint(endpoint: str | None, config_path: str | None) -> tuple[str, str]:
    """(base URL, where it came from): `--endpoint`, else `telemetry.endpoint` of the config file (the default
    config's without -c). A wildcard listen address is reached on loopback."""
    if endpoint is not None:
        source = "--endpoint"
    else:
        from agent.config import ConfigError, load_file

        source = f"telemetry.endpoint in {config_path or '(default config)'}"
        try:
            telemetry = load_file(config_path).telemetry
        except ConfigError as exc:
            problems = "\n".join(f"  {issue}" for issue in exc.issues)
            raise StatusError(f"{exc.source or config_path}: {len(exc.issues)} problem(s)\n{problems}", EXIT_USAGE)
        except OSError as exc:
            raise StatusError(f"cannot read {config_path}: {exc}", EXIT_USAGE) from None
        if not telemetry.enabled:
            raise StatusError(f"{config_path or '(default config)'} turns self-telemetry off "
                              "(telemetry.enabled: false): the agent serves nothing to read", EXIT_USAGE)
        endpoint = telemetry.endpoint
    host, sep, port = endpoint.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise StatusError(f"{source}: expected HOST:PORT, got {endpoint!r}", EXIT_USAGE)
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "*": "127.0.0.1"}.get(host, host)
    return f"http://{'[' + host + ']' if ':' in host else host}:{port}", source


# -- reading it ---------------------------------------------------------------------------------------------


def fetch(url: str, timeout: float, max_bytes: int) -> tuple[int, bytes]:
    """(HTTP status, body) of a GET, the body at most `max_bytes`; raises StatusError when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, _read_bounded(response, url, max_bytes)
    except urllib.error.HTTPError as exc:
        return exc.code, _read_bounded(exc, url, max_bytes)
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise StatusError(f"cannot reach the agent at {url}: {reason}", EXIT_UNREACHABLE) from None


def _read_bounded(response: Any, url: str, max_bytes: int) -> bytes:
    body = response.read(max_bytes + 1)
    if len(body) > max_bytes:
        raise StatusError(f"{url} answered more than {max_bytes} bytes; is that a Headwater agent?", EXIT_UNREACHABLE)
    return body


@dataclass(frozen=True)
class Reading:
    """One read of /metrics: every sample by name (counters keep their `_total`), OpenTelemetry's
    `otel_scope_*` labels left out."""

    samples: Mapping[str, tuple[tuple[Mapping[str, str], float], ...]]

    @classmethod
    def parse(cls, text: str) -> Reading:
        samples: dict[str, list[tuple[Mapping[str, str], float]]] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = {k: v for k, v in sample.labels.items() if not k.startswith("otel_scope_")}
                samples.setdefault(sample.name, []).append((labels, sample.value))
        return cls({name: tuple(values) for name, values in samples.items()})

    def select(self, name: str, **match: str) -> list[tuple[Mapping[str, str], float]]:
        return [(labels, value) for labels, value in self.samples.get(name, ())
                if all(labels.get(k) == v for k, v in match.items())]

    def total(self, name: str, **match: str) -> float:
        return sum(value for _labels, value in self.select(name, **match))

    def by(self, name: str, label: str, **match: str) -> dict[str, float]:
        """Sum of `name` per value of `label`, in the order first seen."""
        result: dict[str, float] = {}
        for labels, value in self.select(name, **match):
            key = labels.get(label, "")
            result[key] = result.get(key, 0.0) + value
        return result

    def label_values(self, name: str, label: str) -> list[str]:
        return list(self.by(name, label))


# -- the summary --------------------------------------------------------------------------------------------


class _Window:
    """Counter values from the second read, with their rate since the first (None without a first)."""

    def __init__(self, first: Reading | None, second: Reading, seconds: float | None) -> None:
        self.first, self.second, self.seconds = first, second, seconds

    def counter(self, name: str, **match: str) -> dict[str, float | None]:
        delta = self.delta(name, **match)
        return {"total": self.second.total(name, **match),
                "per_second": None if delta is None or not self.seconds else delta / self.seconds}

    def delta(self, name: str, **match: str) -> float | None:
        if self.first is None or not self.seconds:
            return None
        now, before = self.second.total(name, **match), self.first.total(name, **match)
        return now - before if now >= before else now  # a restart between the reads starts from 0


def summarize(status: Mapping[str, Any], first: Reading | None, second: Reading, seconds: float | None,
              endpoint: str) -> dict[str, Any]:
    """What `headwater status` shows, as plain data: `--json` prints it, `render` lays it out. `first` and
    `second` are reads of /metrics `seconds` apart (no rates when `first` is None)."""
    w = _Window(first, second, seconds)
    return {
        "endpoint": endpoint,
        "reachable": True,
        "ready": bool(status.get("ready")),
        "version": status.get("version"),
        "config": status.get("config"),
        "uptime_seconds": status.get("uptime_seconds"),
        "window_seconds": seconds if first is not None else None,
        "ingest": {
            "spans": w.counter("headwater_receiver_accepted_items_total", signal="traces"),
            "data_points": w.counter("headwater_receiver_accepted_items_total", signal="metrics"),
        },
        "refused": _refused(w),
        "sampling": _sampling(w),
        "remote_write": [_remote_write(w, name, status.get("uptime_seconds"))
                         for name in second.label_values("headwater_remote_write_samples_sent_total", "exporter")],
        "trace_exporters": [_trace_exporter(w, name) for name in dict.fromkeys(
            [*second.label_values("headwater_exporter_sent_spans_total", "exporter"),
             *second.label_values("headwater_exporter_failed_spans_total", "exporter")])],
        "recent_problems": list(status.get("recent_problems") or []),
    }


def _refused(w: _Window) -> dict[str, list[dict[str, Any]]]:
    """Requests refused whole by (signal, reason), and items refused inside accepted requests by signal."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}

    def add(signal: str, reason: str, counter: Mapping[str, float | None]) -> None:
        row = rows.setdefault((signal, reason), {"signal": signal, "reason": reason, "total": 0.0,
                                                 "per_second": None if counter["per_second"] is None else 0.0})
        row["total"] += counter["total"] or 0.0
        if row["per_second"] is not None:
            row["per_second"] += counter["per_second"] or 0.0

    for labels, _value in w.second.select("headwater_admission_refused_requests_total"):
        signal, reason = labels.get("signal", ""), labels.get("reason", "")
        add(signal, reason, w.counter("headwater_admission_refused_requests_total", signal=signal, reason=reason))
    for labels, _value in w.second.select("headwater_receiver_refused_requests_total"):
        status = labels.get("status", "")
        reason = _RECEIVER_REASONS.get(status, f"status_{status}")
        if reason is not None:
            match = {k: labels[k] for k in ("signal", "transport", "status") if k in labels}
            add(labels.get("signal", ""), reason, w.counter("headwater_receiver_refused_requests_total", **match))
    items = [{"signal": signal, **w.counter("headwater_receiver_refused_items_total", signal=signal)}
             for signal in w.second.label_values("headwater_receiver_refused_items_total", "signal")]
    return {"requests": list(rows.values()), "items": items}


def _sampling(w: _Window) -> dict[str, Any] | None:
    r = w.second
    if not r.select("headwater_sampling_effective_rate"):
        return None  # no traces pipeline
    tiers = []
    for tier, rate in r.by("headwater_sampling_effective_rate", "tier").items():
        kept = w.counter("headwater_sampling_kept_spans_total", tier=tier)
        dropped = w.counter("headwater_sampling_dropped_spans_total", tier=tier)
        spans_in = {"total": kept["total"] + dropped["total"],
                    "per_second": None if kept["per_second"] is None or dropped["per_second"] is None
                    else kept["per_second"] + dropped["per_second"]}
        tiers.append({"tier": tier, "rate": rate, "spans_in": spans_in, "spans_kept": kept})
    return {
        "tiers": tiers,
        "buffered_traces": r.total("headwater_sampling_buffered_traces"),
        "buffered_bytes": r.total("headwater_sampling_buffered_bytes"),
        "decision_lag_seconds": r.total("headwater_sampling_decision_lag_seconds"),
        "dropped_spans_by_reason": r.by("headwater_sampling_dropped_spans_by_reason_total", "reason"),
    }


def _latency(w: _Window, exporter: str) -> dict[str, Any]:
    """Mean request-to-answer time over the window when requests were answered in it, else since start."""
    count = w.delta("headwater_sender_latency_seconds_count", exporter=exporter)
    if count:
        total = w.delta("headwater_sender_latency_seconds_sum", exporter=exporter) or 0.0
        return {"mean_seconds": total / count, "over": "window", "requests": count}
    count = w.second.total("headwater_sender_latency_seconds_count", exporter=exporter)
    if count:
        return {"mean_seconds": w.second.total("headwater_sender_latency_seconds_sum", exporter=exporter) / count,
                "over": "since_start", "requests": count}
    return {"mean_seconds": None, "over": None, "requests": 0}


def _remote_write(w: _Window, exporter: str, uptime: float | None) -> dict[str, Any]:
    """One endpoint. Samples leave once per flush (batch.flush_interval, 5 s by default), so a short window
    often sees none: the average since start goes beside the window's rate."""
    r = w.second
    in_use = [labels.get("protocol") for labels, value in r.select("headwater_remote_write_protocol", exporter=exporter)
              if value == 1]
    statuses = r.by("headwater_remote_write_requests_total", "status", exporter=exporter)
    failed_statuses = [s for s in statuses if not s.startswith("2")]
    errors_total = sum(statuses[s] for s in failed_statuses)
    deltas = [w.delta("headwater_remote_write_requests_total", exporter=exporter, status=s) for s in failed_statuses]
    errors_rate = (None if w.first is None or not w.seconds
                   else sum(d or 0.0 for d in deltas) / w.seconds)
    sent = w.counter("headwater_remote_write_samples_sent_total", exporter=exporter)
    return {
        "exporter": exporter,
        "protocol": in_use[0] if in_use else None,
        "queue": {"memory_bytes": r.total("headwater_queue_bytes", exporter=exporter, medium="memory"),
                  "disk_bytes": r.total("headwater_queue_bytes", exporter=exporter, medium="disk"),
                  "oldest_age_seconds": r.total("headwater_queue_oldest_age_seconds", exporter=exporter)},
        "samples_sent": {**sent, "average_per_second": sent["total"] / uptime if uptime else None},
        "latency": _latency(w, exporter),
        "request_errors": {"total": errors_total, "per_second": errors_rate,
                           "by_status": {s: statuses[s] for s in failed_statuses}},
        "retries": r.by("headwater_sender_retries_total", "reason", exporter=exporter),
        "samples_dropped": r.by("headwater_remote_write_samples_dropped_total", "reason", exporter=exporter),
        "samples_failed": r.total("headwater_remote_write_samples_failed_total", exporter=exporter),
        "concurrency": r.total("headwater_sender_concurrency", exporter=exporter),
        "circuit_open": r.total("headwater_sender_circuit_open", exporter=exporter) >= 1,
    }


def _trace_exporter(w: _Window, exporter: str) -> dict[str, Any]:
    return {
        "exporter": exporter,
        "spans_sent": w.counter("headwater_exporter_sent_spans_total", exporter=exporter),
        "spans_failed": w.second.by("headwater_exporter_failed_spans_total", "reason", exporter=exporter),
        "latency": _latency(w, exporter),
        "retries": w.second.by("headwater_sender_retries_total", "reason", exporter=exporter),
    }


# -- the screen ---------------------------------------------------------------------------------------------


def render(summary: Mapping[str, Any], width: int | None = None) -> str:
    """The summary laid out as text; log lines are cut at `width` columns (a terminal's), whole without one."""
    s = summary
    state = "ready" if s["ready"] else "NOT READY"
    window = s.get("window_seconds")
    rates_note = f"rates over {window:.1f} s" if window else "no rates (--interval 0)"
    lines = [f"headwater {s.get('version') or '?'} at {s['endpoint']}: {state}, up {_duration(s.get('uptime_seconds'))}"
             f"; {rates_note}",
             f"config      {s.get('config') or '(not said)'}"]
    spans, points = s["ingest"]["spans"], s["ingest"]["data_points"]
    lines.append(f"in          {_per_second(spans, 'spans')}, {_per_second(points, 'data points')}")
    lines.extend(_render_refused(s["refused"]))
    if s["sampling"] is not None:
        lines.extend(_render_sampling(s["sampling"]))
    else:
        lines.append("sampling    off (no traces pipeline)")
    if s["remote_write"]:
        lines.append("remote write")
        for rw in s["remote_write"]:
            lines.extend(_render_remote_write(rw))
    if s["trace_exporters"]:
        lines.append("traces out")
        for te in s["trace_exporters"]:
            failed = sum(te["spans_failed"].values())
            extra = f", latency {_latency_text(te['latency'])}" if te["latency"]["requests"] else ""
            lines.append(f"  {te['exporter']:<12}sent {_per_second(te['spans_sent'], 'spans')}, "
                         f"failed {_count(failed)}{extra}")
    problems = s["recent_problems"]
    if problems:
        shown = problems[-RECENT_PROBLEMS_SHOWN:]
        more = f", {len(problems) - len(shown)} older in --json" if len(problems) > len(shown) else ""
        lines.append(f"recent warnings and errors (newest last{more})")
        lines.extend(_clip("  " + _problem_text(p), width) for p in shown)
    else:
        lines.append("recent warnings and errors: none")
    return "\n".join(lines) + "\n"


def _render_refused(refused: Mapping[str, Any]) -> list[str]:
    parts = []
    for row in refused["requests"]:
        if row["total"]:
            parts.append(f"{row['signal']} {row['reason']} {_count(row['total'])}"
                         + (f" ({_rate(row['per_second'])}/s)" if row["per_second"] else ""))
    for row in refused["items"]:
        if row["total"]:
            parts.append(f"{row['signal']} invalid items {_count(row['total'])}")
    return [f"refused     {', '.join(parts) if parts else 'nothing'} since start"]


def _render_sampling(sampling: Mapping[str, Any]) -> list[str]:
    lines = [f"sampling    {'tier':<12}{'in/s':>10}{'kept/s':>10}{'rate':>8}{'in total':>14}{'kept total':>14}"]
    for t in sampling["tiers"]:
        lines.append(f"            {t['tier']:<12}{_rate(t['spans_in']['per_second']):>10}"
                     f"{_rate(t['spans_kept']['per_second']):>10}{_ratio(t['rate']):>8}"
                     f"{_count(t['spans_in']['total']):>14}{_count(t['spans_kept']['total']):>14}")
    lines.append(f"            buffered {_count(sampling['buffered_traces'])} traces, "
                 f"{_bytes(sampling['buffered_bytes'])}; decision lag {_seconds(sampling['decision_lag_seconds'])}")
    drops = {k: v for k, v in sampling["dropped_spans_by_reason"].items() if v}
    if drops:
        lines.append("            spans dropped: " + ", ".join(f"{k} {_count(v)}" for k, v in drops.items()))
    return lines


def _render_remote_write(rw: Mapping[str, Any]) -> list[str]:
    q = rw["queue"]
    circuit = ", CIRCUIT OPEN (probing only)" if rw["circuit_open"] else ""
    first = (f"  {rw['exporter']:<12}{rw['protocol'] or 'no format yet'}, queue {_bytes(q['memory_bytes'])} in memory + "
             f"{_bytes(q['disk_bytes'])} on disk, oldest {_seconds(q['oldest_age_seconds'])}, "
             f"concurrency {_count(rw['concurrency'])}{circuit}")
    sent = rw["samples_sent"]
    average = f": {_rate(sent['average_per_second'])}/s on average" if sent["average_per_second"] is not None else ""
    sent_text = (f"{_rate(sent['per_second'])} samples/s ({_count(sent['total'])} since start{average})"
                 if sent["per_second"] is not None else f"{_count(sent['total'])} samples since start{average}")
    second = f"  {'':<12}sent {sent_text}, latency {_latency_text(rw['latency'])}"
    errors = rw["request_errors"]
    by_status = ", ".join(f"{k} {_count(v)}" for k, v in errors["by_status"].items() if v)
    dropped = {k: v for k, v in rw["samples_dropped"].items() if v}
    third = (f"  {'':<12}errors: requests {_rate(errors['per_second'])}/s ({_count(errors['total'])} since start"
             f"{': ' + by_status if by_status else ''}), retries {_count(sum(rw['retries'].values()))}, "
             f"samples dropped {_count(sum(dropped.values()))}"
             f"{' (' + ', '.join(f'{k} {_count(v)}' for k, v in dropped.items()) + ')' if dropped else ''}, "
             f"failed {_count(rw['samples_failed'])}")
    return [first, second, third]


def _problem_text(problem: Mapping[str, Any]) -> str:
    fields = " ".join(f"{k}={v}" for k, v in (problem.get("fields") or {}).items())
    repeated = f" (x{problem['repeated']})" if problem.get("repeated") else ""
    clock = str(problem.get("time", ""))[11:19]
    return f"{clock} {problem.get('level', '')} {problem.get('message', '')}{repeated} {fields}".rstrip()


def _clip(line: str, width: int | None) -> str:
    return line if width is None or len(line) <= width else line[:max(1, width - 1)] + "…"


def _latency_text(latency: Mapping[str, Any]) -> str:
    if latency["mean_seconds"] is None:
        return "none yet"
    where = "" if latency["over"] == "window" else " since start"
    return f"{_seconds(latency['mean_seconds'])} mean{where}"


def _per_second(counter: Mapping[str, float | None], unit: str) -> str:
    """`12.5 spans/s (1,234 since start)`, or the total alone without a rate."""
    if counter["per_second"] is None:
        return f"{_count(counter['total'])} {unit} since start"
    return f"{_rate(counter['per_second'])} {unit}/s ({_count(counter['total'])} since start)"


def _rate(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 100 or value == 0 else f"{value:.1f}"


def _ratio(value: float) -> str:
    """At least two decimals (0.50, 1.00), more where the rate has them (0.005)."""
    text = f"{value:.3g}"
    return f"{value:.2f}" if "e" in text or len(text.partition(".")[2]) < 2 else text


def _count(value: float) -> str:
    return f"{value:,.0f}"


def _bytes(value: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _seconds(value: float) -> str:
    if value < 1:
        return f"{value * 1000:.0f} ms"
    return f"{value:.1f} s" if value < 60 else _duration(value)


def _duration(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "?"
    total = int(value)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "m"), (seconds, "s")]
    shown = [f"{n}{u}" for n, u in parts if n][:2]
    return "".join(shown) or "0s"


# -- the command --------------------------------------------------------------------------------------------


def read_agent(base: str, interval: float, timeout: float, *, clock: Callable[[], float] = time.monotonic,
               sleep: Callable[[float], None] = time.sleep) -> tuple[dict[str, Any], Reading | None, Reading, float | None]:
    """(/status, first /metrics read or None, second read, seconds between them)."""
    code, body = fetch(f"{base}/status", timeout, MAX_STATUS_BYTES)
    if code != 200:
        raise StatusError(f"{base}/status answered HTTP {code}; is a Headwater agent listening there?", EXIT_UNREACHABLE)
    try:
        status = json.loads(body)
    except ValueError:
        raise StatusError(f"{base}/status did not answer JSON; is a Headwater agent listening there?",
                          EXIT_UNREACHABLE) from None
    first, first_at = (_read_metrics(base, timeout), clock()) if interval > 0 else (None, None)
    if first is not None:
        sleep(interval)
    second = _read_metrics(base, timeout)
    seconds = clock() - first_at if first_at is not None else None
    return status, first, second, seconds


def _read_metrics(base: str, timeout: float) -> Reading:
    code, body = fetch(f"{base}/metrics", timeout, MAX_METRICS_BYTES)
    if code != 200:
        raise StatusError(f"{base}/metrics answered HTTP {code}", EXIT_UNREACHABLE)
    try:
        return Reading.parse(body.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise StatusError(f"{base}/metrics is not Prometheus text: {exc}", EXIT_UNREACHABLE) from None


def main(config: str | None, endpoint: str | None, as_json: bool, interval: float = 1.0, timeout: float = 5.0,
         *, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """`headwater status`; returns the exit status."""
    if not (interval >= 0 and math.isfinite(interval)) or not (timeout > 0 and math.isfinite(timeout)):
        print(f"headwater status: --interval must be >= 0 and --timeout > 0 (got {interval} and {timeout})", file=err)
        return EXIT_USAGE
    try:
        base, source = resolve_endpoint(endpoint, config)
    except StatusError as exc:
        print(f"headwater status: {exc}", file=err)
        return exc.code
    try:
        status, first, second, seconds = read_agent(base, interval, timeout)
    except StatusError as exc:
        if as_json:
            print(json.dumps({"endpoint": base.removeprefix("http://"), "reachable": False, "ready": False,
                              "error": str(exc)}), file=out)
        print(f"headwater status: {exc} (the endpoint is {source}; is the agent running?)", file=err)
        return exc.code
    summary = summarize(status, first, second, seconds, base.removeprefix("http://"))
    if as_json:
        print(json.dumps(summary, indent=2), file=out)
    else:
        out.write(render(summary, shutil.get_terminal_size().columns if out.isatty() else None))
    if not summary["ready"]:
        print("headwater status: the agent answers but is not ready (starting, or stopping)", file=err)
        return EXIT_NOT_READY
    return EXIT_READY
