"""Compatibility recording rules: celery-exporter's and Flower's metric names, from ours.

A team moving from danihodovic's celery-exporter or from Flower's /metrics loads one of
these rule files and keeps its dashboards and alerts working unchanged while it moves to
celery-stalk's own. Each rule reads celery-stalk's series (through the selector of
config.py) and records a series with exactly the old tool's name and label names.
docs/migrating.md says what each mapping means and what cannot be mapped.

How the labels are made:

- ``job`` is set to the old tool's scrape job (celery-exporter, flower; config.py).
  The old dashboards pick or match a job, and celery-exporter's dashboards also read names that
  celery-stalk exposes itself (celery_task_sent_total, celery_worker_up...): the compat
  series must not share celery-stalk's job, or those panels would count everything twice.
  Every other target label (instance, namespace, cluster, pod) is kept as scraped.
- Task series get ``name``/``queue_name`` (celery-exporter) or ``task`` (Flower) from our
  ``task``/``queue``. celery-stalk never puts the worker's host on task series, so the
  host label they carry there (``hostname``, Flower's ``worker``) is the fixed value
  ``generic``, the value celery-exporter itself uses when told to drop the hostname.
- Worker series: celery-exporter's ``hostname`` is the host part of the nodename
  (celery@web-1 -> web-1), so workers sharing a host are folded into one series, as
  celery-exporter does; Flower's ``worker`` is the full nodename, as ours.
- Every selector also requires our own label (``task``, ``worker``, ``queue``), which
  compat series do not have, so no rule can read its own output whatever the selector.
"""

from __future__ import annotations

import textwrap

from .config import Config

GENERIC_HOST = "generic"
# A nodename is "name@host"; a name without "@" is all host (as celery.utils.nodesplit).
HOST_OF_NODENAME = "(?:[^@]*@)?(.*)"

TASK_EVENTS = ("sent", "received", "started", "succeeded", "failed", "retried", "rejected",
               "revoked")


def _sel(c: Config, metric: str, *matchers: str) -> str:
    """One series per condition however many exporters of an HA pair watch the broker:
    they count the same events, so the larger is the one that has not restarted."""
    series = f"{metric}{{{', '.join((c.selector, *matchers))}}}"
    return f"max without ({', '.join(c.replica_labels)}) ({series})"


def _indent(text: str) -> str:
    return textwrap.indent(text, "  ")


def _aggregate(op: str, expr: str) -> str:
    return f"{op} (\n{_indent(expr)}\n)"


def _rename(expr: str, *pairs: tuple[str, str]) -> str:
    """``expr`` with each (new, old) label copied to its new name (the old one stays)."""
    for new, old in pairs:
        expr = f'label_replace(\n{_indent(expr)},\n  "{new}", "$1", "{old}", "(.*)"\n)'
    return expr


def _task_series(c: Config, metric: str) -> str:
    return _sel(c, metric, 'task!=""')


def _any_task_event_zero(c: Config) -> str:
    """0 for every task and queue with any task event: the series celery-exporter creates at 0."""
    seen = "\nor\n".join(_task_series(c, f"celery_task_{e}_total") for e in TASK_EVENTS)
    return _aggregate("0 *", seen)


# -- celery-exporter --------------------------------------------------------------------

def _exporter_task(source: str) -> str:
    return _aggregate("sum without (task, queue)",
                      _rename(source, ("name", "task"), ("queue_name", "queue")))


def celery_exporter_rules(c: Config) -> list[dict]:
    job = c.celery_exporter_job
    task_labels = {"job": job, "hostname": GENERIC_HOST}
    rules = []
    for event in TASK_EVENTS:
        ours = _task_series(c, f"celery_task_{event}_total")
        if event == "failed":
            # Their failed counter carries the exception class: ours by exception, plus
            # the exception-less 0 series they create for every task seen.
            source = (f"{_task_series(c, 'celery_task_exceptions_total')}\n"
                      f"or\n{_any_task_event_zero(c)}")
        elif event == "sent":
            source = ours  # the one counter they do not create at 0
        else:
            # A task that never succeeded still has a succeeded series at 0 there, so a
            # failure ratio failed / (failed + succeeded) has a value (and pages) for it.
            source = f"{ours}\nor\n{_any_task_event_zero(c)}"
        rules.append({"record": f"celery_task_{event}_total",
                      "expr": _exporter_task(source), "labels": dict(task_labels)})
    # Histograms: our buckets, re-published under their names (le unchanged).
    for ours, theirs in (("celery_task_runtime_seconds", "celery_task_runtime"),
                         ("celery_task_queue_wait_seconds", "celery_task_queue_wait_time")):
        for part in ("bucket", "sum", "count"):
            rules.append({"record": f"{theirs}_{part}",
                          "expr": _exporter_task(_task_series(c, f"{ours}_{part}")),
                          "labels": dict(task_labels)})

    def by_host(op: str, expr: str) -> str:
        host = (f'label_replace(\n{_indent(expr)},\n'
                f'  "hostname", "$1", "worker", "{HOST_OF_NODENAME}"\n)')
        return _aggregate(f"{op} without (worker)", host)

    up = _sel(c, "celery_worker_up", 'worker!=""')
    active = _sel(c, "celery_worker_tasks_active", 'worker!=""')
    rules += [
        # 1 while any worker of the host is up; 0 once all are down or shut down.
        {"record": "celery_worker_up", "expr": by_host("max", up), "labels": {"job": job}},
        # They set a down worker's count to 0; ours keeps its last heartbeat's.
        {"record": "celery_worker_tasks_active", "expr": by_host("sum", f"{active} * {up}"),
         "labels": {"job": job}},
    ]
    for ours, theirs in (("celery_queue_messages", "celery_queue_length"),
                         ("celery_queue_consumers", "celery_active_consumer_count")):
        expr = _aggregate("sum without (queue)",
                          _rename(_sel(c, ours, 'queue!=""'), ("queue_name", "queue")))
        rules.append({"record": theirs, "expr": expr, "labels": {"job": job}})
    return rules


# -- Flower -----------------------------------------------------------------------------

def flower_rules(c: Config) -> list[dict]:
    job = c.flower_job
    task_labels = {"job": job, "worker": GENERIC_HOST}
    rules = [
        {"record": "flower_events_total",
         "expr": f"sum without (queue) ({_task_series(c, f'celery_task_{event}_total')})",
         "labels": {**task_labels, "type": f"task-{event}"}}
        for event in TASK_EVENTS
    ]
    for part in ("bucket", "sum", "count"):
        ours = _task_series(c, f"celery_task_runtime_seconds_{part}")
        rules.append({"record": f"flower_task_runtime_seconds_{part}",
                      "expr": f"sum without (queue) ({ours})", "labels": dict(task_labels)})
    rules += [
        {"record": "flower_worker_online", "expr": _sel(c, "celery_worker_up", 'worker!=""'),
         "labels": {"job": job}},
        {"record": "flower_worker_number_of_currently_executing_tasks",
         "expr": _sel(c, "celery_worker_tasks_active", 'worker!=""'), "labels": {"job": job}},
    ]
    return rules


# -- the files ----------------------------------------------------------------------------

COMPAT = {
    "celery-exporter": celery_exporter_rules,
    "flower": flower_rules,
}


def compat_path(name: str) -> str:
    return f"alerts/compat/{name}.rules.yml"


def compat_rule_file(name: str, c: Config) -> tuple[str, dict]:
    """The header comment and the rule groups of one compat file."""
    if name not in COMPAT:
        raise ValueError(f"no compatibility rules for {name!r}: choose from {', '.join(COMPAT)}")
    header = (
        "# Generated by `celery-stalk mixin` (exporter/celery_stalk/mixin/compat.py): change its "
        "settings and generate again rather than edit.\n"
        f"# {name}'s metric names and labels, recorded from celery-stalk's, so dashboards and\n"
        f"# alerts built for {name} keep working while you move. What maps and what does\n"
        "# not: docs/migrating.md. Load it only once the old tool is no longer scraped.\n"
    )
    groups = {"groups": [{"name": f"celery-stalk.compat.{name}", "rules": COMPAT[name](c)}]}
    return header, groups
