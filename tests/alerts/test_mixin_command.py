"""`celery-stalk mixin`: the rules and dashboards for another job and other thresholds, from
the installed package, checked by promtool; bad settings fail with one line each."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml
from celery_stalk.mixin import RULES, RUNBOOK, render
from celery_stalk.mixin.config import DEFAULT, TEST, ConfigError, overrides

from tests.harness import ROOT


def mixin(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "celery_stalk", "mixin", *args],
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})


def alerting(rules_text: str) -> dict[str, dict]:
    groups = yaml.safe_load(rules_text)["groups"]
    return {r["alert"]: r for g in groups for r in g["rules"] if "alert" in r}


def test_selector_and_thresholds_from_flags_and_a_file_reach_every_file(tmp_path):
    settings = tmp_path / "settings.yml"
    settings.write_text("failure-fast-ratio: 0.3\nexporter_down_for: 4m\nreplica_labels: [instance, replica]\n")
    out = tmp_path / "out"
    result = mixin("--selector", 'job="celery"', "--config", str(settings),
                   "--exporter-down-for", "3m", "--out", str(out))
    assert result.returncode == 0, result.stderr
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert written == sorted(render(DEFAULT, compat=())), written  # no compat unless asked

    rules_text = (out / RULES).read_text()
    rules = alerting(rules_text)
    assert 'job="celery-stalk"' not in rules_text
    assert 'absent(up{job="celery"})' in rules["CeleryExporterDown"]["expr"]
    assert rules["CeleryExporterDown"]["for"] == "3m"  # the flag wins over the file
    assert ">= 0.3" in rules["CeleryTaskFailureRatioHigh"]["expr"]  # from the file
    assert "max without (instance, replica)" in rules["CeleryQueueNoConsumers"]["expr"]
    assert "max without (instance, replica)" in (out / "dashboards/celery-overview.json").read_text()
    runbook = (out / RUNBOOK).read_text()
    assert "at least 30% of a task's runs fail" in runbook and 'job="celery"' in runbook
    for path in out.glob("dashboards/*.json"):
        json.loads(path.read_text())

    check = subprocess.run([shutil.which("promtool"), "check", "rules", str(out / RULES)],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_compat_rules_are_written_on_request_with_the_selector(tmp_path):
    result = mixin("--selector", 'job="celery"', "--compat", "celery-exporter,flower",
                   "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    for name in ("celery-exporter", "flower"):
        text = (tmp_path / f"alerts/compat/{name}.rules.yml").read_text()
        assert 'job="celery"' in text and 'job="celery-stalk"' not in text
        check = subprocess.run([shutil.which("promtool"), "check", "rules",
                                str(tmp_path / f"alerts/compat/{name}.rules.yml")],
                               capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
    bad = mixin("--compat", "flower,prometheus-celery", "--out", str(tmp_path / "x"))
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    assert "'prometheus-celery' unknown: choose from celery-exporter, flower" in bad.stderr
    assert not (tmp_path / "x").exists()


def test_check_reports_drift_and_writes_nothing(tmp_path):
    assert mixin("--out", str(tmp_path)).returncode == 0
    unchanged = mixin("--out", str(tmp_path), "--check")
    assert unchanged.returncode == 0 and unchanged.stdout == ""

    rules = tmp_path / RULES
    drifted = mixin("--out", str(tmp_path), "--check", "--backlog-for", "20m")
    assert drifted.returncode == 1
    assert f"differs {rules}" in drifted.stdout.splitlines()
    assert rules.read_text() == render(DEFAULT)[RULES]


@pytest.mark.parametrize("args, needles", [
    (["--failure-fast-ratio", "2", "--backlog-for", "ten minutes"],
     ["failure_fast_ratio: 2.0 must be a fraction", "backlog_for: 'ten minutes' is not a duration"]),
    (["--failure-min-tasks", "many"], ["failure_min_tasks: 'many' is not a whole number"]),
    (["--selector", "{job=\"celery\"}"], ["selector: '{job=\"celery\"}': give label matchers without braces"]),
    (["--replica-labels", "instance,pod-name"], ["replica_labels: ['instance', 'pod-name']: give label names"]),
    (["--failure-slow-short-window", "1h"], ["failure_slow_short_window: 1h must not be longer than failure_slow_window"]),
])
def test_bad_settings_fail_with_one_line_each_and_write_nothing(tmp_path, args, needles):
    result = mixin(*args, "--out", str(tmp_path / "out"))
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == len(needles), result.stderr
    for needle in needles:
        assert any(needle in line for line in lines), (needle, lines)
    assert all(line.startswith("celery-stalk: error: ") for line in lines)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("content, needle", [
    ("no_such_setting: 1\n", "no_such_setting: no such setting"),
    ("", None),
    ("exporter_down_for: [1, 2]\n", "exporter_down_for: '[1, 2]' is not a duration"),
    ("- a list\n", "must be a mapping"),
    ("selector: [unclosed\n", "is not valid YAML at line"),
])
def test_a_bad_settings_file_fails_with_one_line(tmp_path, content, needle):
    settings = tmp_path / "settings.yml"
    settings.write_text(content)
    result = mixin("--config", str(settings), "--out", str(tmp_path / "out"))
    if needle is None:  # an empty file is no settings at all
        assert result.returncode == 0, result.stderr
        return
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_help_lists_every_setting_with_its_default():
    result = mixin("--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for name in vars(DEFAULT):
        assert "--" + name.replace("_", "-") in text, name
    assert "[default: 2m]" in text and "[default: instance,pod]" in text


def test_overrides_report_every_problem_at_once():
    with pytest.raises(ConfigError) as caught:
        overrides(DEFAULT, {"nope": 1, "backlog_min_messages": 1.5, "failure_slow_ratio": "x"})
    assert len(caught.value.problems) == 3
    assert overrides(DEFAULT, {}) == DEFAULT
    assert overrides(DEFAULT, {"replica-labels": "instance"}).replica_labels == ("instance",)
    assert TEST.problems() == []


def test_the_checkout_module_reports_no_drift():
    result = subprocess.run([sys.executable, "-m", "celery_stalk.mixin", "--check"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
