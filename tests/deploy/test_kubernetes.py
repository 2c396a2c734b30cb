"""deploy/kubernetes: built-in kinds validated against the Kubernetes schemas (kubernetes-validate,
no cluster); the CRDs (ServiceMonitor, PrometheusRule, ScaledObject), which those schemas do not
know, checked field by field; the generated PrometheusRule and dashboard ConfigMaps drift-checked."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys

import kubernetes_validate
import pytest
import yaml
from celery_stalk import __version__
from celery_stalk.collectors import CATALOG

from tests.deploy.mixin_outputs import ALERTS, PENDING, PENDING_REASON, dashboard_files
from tests.harness import ROOT

KUBE_DIR = ROOT / "deploy" / "kubernetes"
CRDS = {
    "ServiceMonitor": "monitoring.coreos.com/v1",
    "PodMonitor": "monitoring.coreos.com/v1",
    "PrometheusRule": "monitoring.coreos.com/v1",
    "ScaledObject": "keda.sh/v1alpha1",
}
# The oldest Kubernetes still commonly run, and the newest the schemas know.
KUBERNETES_VERSIONS = ("1.25.0", kubernetes_validate.latest_version())


def load(path):
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


DOCS = [(path.name, doc) for path in sorted(KUBE_DIR.glob("*.yaml")) for doc in load(path)]


def of_kind(kind):
    return [doc for _, doc in DOCS if doc["kind"] == kind]


def pod_templates():
    return [doc for _, doc in DOCS if doc["kind"] in ("Deployment", "StatefulSet")]


def exporter_containers():
    return [(workload, container) for workload in pod_templates()
            for container in workload["spec"]["template"]["spec"]["containers"]
            if container["image"].startswith("celery-stalk:")]


def load_generator():
    spec = importlib.util.spec_from_file_location("generate", KUBE_DIR / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_built_in_kinds_are_valid_against_the_kubernetes_schemas(version):
    checked = 0
    for name, doc in DOCS:
        if doc["kind"] in CRDS:
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name}: {doc['kind']} {doc['metadata']['name']}: {exc.message}")
        checked += 1
    assert checked >= 6  # Deployments, StatefulSet, Services (and ConfigMaps once generated)


def test_the_schema_check_can_fail():
    """A misspelt field is caught in strict mode, so the test above means something."""
    doc = of_kind("Deployment")[0]
    bad = json.loads(json.dumps(doc))
    bad["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES_VERSIONS[-1], strict=True)


def test_there_is_a_sidecar_beside_the_broker_and_a_standalone_deployment():
    kinds = {(workload["kind"], len(workload["spec"]["template"]["spec"]["containers"]))
             for workload, _ in exporter_containers()}
    assert ("StatefulSet", 2) in kinds, "exporter as a sidecar of the broker"
    assert ("Deployment", 1) in kinds, "exporter as its own Deployment"
    for workload, _container in exporter_containers():
        if workload["kind"] == "Deployment":
            # one per broker: a second replica would double every count
            assert workload["spec"]["replicas"] == 1
            assert workload["spec"]["strategy"]["type"] == "Recreate"


@pytest.mark.parametrize("index", range(2))
def test_exporter_container_is_locked_down_probed_and_bounded(index):
    workload, container = exporter_containers()[index]
    assert container["image"] == f"celery-stalk:{__version__}"
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True
    assert isinstance(security["runAsUser"], int) and security["runAsUser"] > 0
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert {"cpu", "memory"} <= set(container["resources"]["limits"])
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert {"name": "metrics", "containerPort": 9808} in container["ports"]
    env = {e["name"] for e in container["env"]}
    assert env & {"CELERY_STALK_BROKER_URL", "CELERY_STALK_BROKER_URL_FILE"}
    assert all(name.startswith("CELERY_STALK_") for name in env)


def test_service_monitor_scrapes_every_exporter_through_its_service():
    (monitor,) = of_kind("ServiceMonitor")
    assert monitor["apiVersion"] == CRDS["ServiceMonitor"]
    wanted = monitor["spec"]["selector"]["matchLabels"]
    ports = {endpoint["port"] for endpoint in monitor["spec"]["endpoints"]}
    services = [s for s in of_kind("Service")
                if wanted.items() <= s["metadata"].get("labels", {}).items()]
    assert len(services) == len(exporter_containers()), "one selected Service per exporter"
    # the operator names the job after this Service label: it must be the job the rules select
    from celery_stalk.mixin.config import DEFAULT

    job_label = monitor["spec"]["jobLabel"]
    for service in services:
        job = service["metadata"]["labels"][job_label]
        assert DEFAULT.selector == f'job="{job}"', (service["metadata"]["name"], job)
    for service in services:
        assert ports <= {port["name"] for port in service["spec"]["ports"]}
        selector = service["spec"]["selector"].items()
        pods = [w for w, c in exporter_containers()
                if selector <= w["spec"]["template"]["metadata"]["labels"].items()]
        assert pods, f"Service {service['metadata']['name']} selects no exporter pod"


def test_pod_monitor_scrapes_instrumented_workers_in_the_job_the_rules_select():
    (monitor,) = of_kind("PodMonitor")
    assert monitor["apiVersion"] == CRDS["PodMonitor"]
    wanted = monitor["spec"]["selector"]["matchLabels"].items()
    workers = [w for w in pod_templates() if wanted <= w["spec"]["template"]["metadata"]["labels"].items()]
    assert workers, "the PodMonitor selects no worker pod"
    from celery_stalk.mixin.config import DEFAULT

    for endpoint in monitor["spec"]["podMetricsEndpoints"]:
        relabel = {r["targetLabel"]: r["replacement"] for r in endpoint["relabelings"]}
        assert DEFAULT.selector == f'job="{relabel["job"]}"'
        for worker in workers:
            (container,) = worker["spec"]["template"]["spec"]["containers"]
            ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
            assert endpoint["port"] in ports, worker["metadata"]["name"]
            command = container["command"]
            assert command[command.index("--stalk-port") + 1] == str(ports[endpoint["port"]])
            assert "-E" not in command  # nothing counted twice: the worker counts its tasks


def metric_names(query: str) -> set[str]:
    return set(re.findall(r"\b(celery_[a-z_]+)", query))


def catalog_name(metric: str) -> str:
    """The catalog entry of a series name (histogram series carry a suffix)."""
    for suffix in ("_bucket", "_sum", "_count"):
        base = metric.removesuffix(suffix)
        if base != metric and CATALOG.get(base) and CATALOG[base].kind == "histogram":
            return base
    return metric


def test_keda_scales_a_worker_deployment_on_the_exporters_own_metrics(tmp_path):
    (scaled,) = of_kind("ScaledObject")
    assert scaled["apiVersion"] == CRDS["ScaledObject"]
    target = scaled["spec"]["scaleTargetRef"]["name"]
    assert target in {d["metadata"]["name"] for d in of_kind("Deployment")}
    assert target not in {w["metadata"]["name"] for w, _ in exporter_containers()}
    triggers = scaled["spec"]["triggers"]
    assert triggers and all(t["type"] == "prometheus" for t in triggers)
    queries = [t["metadata"]["query"] for t in triggers]
    used = {catalog_name(m) for q in queries for m in metric_names(q)}
    assert used and used <= set(CATALOG), f"not exported by celery-stalk: {used - set(CATALOG)}"
    assert "celery_queue_messages" in used
    assert "celery_queue_oldest_message_age_seconds" in used  # scales before the queue is old
    for trigger in triggers:
        float(trigger["metadata"]["threshold"])
        assert trigger["metadata"]["serverAddress"].startswith("http")
    # every query is valid PromQL: promtool parses it as a recording rule
    rules = tmp_path / "keda.rules.yml"
    rules.write_text(yaml.safe_dump({"groups": [{"name": "keda", "rules": [
        {"record": f"keda:query:{i}", "expr": q} for i, q in enumerate(queries)]}]}))
    result = subprocess.run(["promtool", "check", "rules", str(rules)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# -- generated from alerts/ and dashboards/ ---------------------------------------------------


def test_generator_wraps_a_rule_file_and_dashboards(tmp_path, monkeypatch):
    """Works now, on a rule file and a dashboard of the test's own."""
    generator = load_generator()
    groups = [{"name": "example", "rules": [{
        "alert": "ExampleBacklog", "expr": "sum(celery_queue_messages) > 100\n", "for": "10m",
        "labels": {"severity": "warning"},
        "annotations": {"summary": "Backlog", "description": "Line one.\nLine two."}}]}]
    (tmp_path / "rules.yml").write_text(yaml.safe_dump({"groups": groups}))
    (tmp_path / "dashboards").mkdir()
    dashboard = json.dumps({"title": "Celery Overview", "panels": []}, indent=2) + "\n"
    (tmp_path / "dashboards" / "celery-overview.json").write_text(dashboard)
    monkeypatch.setattr(generator, "ALERTS", tmp_path / "rules.yml")
    monkeypatch.setattr(generator, "DASHBOARDS", tmp_path / "dashboards")

    (rule,) = yaml.safe_load_all(generator.prometheus_rule())
    assert rule["apiVersion"] == CRDS["PrometheusRule"] and rule["kind"] == "PrometheusRule"
    assert rule["spec"]["groups"] == groups
    (configmap,) = yaml.safe_load_all(generator.dashboard_configmaps())
    assert configmap["data"] == {"celery-overview.json": dashboard}
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    kubernetes_validate.validate(configmap, KUBERNETES_VERSIONS[-1], strict=True)


def test_generator_without_the_rule_file_fails_with_one_line(monkeypatch, capsys):
    generator = load_generator()
    monkeypatch.setattr(generator, "ALERTS", ROOT / "alerts" / "no-such.rules.yml")
    assert generator.main([]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "python -m celery_stalk.mixin" in lines[0]


@pytest.mark.skipif(PENDING, reason=PENDING_REASON)
def test_generated_manifests_match_alerts_and_dashboards():
    result = subprocess.run([sys.executable, str(KUBE_DIR / "generate.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(PENDING, reason=PENDING_REASON)
def test_prometheus_rule_carries_exactly_the_rule_files_groups():
    (rule,) = of_kind("PrometheusRule")
    assert rule["apiVersion"] == CRDS["PrometheusRule"]
    assert rule["spec"]["groups"] == yaml.safe_load(ALERTS.read_text())["groups"]


@pytest.mark.skipif(PENDING, reason=PENDING_REASON)
def test_every_dashboard_has_a_configmap_for_the_grafana_sidecar():
    by_key = {key: (cm, text) for cm in of_kind("ConfigMap") for key, text in cm["data"].items()}
    files = dashboard_files()
    assert files
    for path in files:
        configmap, text = by_key[path.name]
        assert text == path.read_text()
        assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert len(text.encode()) < 1024 * 1024, "a ConfigMap holds at most 1 MiB"
