"""Grafana dashboards for celery-stalk: an overview, drill-downs per task, queue and worker,
and periodic tasks with workflows.

Panels query the exporter's own metrics only (no recording rules), so the dashboards work
whether or not the rules are loaded, at any time range. Every query selects through the
$job/$queue/$task/$worker variables; the data source is the $datasource variable. Only
current panel types are used (timeseries, stat, bargauge, table, state-timeline).

Exporters may run in HA pairs, each reporting the same broker: every series is taken once
(``max without`` the replica labels) before it is summed, so two exporters never double a
rate or a count.
"""

from __future__ import annotations

from .config import Config

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
TAGS = ["celery", "celery-stalk"]
RATE = "$__rate_interval"
RANGE = "$__range"
LIFECYCLE = ("sent", "received", "started", "succeeded", "failed", "retried", "rejected", "revoked")
# Which variables filter which metric: task series carry task and queue, worker series worker.
TASK_LABELS = ("job", "queue", "task")
QUEUE_LABELS = ("job", "queue")
WORKER_LABELS = ("job", "worker")


# Set by dashboards() from the settings: the labels that tell HA replicas apart.
_REPLICAS = ["instance"]


def sel(metric: str, labels: tuple[str, ...] = ("job",)) -> str:
    return metric + "{" + ", ".join(f'{label}=~"${label}"' for label in labels) + "}"


def once(expr: str) -> str:
    """One series per broker however many exporters report it."""
    return f"max without ({', '.join(_REPLICAS)}) ({expr})"


def gauge(metric: str, labels: tuple[str, ...] = ("job",)) -> str:
    return once(sel(metric, labels))


def rate(metric: str, labels: tuple[str, ...] = TASK_LABELS, window: str = RATE) -> str:
    return once(f"rate({sel(metric, labels)}[{window}])")


def increase(metric: str, labels: tuple[str, ...] = ("job",), window: str = RANGE) -> str:
    return once(f"increase({sel(metric, labels)}[{window}])")


def quantile(q: float, histogram: str, by: str, labels: tuple[str, ...] = TASK_LABELS) -> str:
    return f"histogram_quantile({q}, sum by ({by}, le) ({rate(histogram + '_bucket', labels)}))"


def failure_ratio(by: str) -> str:
    """failed / (failed + succeeded); a task that never succeeded has no succeeded series."""
    failed = f"sum by ({by}) ({rate('celery_task_failed_total')})"
    succeeded = f"sum by ({by}) ({rate('celery_task_succeeded_total')})"
    return f"{failed} / ({failed} + ({succeeded} or {failed} * 0))"


def or_zero(expr: str) -> str:
    """For counters that have no series until their first event: none yet means 0."""
    return f"({expr}) or vector(0)"


# Utilisation: tasks executing (heartbeats) over pool size (inspect stats), for workers
# whose pool size is known; per worker, and for the fleet.
# Functions, not constants: once() reads the replica labels set by dashboards().
def worker_utilisation() -> str:
    active, slots = _capacity()
    return f"sum by (worker) ({active}) / sum by (worker) ({slots})"


def fleet_utilisation() -> str:
    active, slots = _capacity()
    return f"sum({active} and {slots}) / sum({slots})"


def _capacity() -> tuple[str, str]:
    return (gauge("celery_worker_tasks_active", WORKER_LABELS),
            gauge("celery_worker_concurrency", WORKER_LABELS))


# Worker state for state timelines and tables: 1 up, 0 shut down cleanly, 2 lost.
_UP, _OFFLINE = sel("celery_worker_up", WORKER_LABELS), sel("celery_worker_offline", WORKER_LABELS)
WORKER_STATE = f"max by (worker) ({_UP} + 2 * (1 - {_UP}) * (1 - {_OFFLINE}))"
HEARTBEAT_AGE = (f"time() - max by (worker) "
                 f"({sel('celery_worker_last_heartbeat_timestamp_seconds', WORKER_LABELS)})")
WORKER_STATE_MAPPINGS = [{"type": "value", "options": {
    "0": {"text": "shut down", "color": "blue", "index": 0},
    "1": {"text": "up", "color": "green", "index": 1},
    "2": {"text": "lost", "color": "red", "index": 2},
}}]
YES_NO = [{"type": "value", "options": {
    "0": {"text": "no", "color": "red", "index": 0},
    "1": {"text": "yes", "color": "green", "index": 1},
}}]


# -- panels -------------------------------------------------------------------------------


def target(expr: str, legend: str = "", instant: bool = False, table: bool = False) -> dict:
    t = {"datasource": DATASOURCE, "expr": expr, "legendFormat": legend or "__auto",
         "range": not instant, "instant": instant}
    if table:
        t["format"] = "table"
    return t


def panel(kind: str, title: str, description: str, targets: list[dict], unit: str = "short",
          w: int = 12, h: int = 8, mappings: list | None = None, options: dict | None = None,
          transformations: list | None = None) -> dict:
    for ref, t in zip("ABCDEFGHIJKLMNOP", targets):
        t["refId"] = ref
    defaults: dict = {"unit": unit}
    if mappings:
        defaults["mappings"] = mappings
    if kind == "timeseries":
        defaults["custom"] = {"drawStyle": "line", "fillOpacity": 10, "showPoints": "never",
                              "spanNulls": False}
    p = {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "targets": targets,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": options or _default_options(kind),
        "gridPos": {"w": w, "h": h},
    }
    if transformations:
        p["transformations"] = transformations
    return p


def _default_options(kind: str) -> dict:
    if kind == "timeseries":
        return {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                "tooltip": {"mode": "multi", "sort": "desc"}}
    if kind == "stat":
        return {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                "colorMode": "value", "graphMode": "area", "justifyMode": "auto",
                "textMode": "auto", "orientation": "auto"}
    if kind == "bargauge":
        return {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                "displayMode": "gradient", "orientation": "horizontal", "showUnfilled": True}
    if kind == "state-timeline":
        return {"showValue": "never", "mergeValues": True, "rowHeight": 0.8,
                "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True}}
    return {"showHeader": True, "cellHeight": "sm"}


def stat(title: str, description: str, expr: str, unit: str = "short", mappings=None) -> dict:
    return panel("stat", title, description, [target(expr)], unit, w=4, h=4, mappings=mappings)


def timeseries(title: str, description: str, targets: list[dict], unit: str = "short",
               w: int = 12) -> dict:
    return panel("timeseries", title, description, targets, unit, w=w)


def table(title: str, description: str, columns: dict[str, str], w: int = 24) -> dict:
    """One instant query per column, joined on their labels."""
    targets = [target(expr, name, instant=True, table=True) for name, expr in columns.items()]
    renames = {f"Value #{ref}": name for ref, name in zip("ABCDEFGHIJKLMNOP", columns)}
    return panel("table", title, description, targets, w=w, h=8, transformations=[
        {"id": "merge", "options": {}},
        {"id": "organize", "options": {"excludeByName": {"Time": True}, "renameByName": renames}},
    ])


def row(title: str) -> dict:
    return {"type": "row", "title": title, "collapsed": False, "panels": [],
            "gridPos": {"w": 24, "h": 1}}


def quantiles(histogram: str, by: str, labels: tuple[str, ...] = TASK_LABELS) -> list[dict]:
    return [target(quantile(q, histogram, by, labels), f"{{{{{by}}}}} p{round(q * 100)}")
            for q in (0.5, 0.95, 0.99)]


# -- dashboards ---------------------------------------------------------------------------


def overview() -> tuple[str, list[dict]]:
    return "Celery / Overview", [
        row("Health"),
        stat("Exporters up", "Scrape targets of the selected jobs that answer.",
             f"sum({sel('up')})"),
        stat("Broker reachable", "Whether every exporter's last queue read succeeded.",
             f"min({sel('celery_stalk_broker_up')})", mappings=YES_NO),
        stat("Event stream", "Whether every exporter is connected to the event stream.",
             f"min({sel('celery_stalk_events_connected')})", mappings=YES_NO),
        stat("Workers up", "Workers whose heartbeats arrive.",
             f"sum({gauge('celery_worker_up', WORKER_LABELS)})"),
        stat("Workers lost", "Workers that stopped heartbeating without a clean shutdown, "
             "in the time range.", f"sum({increase('celery_worker_lost_total')})"),
        stat("Messages waiting", "Ready messages in the selected queues.",
             f"sum({gauge('celery_queue_messages', QUEUE_LABELS)})"),
        row("Tasks"),
        timeseries("Throughput", "Task lifecycle events per second (one counter per event).",
                   [target(f"sum({rate(f'celery_task_{e}_total')})", e) for e in LIFECYCLE], "ops"),
        timeseries("Failure ratio by task", "Terminal failures (task-failed, not retries) over "
                   "finished tasks (succeeded + failed).",
                   [target(failure_ratio("task"), "{{task}}")], "percentunit"),
        timeseries("Succeeded by task", "Tasks succeeded per second.",
                   [target(f"sum by (task) ({rate('celery_task_succeeded_total')})", "{{task}}")],
                   "ops"),
        timeseries("Failures by exception", "Failed tasks per second by exception class.",
                   [target(f"sum by (exception) ({rate('celery_task_exceptions_total')})",
                           "{{exception}}")], "ops"),
        timeseries("Run time by task", "Run time percentiles of succeeded tasks.",
                   quantiles("celery_task_runtime_seconds", "task"), "s"),
        panel("bargauge", "Failures by task and exception", "Failed tasks in the time range, "
              "top 10 task and exception pairs.",
              [target(f"topk(10, sum by (task, exception) ("
                      f"{increase('celery_task_exceptions_total', TASK_LABELS)}))",
                      "{{task}}: {{exception}}", instant=True)]),
        row("Queues"),
        timeseries("Messages waiting by queue", "Ready messages in the broker queue.",
                   [target(f"sum by (queue) ({gauge('celery_queue_messages', QUEUE_LABELS)})",
                           "{{queue}}")]),
        timeseries("Queue wait by queue", "Time from task-sent (or ETA) to task-started.",
                   quantiles("celery_task_queue_wait_seconds", "queue")[:2], "s"),
        timeseries("Oldest message age by queue", "How long the oldest message waiting in the "
                   "queue has waited (a lower bound on Redis without task-sent events).",
                   [target(f"max by (queue) ("
                           f"{gauge('celery_queue_oldest_message_age_seconds', QUEUE_LABELS)})",
                           "{{queue}}")], "s"),
        row("Workers"),
        timeseries("Workers", "Up, cleanly shut down (worker-offline) and lost (silent "
                   "without worker-offline), while the exporter keeps their series.", [
                       target(f"sum({gauge('celery_worker_up', WORKER_LABELS)})", "up"),
                       target(f"sum({gauge('celery_worker_offline', WORKER_LABELS)})",
                              "shut down cleanly"),
                       target(f"sum({once(f'(1 - {_UP}) * (1 - {_OFFLINE})')})", "lost"),
                   ]),
        timeseries("Tasks executing by worker", "From the active field of worker heartbeats.",
                   [target(f"sum by (worker) ({gauge('celery_worker_tasks_active', WORKER_LABELS)})",
                           "{{worker}}")]),
        timeseries("Fleet utilisation", "Tasks executing over pool slots (concurrency from "
                   "inspect stats), over the workers whose pool size is known.",
                   [target(fleet_utilisation(), "fleet")], "percentunit"),
        *exporter_health(),
    ]


def exporter_health() -> list[dict]:
    def per_s(metric: str) -> str:
        return f"sum({rate(metric, ('job',))})"

    return [
        row("Exporter"),
        timeseries("Events applied by type", "Celery events the exporter applied per second.",
                   [target(f"sum by (type) ({rate('celery_stalk_events_total', ('job',))})",
                           "{{type}}")], "ops", w=8),
        timeseries("Events skipped or unattributed", "Events that could not be applied, or "
                   "counted without a task name; tasks dropped to stay bounded; label values "
                   "past their cap; reconnects.", [
                       target(or_zero(per_s("celery_stalk_events_invalid_total")), "invalid"),
                       target(or_zero(per_s("celery_stalk_task_name_unknown_total")),
                              "task name unknown"),
                       target(per_s("celery_stalk_tracked_tasks_evicted_total"), "evicted"),
                       target(per_s("celery_stalk_label_overflow_total"), "label overflow"),
                       target(per_s("celery_stalk_queue_wait_clock_skew_total"), "clock skew"),
                       target(per_s("celery_stalk_broker_reconnects_total"), "reconnects"),
                   ], "ops", w=8),
        timeseries("Scrape duration by collector", "Seconds each collector took in a scrape.",
                   [target(f"max by (collector) ({sel('celery_stalk_collector_duration_seconds')})",
                           "{{collector}}")], "s", w=8),
        stat("Tracked tasks", "Tasks in flight kept to join events (bounded).",
             f"sum({gauge('celery_stalk_tracked_tasks')})"),
        stat("Last event", "Seconds since the exporter last applied an event.",
             f"time() - max({sel('celery_stalk_last_event_timestamp_seconds')})", "s"),
        stat("Collectors failing", "Collectors that failed in the last scrape.",
             f"sum(1 - {sel('celery_stalk_collector_success')})"),
        table("Exporters", "Version of each exporter.", {
            "version": f"max by (job, instance, version) ({sel('celery_stalk_build_info')})",
        }, w=12),
    ]


def task() -> tuple[str, list[dict]]:
    failed = f"sum({rate('celery_task_failed_total')})"
    succeeded = f"sum({rate('celery_task_succeeded_total')})"

    def totals(metric: str) -> str:
        return f"sum by (task, queue) ({increase(metric, TASK_LABELS)})"

    return "Celery / Task", [
        row("Selected tasks"),
        stat("Succeeded", "Tasks succeeded per second.", succeeded, "ops"),
        stat("Failed", "Tasks failed per second (terminal failures).", or_zero(failed), "ops"),
        stat("Failure ratio", "Failed over finished.",
             f"({or_zero(failed)}) / ({succeeded} + ({or_zero(failed)}))", "percentunit"),
        stat("Retried", "Retries per second.", or_zero(f"sum({rate('celery_task_retried_total')})"),
             "ops"),
        stat("Run time p95", "95th percentile run time of succeeded tasks.",
             f"histogram_quantile(0.95, sum by (le) "
             f"({rate('celery_task_runtime_seconds_bucket')}))",
             "s"),
        stat("Queue wait p95", "95th percentile time from sent to started.",
             f"histogram_quantile(0.95, sum by (le) "
             f"({rate('celery_task_queue_wait_seconds_bucket')}))", "s"),
        timeseries("Lifecycle events by task", "Each task lifecycle event per second.",
                   [target(f"sum by (task) ({rate(f'celery_task_{e}_total')})", f"{{{{task}}}} {e}")
                    for e in LIFECYCLE], "ops", w=24),
        timeseries("Run time", "Run time percentiles of succeeded tasks.",
                   quantiles("celery_task_runtime_seconds", "task"), "s"),
        timeseries("Average run time", "Total run time over count, per task.", [target(
            f"sum by (task) ({rate('celery_task_runtime_seconds_sum')}) / "
            f"sum by (task) ({rate('celery_task_runtime_seconds_count')})", "{{task}}")], "s"),
        timeseries("Failures by exception", "Failed tasks per second by task and exception.",
                   [target(f"sum by (task, exception) ({rate('celery_task_exceptions_total')})",
                           "{{task}}: {{exception}}")], "ops"),
        timeseries("Failure ratio", "Terminal failures over finished tasks.",
                   [target(failure_ratio("task"), "{{task}}")], "percentunit"),
        timeseries("Queue wait", "Time from task-sent (or ETA) to task-started.",
                   quantiles("celery_task_queue_wait_seconds", "task"), "s", w=24),
        timeseries("Longest running (stuck tasks)", "How long the longest-running unfinished "
                   "task of each name has run: a line that keeps climbing is a task that does "
                   "not end.", [target(f"max by (task, queue) ("
                                       f"{gauge('celery_task_oldest_running_seconds', TASK_LABELS)})",
                                       "{{task}} ({{queue}})")], "s"),
        stat("Orphaned in the time range", "Tasks running or prefetched on a worker that "
             "was lost (silent, no clean shutdown).",
             or_zero(f"sum({increase('celery_task_orphaned_total', TASK_LABELS)})")),
        table("Totals in the time range", "Events per task and queue in the time range.", {
            "sent": totals("celery_task_sent_total"),
            "succeeded": totals("celery_task_succeeded_total"),
            "failed": totals("celery_task_failed_total"),
            "retried": totals("celery_task_retried_total"),
        }),
    ]


def queue() -> tuple[str, list[dict]]:
    def by_queue(metric: str) -> str:
        return f"sum by (queue) ({rate(metric, QUEUE_LABELS)})"

    deriv_messages = f"deriv({sel('celery_queue_messages', QUEUE_LABELS)}[{RATE}])"

    return "Celery / Queue", [
        row("Selected queues"),
        timeseries("Messages waiting", "Ready messages in the broker queue (Redis: the list and "
                   "its priority sub-lists).",
                   [target(f"sum by (queue) ({gauge('celery_queue_messages', QUEUE_LABELS)})",
                           "{{queue}}")]),
        timeseries("Consumers", "Consumers attached to the queue. RabbitMQ only: Redis cannot "
                   "tell, see Arrivals and consumption instead.",
                   [target(f"sum by (queue) ({gauge('celery_queue_consumers', QUEUE_LABELS)})",
                           "{{queue}}")]),
        timeseries("Oldest message age", "How long the oldest message waiting in the queue has "
                   "waited: it grows while nothing takes it, even when no task starts at all. "
                   "Redis: dated by its task-sent event, else from when the exporter first saw "
                   "it (a lower bound). RabbitMQ: the head message's timestamp, if producers set "
                   "one (management API). No line: the queue is empty.",
                   [target(f"max by (queue) ("
                           f"{gauge('celery_queue_oldest_message_age_seconds', QUEUE_LABELS)})",
                           "{{queue}}")], "s"),
        timeseries("Unacknowledged and consumer utilisation", "RabbitMQ management API only "
                   "(--rabbitmq-management-url): messages delivered and not yet acknowledged "
                   "(prefetched or running), and the share of time the queue could deliver to "
                   "its consumers at once (below 100%: they are busy).", [
                       target(f"sum by (queue) ("
                              f"{gauge('celery_queue_messages_unacked', QUEUE_LABELS)})",
                              "{{queue}} unacked"),
                       target(f"max by (queue) ("
                              f"{gauge('celery_queue_consumer_utilisation', QUEUE_LABELS)}) * 100",
                              "{{queue}} utilisation %"),
                   ]),
        timeseries("Arrivals and consumption", "Tasks sent to the queue, and received and "
                   "started by workers, per second.", [
                       target(by_queue("celery_task_sent_total"), "{{queue}} sent"),
                       target(by_queue("celery_task_received_total"), "{{queue}} received"),
                       target(by_queue("celery_task_started_total"), "{{queue}} started"),
                   ], "ops"),
        timeseries("Oldest pending", "Seconds the oldest task sent to the queue has waited "
                   "for a worker (task-sent seen, no task-received yet): grows with the clock "
                   "while nothing takes from the queue.",
                   [target(f"max by (queue) ("
                           f"{gauge('celery_queue_oldest_pending_seconds', QUEUE_LABELS)})",
                           "{{queue}}")], "s"),
        timeseries("Backlog trend", "Change of the queue depth per minute: above zero, tasks "
                   "arrive faster than workers take them.",
                   [target(f"sum by (queue) ({once(deriv_messages)}) * 60", "{{queue}}")]),
        timeseries("Queue wait", "Time from task-sent (or ETA) to task-started.",
                   quantiles("celery_task_queue_wait_seconds", "queue", QUEUE_LABELS), "s"),
        timeseries("Failure ratio by queue", "Terminal failures over finished tasks.",
                   [target(failure_ratio("queue"), "{{queue}}")], "percentunit"),
        table("Tasks sent in the time range", "Tasks sent per queue and task.", {
            "sent": f"sum by (queue, task) ({increase('celery_task_sent_total', TASK_LABELS)})",
        }),
    ]


def worker() -> tuple[str, list[dict]]:
    up, offline = _UP, _OFFLINE
    return "Celery / Worker", [
        row("Selected workers"),
        stat("Up", "Workers whose heartbeats arrive.", f"sum({once(up)})"),
        stat("Shut down cleanly", "Workers that sent worker-offline, until forgotten.",
             f"sum({once(offline)})"),
        stat("Lost", "Workers silent without worker-offline, until forgotten.",
             f"sum({once(f'(1 - {up}) * (1 - {offline})')})"),
        stat("Lost in the time range", "All workers lost, including forgotten ones.",
             f"sum({increase('celery_worker_lost_total')})"),
        panel("state-timeline", "Worker state", "Up, shut down cleanly or lost.",
              [target(WORKER_STATE, "{{worker}}")], w=24, mappings=WORKER_STATE_MAPPINGS),
        timeseries("Tasks executing", "From the active field of worker heartbeats.",
                   [target(f"sum by (worker) ({gauge('celery_worker_tasks_active', WORKER_LABELS)})",
                           "{{worker}}")]),
        timeseries("Heartbeat age", "Seconds since the exporter last heard from the worker.",
                   [target(HEARTBEAT_AGE, "{{worker}}")], "s"),
        timeseries("Utilisation", "Tasks executing (heartbeats) over pool slots (concurrency "
                   "from inspect stats).", [target(worker_utilisation(), "{{worker}}")],
                   "percentunit"),
        timeseries("Reserved (prefetched)", "Tasks the worker received and has not started.",
                   [target(f"sum by (worker) ("
                           f"{gauge('celery_worker_tasks_reserved', WORKER_LABELS)})",
                           "{{worker}}")]),
        timeseries("Tasks taken", "Tasks per second each worker accepted, from the processed "
                   "field of its heartbeats: there with task events off too.",
                   [target(f"sum by (worker) ({rate('celery_worker_processed_total', WORKER_LABELS)})",
                           "{{worker}}")], "ops"),
        timeseries("Clock offset", "How far each worker's clock is ahead of the exporter's "
                   "(negative: behind); past a second or two, queue waits are off by as much.",
                   [target(f"max by (worker) "
                           f"({sel('celery_worker_clock_offset_seconds', WORKER_LABELS)})",
                           "{{worker}}")], "s"),
        table("Workers", "Each worker's state, tasks executing, heartbeat age, pool size, tasks "
              "reserved and whether its task events arrive (no: start it with -E).", {
            "state": WORKER_STATE,
            "executing": f"max by (worker) ({sel('celery_worker_tasks_active', WORKER_LABELS)})",
            "heartbeat age": HEARTBEAT_AGE,
            "concurrency": f"max by (worker) ({sel('celery_worker_concurrency', WORKER_LABELS)})",
            "reserved": f"max by (worker) ({sel('celery_worker_tasks_reserved', WORKER_LABELS)})",
            "task events": f"min by (worker) "
                           f"({sel('celery_worker_task_events_enabled', WORKER_LABELS)})",
        }),
    ]


def beat_and_workflows() -> tuple[str, list[dict]]:
    job = ("job",)

    def per_entry(metric: str) -> str:
        return f"sum by (entry) ({increase(metric)})"

    last_run = f"max by (entry) ({sel('celery_beat_entry_last_run_timestamp_seconds')})"
    last_missed = f"max by (entry) ({sel('celery_beat_entry_last_missed_timestamp_seconds')})"
    not_run_since = f"({last_missed} > {last_run}) or ({last_missed} unless {last_run})"
    finished = f"sum by (workflow) ({rate('celery_workflow_finished_total', job)})"
    failed_only = 'celery_workflow_finished_total{job=~"$job", outcome="failed"}'
    failed = f"sum by (workflow) ({once(f'rate({failed_only}[{RATE}])')})"
    return "Celery / Beat and workflows", [
        row("Periodic tasks (beat)"),
        stat("Entries", "Beat schedule entries the exporter follows (the app's beat_schedule or "
             "RedBeat's keys).", f"count({gauge('celery_beat_entry_info')})"),
        stat("Not run since a miss", "Entries whose latest due time passed without a run and "
             "that have not run since.", or_zero(f"count({not_run_since})")),
        stat("Missed in the time range", "Due times passed by --beat-grace with nothing sent.",
             or_zero(f"sum({increase('celery_beat_entry_missed_runs_total')})")),
        stat("Duplicates in the time range", "Runs sent again before they were due: more than "
             "one beat, or the same task sent by other code.",
             or_zero(f"sum({increase('celery_beat_entry_duplicate_runs_total')})")),
        stat("Schedule read", "Whether the last read of RedBeat's schedule succeeded (no value: "
             "the schedule comes from the app).", f"min({sel('celery_stalk_beat_schedule_up')})",
             mappings=YES_NO),
        stat("Runs in the time range", "Runs of every entry seen (task-sent, else task-received).",
             or_zero(f"sum({increase('celery_beat_entry_runs_total')})")),
        table("Schedule", "Each entry: its task and schedule, seconds since its last run and "
              "until its next one, and in the time range its runs, missed and duplicate runs "
              "and how late its runs were sent (p95, seconds).", {
                  "schedule": f"max by (entry, task, schedule) ({gauge('celery_beat_entry_info')})",
                  "last run (s ago)": f"time() - {last_run}",
                  "next run (s)": f"max by (entry) "
                                  f"({sel('celery_beat_entry_next_run_timestamp_seconds')}) - time()",
                  "runs": per_entry("celery_beat_entry_runs_total"),
                  "missed": per_entry("celery_beat_entry_missed_runs_total"),
                  "duplicates": per_entry("celery_beat_entry_duplicate_runs_total"),
                  "late p95 (s)": f"histogram_quantile(0.95, sum by (entry, le) "
                                  f"({increase('celery_beat_entry_delay_seconds_bucket')}))",
              }),
        timeseries("Runs by entry", "Runs sent per second.",
                   [target(f"sum by (entry) ({rate('celery_beat_entry_runs_total', job)})",
                           "{{entry}}")], "ops", w=8),
        timeseries("Missed and duplicate runs by entry", "Per second.", [
            target(f"sum by (entry) ({rate('celery_beat_entry_missed_runs_total', job)})",
                   "{{entry}} missed"),
            target(f"sum by (entry) ({rate('celery_beat_entry_duplicate_runs_total', job)})",
                   "{{entry}} duplicate"),
        ], "ops", w=8),
        timeseries("How late runs were sent", "Seconds after the due time, p95 by entry.",
                   [target(f"histogram_quantile(0.95, sum by (entry, le) "
                           f"({rate('celery_beat_entry_delay_seconds_bucket', job)}))",
                           "{{entry}}")], "s", w=8),
        row("Workflows"),
        timeseries("Started and finished", "Workflows (tasks sharing a root_id) started and "
                   "finished per second, by root task and outcome.", [
                       target(f"sum by (workflow) ({rate('celery_workflow_started_total', job)})",
                              "{{workflow}} started"),
                       target(f"sum by (workflow, outcome) "
                              f"({rate('celery_workflow_finished_total', job)})",
                              "{{workflow}} {{outcome}}"),
                   ], "ops"),
        timeseries("Failure ratio by workflow", "Workflows finished failed (a task failed for "
                   "good) over workflows finished.",
                   [target(f"({failed} or {finished} * 0) / {finished}", "{{workflow}}")],
                   "percentunit"),
        timeseries("Duration by workflow", "From the root's task-sent to the last task's end.",
                   quantiles("celery_workflow_duration_seconds", "workflow", job), "s"),
        timeseries("Tasks per workflow", "Tasks of finished workflows, p50 and p95.",
                   quantiles("celery_workflow_tasks", "workflow", job)[:2]),
        timeseries("In flight by workflow", "Workflows started and not finished.",
                   [target(f"sum by (workflow) ({gauge('celery_workflows_in_flight')})",
                           "{{workflow}}")]),
        timeseries("Oldest in flight by workflow", "Seconds since the oldest workflow in "
                   "flight started.",
                   [target(f"max by (workflow) "
                           f"({gauge('celery_workflow_oldest_in_flight_age_seconds')})",
                           "{{workflow}}")], "s"),
        panel("bargauge", "Where workflows break", "Tasks of workflows that failed for good in "
              "the time range, top 10 by workflow, task and exception.",
              [target(f"topk(10, sum by (workflow, task, exception) ("
                      f"{increase('celery_workflow_task_failed_total')}))",
                      "{{workflow}}: {{task}} {{exception}}", instant=True)]),
        timeseries("Not followed", "Tasks of workflows the exporter could not follow (their "
                   "root unseen, or their workflow already settled) and open workflows dropped "
                   "to stay bounded or when the event stream was lost.", [
                       target(f"sum({rate('celery_stalk_workflow_orphan_tasks_total', job)})",
                              "orphan tasks"),
                       target(f"sum by (reason) "
                              f"({rate('celery_stalk_workflows_evicted_total', job)})",
                              "dropped: {{reason}}"),
                   ], "ops"),
    ]


# -- assembly -----------------------------------------------------------------------------


def variables() -> list[dict]:
    def query(name: str, expr: str, all_value: str | None = ".*") -> dict:
        v = {
            "name": name, "label": name, "type": "query", "datasource": DATASOURCE,
            "query": {"query": expr, "refId": f"{name}-values"}, "definition": expr,
            "refresh": 2, "includeAll": True, "multi": True, "sort": 1, "regex": "",
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
            "options": [], "hide": 0,
        }
        if all_value:
            v["allValue"] = all_value
        return v

    return [
        {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
         "current": {}, "options": [], "refresh": 1, "regex": "", "hide": 0},
        # "All" jobs means those that run celery-stalk, not every job in Prometheus.
        query("job", "label_values(celery_stalk_build_info, job)", all_value=None),
        query("queue", 'label_values(celery_queue_messages{job=~"$job"}, queue)'),
        query("task", 'label_values(celery_task_received_total{job=~"$job"}, task)'),
        query("worker", 'label_values(celery_worker_up{job=~"$job"}, worker)'),
    ]


def _layout(panels: list[dict]) -> list[dict]:
    """Place panels left to right, wrapping at Grafana's 24 columns; number them."""
    x = y = row_height = 0
    for number, p in enumerate(panels, start=1):
        w, h = p["gridPos"]["w"], p["gridPos"]["h"]
        if x + w > 24 or p["type"] == "row":
            x, y, row_height = 0, y + row_height, 0
        p["gridPos"] = {"h": h, "w": w, "x": x, "y": y}
        p["id"] = number
        x += w
        row_height = max(row_height, h)
        if p["type"] == "row":
            x, y, row_height = 0, y + h, 0
    return panels


def dashboard(uid: str, title: str, panels: list[dict], c: Config) -> dict:
    return {
        "uid": uid,
        "title": title,
        "description": "celery-stalk: Celery tasks, queues and workers. Generated by "
                       "celery-stalk mixin.",
        "tags": TAGS,
        "editable": True,
        "graphTooltip": 1,
        "refresh": c.dashboard_refresh,
        "schemaVersion": 39,
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "links": [{"type": "dashboards", "tags": ["celery-stalk"], "asDropdown": False,
                   "includeVars": True, "keepTime": True, "title": "Celery dashboards"}],
        "annotations": {"list": []},
        "templating": {"list": variables()},
        "panels": _layout(panels),
    }


def dashboards(c: Config) -> dict[str, dict]:
    """Dashboards by file name (without .json)."""
    _REPLICAS[:] = c.replica_labels
    built = {}
    for name, make in (("celery-overview", overview), ("celery-task", task),
                       ("celery-queue", queue), ("celery-worker", worker),
                       ("celery-beat-workflows", beat_and_workflows)):
        title, panels = make()
        built[name] = dashboard(f"celery-stalk-{name.removeprefix('celery-')}", title, panels, c)
    return built
