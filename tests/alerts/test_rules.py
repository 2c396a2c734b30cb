"""The shipped rule file: in sync with its generator, valid for promtool, unit-tested on both
edges of every alert, documented, and reading only metrics the exporter emits."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from celery_stalk.collectors import CATALOG
from celery_stalk.mixin import RULES, render
from celery_stalk.mixin.alerts import alert_table, alerts
from celery_stalk.mixin.config import DEFAULT, TEST, seconds

from tests.alerts.promql import exposed_names, series_names
from tests.harness import ROOT

RULE_FILE = ROOT / RULES
UNIT_TESTS = sorted((ROOT / "alerts" / "tests").glob("*.yml"))
README = ROOT / "README.md"


def promtool(*args: str) -> subprocess.CompletedProcess:
    binary = shutil.which("promtool")
    assert binary, "promtool not found: install the Debian package prometheus"
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=120, cwd=ROOT)


def rules() -> list[dict]:
    groups = yaml.safe_load(RULE_FILE.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def alerting_rules() -> list[dict]:
    return [rule for rule in rules() if "alert" in rule]


def test_committed_files_are_what_the_generator_writes():
    generated = render(DEFAULT)
    for path, text in generated.items():
        committed = ROOT / path
        assert committed.exists(), f"{path} missing: run python -m celery_stalk.mixin"
        assert committed.read_text() == text, (
            f"{path} drifted from celery_stalk/mixin: run python -m celery_stalk.mixin")
    shipped = {str(p.relative_to(ROOT)) for p in (ROOT / "dashboards").glob("*.json")}
    assert shipped == {p for p in generated if p.startswith("dashboards/")}, "stray dashboard"


def test_promtool_check_rules_passes():
    result = promtool("check", "rules", str(RULE_FILE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout


def test_rules_from_the_test_config_pass_promtool_too(tmp_path):
    path = tmp_path / "rules.yml"
    path.write_text(render(TEST)[RULES])
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("unit_test", UNIT_TESTS, ids=lambda p: p.name)
def test_promtool_unit_tests_pass(unit_test: Path):
    result = promtool("test", "rules", str(unit_test))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def _duration(text: str) -> int:
    return sum(seconds(part) for part in re.findall(r"\d+[smhd]", text))


def test_every_alert_is_tested_quiet_just_before_and_firing_at_its_edge():
    covered = set()
    for path in UNIT_TESTS:
        spec = yaml.safe_load(path.read_text())
        step = _duration(spec.get("evaluation_interval", "1m"))
        for case in spec["tests"]:
            evals: dict[str, dict[int, bool]] = {}
            for check in case.get("alert_rule_test", []):
                evals.setdefault(check["alertname"], {})[_duration(check["eval_time"])] = bool(
                    check.get("exp_alerts"))
            for name, timeline in evals.items():
                if any(fires and timeline.get(t - step) is False for t, fires in timeline.items()):
                    covered.add(name)
    missing = {rule["alert"] for rule in alerting_rules()} - covered
    assert not missing, f"no promtool test shows them quiet one evaluation before firing: {missing}"


def test_every_alert_has_severity_summary_templated_description_and_runbook():
    runbook = (ROOT / "alerts" / "runbook.md").read_text()
    for rule in alerting_rules():
        name = rule["alert"]
        assert re.fullmatch(r"Celery[A-Z][A-Za-z]+", name), name
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        notes = rule["annotations"]
        assert notes["summary"].strip() and "{{" not in notes["summary"], name
        assert "{{" in notes["description"], f"{name}: description must name what fired"
        assert notes["runbook_url"] == f"{DEFAULT.runbook_url}#{name.lower()}", name
        assert f"\n## {name}\n" in runbook, f"{name} has no runbook section"


def test_alerts_read_only_metrics_the_exporter_emits_or_rules_record():
    recorded = {rule["record"] for rule in rules() if "record" in rule}
    emitted = exposed_names(CATALOG) | {"up"}  # up: Prometheus' own, per scrape target
    for rule in rules():
        unknown = series_names(rule["expr"]) - emitted - recorded
        assert not unknown, f"{rule.get('alert') or rule.get('record')} reads {unknown}"


def test_counters_are_only_read_through_rate_or_increase():
    for rule in rules():
        expr = rule["expr"]
        for func in ("avg_over_time", "min_over_time", "max_over_time", "deriv", "delta"):
            assert not re.search(rf"{func}\(\s*\w+_total\b", expr), (rule, func)


def test_shipped_windows_page_as_fast_as_the_runbook_says():
    """The page times the issue asked for, from the shipped settings (the promtool tests
    prove them on data); a change of a window that breaks one fails here first."""
    d = {name: seconds(getattr(DEFAULT, name)) for name in vars(DEFAULT)
         if name.endswith(("_for", "_window", "_settle", "_lookback"))}
    scrape = 30
    assert scrape + d["broker_unreachable_for"] <= 150  # a total broker outage: 2.5 minutes
    assert scrape + d["exporter_down_for"] <= 180  # a dead exporter: 3 minutes
    assert scrape + d["failure_fast_window"] + d["failure_fast_for"] <= 360  # >= 50% failing
    assert scrape + d["failure_slow_window"] + d["failure_slow_for"] <= 3600  # >= 10%: an hour
    # a 2-minute burst of failures is over before for: runs out (plus the window's tail)
    assert d["failure_fast_for"] > 120
    assert scrape + d["no_consumers_for"] <= 600  # never consumed: 10 minutes
    assert scrape + 60 + d["backlog_for"] <= 900  # growing steadily: 15 minutes
    assert d["worker_lost_window"] <= 900  # a lost worker resolves within 15 minutes
    # the alerts without for: page on events the exporter already debounced (a missed
    # periodic run is counted --beat-grace after its due time)
    assert {r["alert"] for r in alerting_rules() if "for" not in r} == {
        "CeleryWorkerLost", "CeleryTaskTimeLimitHit", "CeleryBeatRunMissed",
        "CeleryBeatDuplicateRuns", "CeleryTaskOrphaned"}
    assert 60 + scrape + d["beat_down_for"] <= 420  # beat down: 7 minutes after a due time
    # orphans page for as long as the lost worker that made them
    assert d["orphaned_window"] == d["worker_lost_window"]


def test_every_symptom_alert_is_aggregated_over_replicas_and_guarded_on_up():
    replicas = ", ".join(DEFAULT.replica_labels)
    for rule in alerting_rules():
        if rule["alert"] == "CeleryExporterDown":  # about the target itself, per target
            continue
        expr = rule["expr"]
        assert expr.startswith(f"max without ({replicas}) ("), rule["alert"]
        assert re.search(rf"and on \(job, {replicas}\)\s+up\{{{re.escape(DEFAULT.selector)}\}} == 1",
                         expr), rule["alert"]


def test_readme_alert_table_is_generated_from_the_rules():
    readme = README.read_text()
    begin, end = "<!-- alerts:begin -->", "<!-- alerts:end -->"
    assert begin in readme and end in readme
    table = readme.split(begin, 1)[1].split(end, 1)[0].strip()
    assert table == alert_table(DEFAULT), "README alert table drifted: paste alert_table()"
    assert len(alerts(DEFAULT)) == len(alerting_rules())
