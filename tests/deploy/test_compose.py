"""deploy/compose: the file parses, every service has what it needs, every mounted path exists,
and Prometheus's and Alertmanager's configs pass promtool and amtool as the containers see them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy.mixin_outputs import ALERTS, DASHBOARDS, PENDING, PENDING_REASON, dashboard_files
from tests.harness import ROOT

COMPOSE_DIR = ROOT / "deploy" / "compose"
COMPOSE = yaml.safe_load((COMPOSE_DIR / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


def bind_mounts(service: str) -> list[tuple[Path, str]]:
    """(host path, container path) of a service's bind mounts (short syntax)."""
    mounts = []
    for volume in SERVICES[service].get("volumes", []):
        source, target = volume.split(":")[:2]
        assert source.startswith((".", "/")), f"{service}: {volume} is not a bind mount"
        mounts.append(((COMPOSE_DIR / source).resolve(), target))
    return mounts


def container_files(service: str, root: Path) -> Path:
    """The service's mounted files laid out under ``root`` as the container sees them."""
    for source, target in bind_mounts(service):
        if not source.exists():
            continue
        destination = root / target.lstrip("/")
        if source.is_dir():
            shutil.copytree(source, destination)
        else:
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, destination)
    return root


def test_the_stack_has_every_part():
    assert set(SERVICES) >= {"redis", "worker", "producer", "exporter", "prometheus",
                             "alertmanager", "grafana"}
    for name, service in SERVICES.items():
        assert "image" in service or "build" in service, f"{name}: no image and no build"
        for dependency in service.get("depends_on", []):
            assert dependency in SERVICES, f"{name} depends on unknown {dependency}"


def test_our_services_build_from_the_repository_dockerfile():
    for name in ("exporter", "worker", "producer"):
        context = (COMPOSE_DIR / SERVICES[name]["build"]).resolve()
        assert context == ROOT and (context / "Dockerfile").exists(), name


def test_exporter_reads_the_stacks_redis_runs_read_only_and_non_root():
    exporter = SERVICES["exporter"]
    assert exporter["environment"]["CELERY_STALK_BROKER_URL"] == "redis://redis:6379/0"
    assert exporter["read_only"] is True
    assert all(part.isdigit() and part != "0" for part in exporter["user"].split(":"))
    assert "9808:9808" in exporter["ports"]


def test_sample_app_runs_the_demo_tasks_with_events_against_the_stacks_redis():
    for name in ("worker", "producer"):
        service = SERVICES[name]
        assert service["environment"]["CELERY_STALK_DEMO_BROKER_URL"] == "redis://redis:6379/0"
        assert "celery_stalk.demo" in " ".join(service["entrypoint"])
    assert "-E" in SERVICES["worker"]["entrypoint"]


def test_every_bind_mounted_host_path_exists():
    pending_ok = {ALERTS, DASHBOARDS} if PENDING else set()
    missing = [(name, source) for name in SERVICES if SERVICES[name].get("volumes")
               for source, _ in bind_mounts(name) if not source.exists() and source not in pending_ok]
    assert not missing, f"mounted but not in the repository: {missing}"


@pytest.mark.skipif(PENDING, reason=PENDING_REASON)
def test_the_alert_rules_and_dashboards_are_mounted():
    mounted = {source for name in ("prometheus", "grafana") for source, _ in bind_mounts(name)}
    assert ALERTS in mounted and DASHBOARDS in mounted
    assert dashboard_files(), "dashboards/ holds no dashboard"


def test_prometheus_config_passes_promtool_as_the_container_sees_it(tmp_path):
    root = container_files("prometheus", tmp_path)
    config = root / "etc/prometheus/prometheus.yml"
    rules = root / "etc/prometheus/rules/celery-stalk.rules.yml"
    if PENDING:
        # Only until the rules exist: an empty rule file stands in, so the rest is still checked.
        rules.parent.mkdir(parents=True, exist_ok=True)
        rules.write_text("groups: []\n")
    result = subprocess.run(["promtool", "check", "config", str(config)],
                            capture_output=True, text=True)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # promtool found the mounted rule file through rule_files and checked every rule in it
    count = sum(len(group["rules"]) for group in yaml.safe_load(rules.read_text())["groups"])
    assert f"Checking {rules}\n  SUCCESS: {count} rules found" in output


def test_prometheus_scrapes_the_exporter_service_and_alerts_the_alertmanager_service():
    config = yaml.safe_load((COMPOSE_DIR / "prometheus/prometheus.yml").read_text())
    targets = {t for job in config["scrape_configs"] for sc in job["static_configs"]
               for t in sc["targets"]}
    assert "exporter:9808" in targets
    alertmanagers = {t for am in config["alerting"]["alertmanagers"] for sc in am["static_configs"]
                     for t in sc["targets"]}
    assert alertmanagers == {"alertmanager:9093"}


def test_alertmanager_config_passes_amtool(tmp_path):
    root = container_files("alertmanager", tmp_path)
    result = subprocess.run(["amtool", "check-config", str(root / "etc/alertmanager/alertmanager.yml")],
                            capture_output=True, text=True)
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr


def test_grafana_provisions_the_prometheus_service_and_the_mounted_dashboards():
    mounts = {target: source for source, target in bind_mounts("grafana")}

    def provisioned(kind: str) -> list[dict]:
        files = [source for target, source in mounts.items()
                 if target.startswith(f"/etc/grafana/provisioning/{kind}/")]
        assert files, f"no {kind} provisioning mounted"
        return [entry for path in files for entry in yaml.safe_load(path.read_text())[
            "datasources" if kind == "datasources" else "providers"]]

    datasources = provisioned("datasources")
    assert [(d["type"], d["url"]) for d in datasources] == [("prometheus", "http://prometheus:9090")]
    for provider in provisioned("dashboards"):
        assert mounts[provider["options"]["path"]] == DASHBOARDS
