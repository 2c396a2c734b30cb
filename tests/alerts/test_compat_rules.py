"""The compatibility rules (alerts/compat/): valid for promtool, unit-tested, and recording
exactly the names and labels that celery-exporter and Flower expose and that their dashboards
and alerts query, as listed in tests/alerts/upstream_metrics.yml."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from celery_stalk.collectors import CATALOG
from celery_stalk.mixin import render
from celery_stalk.mixin.compat import COMPAT, compat_path, compat_rule_file
from celery_stalk.mixin.config import DEFAULT

from tests.alerts.promql import exposed_names, series_names
from tests.alerts.test_rules import promtool
from tests.harness import ROOT

FACTS = yaml.safe_load((Path(__file__).parent / "upstream_metrics.yml").read_text())
UNIT_TESTS = sorted((ROOT / "alerts" / "compat" / "tests").glob("*.yml"))
GUIDE = ROOT / "docs" / "migrating.md"


def rules(tool: str) -> list[dict]:
    groups = yaml.safe_load((ROOT / compat_path(tool)).read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def series_of(entry: dict) -> set[str]:
    """The names Prometheus stores for one exposed metric."""
    if entry["type"] == "histogram":
        return {f"{entry['metric']}_{part}" for part in ("bucket", "sum", "count")}
    return {entry["metric"]}


def test_there_is_a_facts_section_and_a_rule_file_for_each_tool():
    assert set(FACTS) == set(COMPAT) == {"celery-exporter", "flower"}
    for tool in COMPAT:
        assert (ROOT / compat_path(tool)).exists(), f"{compat_path(tool)}: run python -m celery_stalk.mixin"
        assert all(re.fullmatch(r"[0-9a-f]{40}", sha) for sha in FACTS[tool]["refs"].values())


@pytest.mark.parametrize("tool", sorted(COMPAT))
def test_promtool_check_rules_passes(tool):
    result = promtool("check", "rules", compat_path(tool))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules(tool))} rules found" in result.stdout


@pytest.mark.parametrize("unit_test", UNIT_TESTS, ids=lambda p: p.name)
def test_promtool_unit_tests_pass(unit_test: Path):
    result = promtool("test", "rules", str(unit_test))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_each_tool_has_a_unit_test():
    assert {p.stem for p in UNIT_TESTS} == set(COMPAT)


@pytest.mark.parametrize("tool", sorted(COMPAT))
def test_every_mapped_series_their_dashboards_and_alerts_query_is_recorded(tool):
    recorded = {rule["record"] for rule in rules(tool)}
    for entry in FACTS[tool]["queried"]:
        if entry.get("mapped", True):
            assert entry["metric"] in recorded, f"{tool}: nothing records {entry['metric']}"
        else:
            assert entry["metric"] not in recorded, entry


@pytest.mark.parametrize("tool", sorted(COMPAT))
def test_records_only_their_names_with_only_their_label_names(tool):
    exposed = {}
    for entry in FACTS[tool]["exposed"]:
        for name in series_of(entry):
            exposed[name] = set(entry["labels"]) | ({"le"} if name.endswith("_bucket") else set())
    for rule in rules(tool):
        name = rule["record"]
        assert name in exposed, f"{tool} has no series {name}"
        assert set(rule["labels"]) - {"job"} <= exposed[name], rule
        assert rule["labels"]["job"] == FACTS[tool]["compat_job"]


@pytest.mark.parametrize("tool", sorted(COMPAT))
def test_reads_only_what_celery_stalk_emits_through_the_selector(tool):
    ours = exposed_names(CATALOG)
    for rule in rules(tool):
        read = series_names(rule["expr"])
        assert read and read <= ours, (rule["record"], read - ours)
        selectors = re.findall(r"\b[a-z_]+\{([^}]*)\}", rule["expr"])
        assert selectors and all(DEFAULT.selector in s for s in selectors), rule["expr"]
        # our own label required: a compat series (which lacks it) is never read back
        assert all(re.search(r'\b(task|worker|queue)!=""', s) for s in selectors), rule["expr"]


def test_compat_series_stay_out_of_our_own_rules_and_dashboards():
    """Ours select job="celery-stalk" (rules) or the jobs of celery_stalk_build_info
    (dashboards); compat series carry another job and never that metric."""
    ours = re.fullmatch(r'job="([^"]+)"', DEFAULT.selector).group(1)
    assert ours not in {FACTS[tool]["compat_job"] for tool in COMPAT}
    assert all(rule["record"] != "celery_stalk_build_info" for t in COMPAT for rule in rules(t))
    for path in sorted((ROOT / "dashboards").glob("*.json")):
        text = path.read_text()
        assert "label_values(celery_stalk_build_info, job)" in text, path.name


def test_render_selects_compat_files_by_name():
    assert not any("compat" in path for path in render(DEFAULT, compat=()))
    only = render(DEFAULT, compat=("flower",))
    assert compat_path("flower") in only and compat_path("celery-exporter") not in only
    with pytest.raises(ValueError, match="choose from celery-exporter, flower"):
        compat_rule_file("prometheus-celery", DEFAULT)


def test_the_migration_guide_names_what_cannot_be_mapped_and_why():
    guide = GUIDE.read_text()
    unmappable = guide.split("## What cannot be mapped", 1)[1].split("\n## ", 1)[0]
    for tool in COMPAT:
        for entry in FACTS[tool]["exposed"]:
            if entry.get("mapped", True):
                assert f"`{entry['metric']}`" in guide, f"{entry['metric']} missing from the guide"
            else:
                assert f"`{entry['metric']}`" in unmappable, entry["metric"]
        for sha in FACTS[tool]["refs"].values():
            assert sha[:12] in guide, f"the guide does not cite {tool} at {sha[:12]}"


def test_the_readme_links_the_guide_from_its_first_screen():
    first_screen = "\n".join((ROOT / "README.md").read_text().splitlines()[:15])
    assert "(docs/migrating.md)" in first_screen
