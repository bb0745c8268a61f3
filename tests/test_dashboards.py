"""configs/grafana: the committed dashboard JSON is what configs/grafana/dashboards.py makes, every panel reads
the `${datasource}` variable, and the PromQL name tokenizer the end-to-end test relies on (tests/promql_names.py)
reads names the way PromQL does. Whether every panel returns data is tests/test_e2e_dashboards.py."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.promql_names import fill, metric_names

ROOT = Path(__file__).resolve().parent.parent
GRAFANA = ROOT / "configs" / "grafana"


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("headwater_dashboards", GRAFANA / "dashboards.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def committed() -> dict[str, dict]:
    return {path.name: json.loads(path.read_text(encoding="utf-8")) for path in sorted(GRAFANA.glob("*.json"))}


def panels(dashboard: dict) -> list[dict]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def test_the_committed_json_is_what_the_generator_makes():
    module = generator()
    assert sorted(committed()) == sorted(module.DASHBOARDS), "a JSON file without code, or code without its file"
    for name, build in module.DASHBOARDS.items():
        assert (GRAFANA / name).read_text(encoding="utf-8") == module.render(build), (
            f"configs/grafana/{name} differs from what dashboards.py makes: run `make dashboards`")


def test_the_generators_check_mode_fails_on_a_stale_file_and_passes_on_fresh_ones(tmp_path):
    run = lambda: subprocess.run([sys.executable, str(GRAFANA / "dashboards.py"), "--check", "--out", str(tmp_path)],  # noqa: E731
                                 capture_output=True, text=True, timeout=60)
    stale = run()
    assert stale.returncode == 1 and "make dashboards" in stale.stderr
    subprocess.run([sys.executable, str(GRAFANA / "dashboards.py"), "--out", str(tmp_path)], check=True,
                   capture_output=True, timeout=60)
    assert run().returncode == 0


@pytest.mark.parametrize("name", sorted(committed()))
def test_every_panel_and_variable_reads_the_datasource_variable(name):
    dashboard = committed()[name]
    variables = dashboard["templating"]["list"]
    assert variables[0] == {**variables[0], "name": "datasource", "type": "datasource", "query": "prometheus"}
    expected = {"type": "prometheus", "uid": "${datasource}"}
    for panel in panels(dashboard):
        assert panel["datasource"] == expected, panel["title"]
        assert panel["targets"] and all(t["datasource"] == expected for t in panel["targets"]), panel["title"]
    assert all(v["datasource"] == expected for v in variables[1:])


@pytest.mark.parametrize("name", sorted(committed()))
def test_panels_have_unique_ids_and_do_not_overlap(name):
    dashboard = committed()[name]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    taken: set[tuple[int, int]] = set()
    for p in dashboard["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        cells = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & taken, f"{p['title']} overlaps another panel"
        taken |= cells


@pytest.mark.parametrize("name", sorted(committed()))
def test_every_query_names_metrics_and_fills_with_known_macros_only(name):
    dashboard = committed()[name]
    variables = {v["name"]: ".*" for v in dashboard["templating"]["list"]}
    for panel in panels(dashboard):
        for t in panel["targets"]:
            assert metric_names(t["expr"]), f"{panel['title']}: no metric in {t['expr']!r}"
            assert "$" not in fill(t["expr"], variables), t["expr"]


@pytest.mark.parametrize("expr, names", [
    ("up", {"up"}),
    ('rate(http_requests_total{job=~"$job", path="/a{b}"}[$__rate_interval])', {"http_requests_total"}),
    ("histogram_quantile(0.99, sum by (le, job) (rate(x_bucket[5m])))", {"x_bucket"}),
    ("sum(rate(a_total[1m])) by (instance) / on (instance) group_left (node) b", {"a_total", "b"}),
    ("topk(5, x) or y offset 1h30m unless z", {"x", "y", "z"}),
    ("count_values without (le) (\"v\", w)", {"w"}),
    ('{__name__="only_by_matcher", job="j"}', {"only_by_matcher"}),
    ("max_over_time(deriv(m[5m])[30m:1m]) > bool 0.5e3", {"m"}),
    ('label_replace(k, "dst", "$1", "src", "(.*)")', {"k"}),
    ("sum by (service_name) (rate(c{a=\"x\\\"y\"}[$__rate_interval])) * 0 + 1", {"c"}),
    ("avg without (instance) (namespace:metric:rate5m)", {"namespace:metric:rate5m"}),
])
def test_metric_names_are_read_out_of_promql_as_promql_reads_them(expr, names):
    assert metric_names(expr) == names


def test_variables_and_macros_are_filled_and_an_unknown_macro_is_an_error():
    assert fill('rate(x{job=~"$job", i=~"${instance}"}[$__rate_interval]) [$__range_s]',
                {"job": "a|b", "instance": ".*"}) == 'rate(x{job=~"a|b", i=~".*"}[1m]) [300]'
    with pytest.raises(KeyError, match=r"\$__nope"):
        fill("x[$__nope]", {})
