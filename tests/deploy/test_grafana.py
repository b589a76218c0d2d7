"""deploy/grafana/tollgate.json: a dashboard Grafana can import, whose every query is valid
PromQL. Each panel query (with Grafana's variables given values) becomes a recording rule in a
temporary rules file that `promtool check rules` parses; the metric names the queries use are
checked against a live scrape in test_metrics_names.py.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
import yaml

from kit import DEPLOY

DASHBOARD = DEPLOY / "grafana" / "tollgate.json"
VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$job": ".*", "$instance": ".*"}


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels(dashboard) -> list[dict]:
    out = []
    for p in dashboard["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def queries(dashboard) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and every label_values() variable selector."""
    out = []
    for p in panels(dashboard):
        for t in p.get("targets", []):
            out.append((f"panel {p['id']} ({p['title']}) {t['refId']}", t["expr"]))
    for v in dashboard["templating"]["list"]:
        if v["type"] == "query":
            q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", q)
            assert m, f"variable {v['name']}: unexpected query {q!r}"
            out.append((f"variable {v['name']}", m.group(1)))
    return out


def substitute(expr: str) -> str:
    for k in sorted(VARIABLES, key=len, reverse=True):
        expr = expr.replace(k, VARIABLES[k])
    assert "$" not in expr, f"unknown variable in {expr!r}"
    return expr


def test_dashboard_shape(dashboard):
    assert dashboard["uid"] == "tollgate" and dashboard["title"]
    assert isinstance(dashboard["schemaVersion"], int) and dashboard["schemaVersion"] >= 36
    names = [v["name"] for v in dashboard["templating"]["list"]]
    assert names == ["datasource", "traces", "job", "instance"]
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells = set()
    for p in dashboard["panels"]:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0, (p["title"], g)
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"panel {p['title']} overlaps another"
                cells.add((x, y))
        if p["type"] != "row":
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert p["targets"], p["title"]
            for t in p["targets"]:
                assert t["datasource"] == p["datasource"] and t["expr"].strip()
                assert 'job=~"$job", instance=~"$instance"' in t["expr"], (p["title"], t["expr"])


def test_every_query_is_valid_promql(dashboard, tmp_path):
    promtool = shutil.which("promtool")
    assert promtool, "promtool is not installed (apt-get install prometheus; run.sh does)"
    rules = [{"record": f"dashboard:query_{i}", "expr": substitute(e)}
             for i, (_, e) in enumerate(queries(dashboard))]
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    r = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        where = "\n".join(f"dashboard:query_{i}: {w}" for i, (w, _) in enumerate(queries(dashboard)))
        pytest.fail(f"promtool refused a dashboard query:\n{r.stdout}{r.stderr}\n{where}")
    assert f"SUCCESS: {len(rules)} rules found" in r.stdout


def test_latency_panel_links_to_the_routes_traces(dashboard):
    """The trace link of "Latency by route" goes to Explore on the `traces` data source with a
    TraceQL query on the series' route (the span attribute tollgate sets, tollgate.route)."""
    traces = [v for v in dashboard["templating"]["list"] if v["name"] == "traces"][0]
    assert traces["type"] == "datasource" and traces["query"] == "tempo"
    panel = [p for p in panels(dashboard) if p["title"].startswith("Latency by route")][0]
    (link,) = panel["fieldConfig"]["defaults"]["links"]
    url = link["url"]
    assert url.startswith("/explore?") and "${traces}" in url
    left = json.loads(url.split("left=", 1)[1])
    (query,) = left["queries"]
    assert query["queryType"] == "traceql"
    assert "span.tollgate.route=\"${__field.labels.route}\"" in query["query"]
