"""The shipped Grafana dashboards: current panel types, variables instead of hard-coded jobs
and data sources, and only metrics the exporter emits. (Whether every panel returns data is
proven against a real Prometheus in tests/e2e.)"""

from __future__ import annotations

import json
import re

import pytest
from celery_stalk.collectors import CATALOG

from tests.alerts.promql import exposed_names, series_names
from tests.harness import ROOT

DASHBOARDS = sorted((ROOT / "dashboards").glob("*.json"))
MODERN_PANELS = {"row", "timeseries", "stat", "bargauge", "table", "state-timeline"}


def load(path):
    return json.loads(path.read_text())


def panels(dashboard):
    for p in dashboard["panels"]:
        yield p
        yield from p.get("panels", [])


def test_there_is_an_overview_and_a_drill_down_per_task_queue_and_worker():
    assert {p.stem for p in DASHBOARDS} == {
        "celery-overview", "celery-task", "celery-queue", "celery-worker",
        "celery-beat-workflows"}
    uids = [load(p)["uid"] for p in DASHBOARDS]
    assert len(set(uids)) == len(uids)


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_panels_are_current_types_on_the_datasource_variable(path):
    dashboard = load(path)
    ids = [p["id"] for p in panels(dashboard)]
    assert len(set(ids)) == len(ids)
    for p in panels(dashboard):
        assert p["type"] in MODERN_PANELS, f"{p['title']}: {p['type']} is not a current panel"
        pos = p["gridPos"]
        assert pos["x"] + pos["w"] <= 24, p["title"]
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}", p["title"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_variables_select_the_job_queue_task_and_worker(path):
    variables = {v["name"]: v for v in load(path)["templating"]["list"]}
    assert set(variables) == {"datasource", "job", "queue", "task", "worker"}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("job", "queue", "task", "worker"):
        v = variables[name]
        assert v["type"] == "query" and v["includeAll"] and v["multi"], name
        assert v["datasource"]["uid"] == "${datasource}"
    # "All" jobs expands to the jobs that run celery-stalk, never every job in Prometheus
    assert "allValue" not in variables["job"]
    assert "celery_stalk_build_info" in variables["job"]["definition"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_every_query_selects_through_the_job_variable_and_names_no_job(path):
    text = path.read_text()
    assert not re.search(r'job\s*=~?\s*\\?"(?!\$job)', text), "hard-coded job"
    for p in panels(load(path)):
        for t in p.get("targets", []):
            for selector in re.findall(r"\{[^}]*\}", re.sub(r'"[^"]*\{\{[^"]*"', "", t["expr"])):
                assert 'job=~"$job"' in selector, f"{p['title']}: {t['expr']}"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_dashboards_read_only_metrics_the_exporter_emits(path):
    emitted = exposed_names(CATALOG) | {"up"}
    dashboard = load(path)
    queries = [t["expr"] for p in panels(dashboard) for t in p.get("targets", [])]
    queries += [v["definition"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    for expr in queries:
        unknown = series_names(re.sub(r"label_values\((\w+).*", r"\1", expr)) - emitted
        assert not unknown, f"{unknown} in {expr}"


def test_the_overview_has_what_on_call_looks_at_first():
    titles = {p["title"] for p in panels(load(ROOT / "dashboards" / "celery-overview.json"))}
    for needed in ("Throughput", "Failure ratio by task", "Failures by exception",
                   "Run time by task", "Messages waiting by queue", "Queue wait by queue",
                   "Workers", "Workers lost", "Broker reachable", "Events applied by type"):
        assert needed in titles, needed
