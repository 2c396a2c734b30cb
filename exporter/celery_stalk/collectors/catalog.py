"""The metric catalog: every metric the exporter emits, named, typed and documented once.

The collectors (one per file beside this one) build their families from it;
the README's metric table and the rule checks are generated from, or tested
against, it.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.core import (
    Metric as Family,
)

from ..model import TASK_EVENTS


@dataclass(frozen=True)
class Metric:
    name: str  # as exposed, counters with their _total
    kind: str  # counter | gauge | histogram
    labels: tuple[str, ...]
    help: str


_TASK = ("task", "queue")


# Task series only the exporter can tell, from the whole fleet's events (a worker cannot
# see its own loss): instrumented workers do not serve them.
FLEET_TASK_METRICS = ("celery_task_oldest_running_seconds", "celery_task_orphaned_total")

# Events that end a run of a task (README, "Failures, rejections and retries").
_ENDS = ("task-succeeded", "task-failed", "task-revoked", "task-rejected")


def task_counter(event: str) -> Metric:
    verb = event.removeprefix("task-")
    text = f"Tasks {verb}: count of {event} events"
    if event in _ENDS:
        text += ", one end per run of a task (a second end Celery sends for it is not counted)"
    if event == "task-failed":
        text += "; a raised Reject counts as rejected, not failed"
    return Metric(
        f"celery_task_{verb}_total", "counter", _TASK,
        f"{text}. Task name and queue joined on the task id.",
    )


CATALOG: dict[str, Metric] = {
    m.name: m
    for m in [
        *(task_counter(event) for event in TASK_EVENTS),
        Metric("celery_task_exceptions_total", "counter", _TASK + ("exception",),
               "Failed tasks by exception class name (never the message), from task-failed "
               "events; billiard's ExceptionWithTraceback is unwrapped from the traceback."),
        Metric("celery_task_runtime_seconds", "histogram", _TASK,
               "Task run time in seconds, from the runtime field of task-succeeded events."),
        Metric("celery_stalk_task_sent_missing_total", "counter", _TASK,
               "Runs of tasks that ended with no task-sent event seen for them: their "
               "producer runs without task_send_sent_event (or they were sent before the "
               "exporter started). Their queue comes from --task-route or another task-sent "
               "of the same name, else it is unknown. A task name with none in "
               "celery_task_sent_total: its producers send no task-sent events at all."),
        Metric("celery_task_queue_wait_seconds", "histogram", _TASK,
               "Seconds from task-sent (or the task's ETA/countdown, if later) to task-started, "
               "once per run: a retry from its own task-sent, a requeued message from its "
               "task-rejected; observed only for tasks whose task-sent event was seen."),
        Metric("celery_task_oldest_running_seconds", "gauge", _TASK,
               "Seconds the longest-running task of this name and queue has run so far: since "
               "the exporter received its task-started, with no end (succeeded, failed, "
               "revoked, rejected) or retry seen since. Absent when none runs."),
        Metric("celery_task_orphaned_total", "counter", _TASK,
               "Tasks reserved (task-received) or running (task-started) on a worker that was "
               "then lost (silent past --worker-timeout, no worker-offline): they will be "
               "redelivered, or are gone. A clean shutdown orphans nothing."),
        Metric("celery_queue_oldest_pending_seconds", "gauge", ("queue",),
               "Seconds the oldest task sent to the queue has waited for a worker: since the "
               "exporter received its task-sent (needs task_send_sent_event), with no "
               "task-received seen since. Absent when none waits; tasks past "
               "--max-tracked-tasks are not followed."),
        Metric("celery_queue_messages", "gauge", ("queue",),
               "Ready messages in the broker queue: Redis LLEN of the list and its priority "
               "sub-lists, RabbitMQ passive queue.declare (messages_ready of the management "
               "API with --rabbitmq-management-url)."),
        Metric("celery_queue_consumers", "gauge", ("queue",),
               "Consumers of the broker queue, from RabbitMQ passive queue.declare or the "
               "management API (not emitted on Redis, which cannot tell)."),
        Metric("celery_queue_oldest_message_age_seconds", "gauge", ("queue",),
               "Seconds the oldest message waiting in the queue has waited (absent when it is "
               "empty). Redis: the message at the consuming end of the list and of each "
               "priority sub-list (LINDEX -1), dated by its task's task-sent event when the "
               "exporter saw it, else by when the exporter first saw it there: then a lower "
               "bound. RabbitMQ with --rabbitmq-management-url: the management API's "
               "head_message_timestamp, present only if producers set the message timestamp."),
        Metric("celery_queue_messages_unacked", "gauge", ("queue",),
               "Messages delivered to consumers and not yet acknowledged (prefetched or "
               "running), from the RabbitMQ management API (--rabbitmq-management-url)."),
        Metric("celery_queue_consumer_utilisation", "gauge", ("queue",),
               "Share of time (0-1) the queue could deliver messages to its consumers at once, "
               "from the RabbitMQ management API; below 1, consumers are busy or prefetch "
               "limited. Absent when the broker does not report it (no consumers)."),
        Metric("celery_worker_up", "gauge", ("worker",),
               "1 if the worker's heartbeat was received within the timeout and it has not "
               "sent worker-offline, else 0. Judged by the exporter's own clock."),
        Metric("celery_worker_offline", "gauge", ("worker",),
               "1 if the worker's last event was worker-offline (a clean shutdown, as in a "
               "deploy or scale-down), else 0. A worker with celery_worker_up 0 and "
               "celery_worker_offline 0 was lost."),
        Metric("celery_worker_last_heartbeat_timestamp_seconds", "gauge", ("worker",),
               "When the exporter last received a worker-online/heartbeat/offline event from "
               "the worker (exporter's clock)."),
        Metric("celery_worker_tasks_active", "gauge", ("worker",),
               "Tasks the worker is executing, from the active field of its last heartbeat."),
        Metric("celery_worker_tasks_reserved", "gauge", ("worker",),
               "Tasks the worker has received (task-received) and not started: prefetched, "
               "including those waiting for an ETA or countdown. From task events (not emitted "
               "with --task-metrics-source workers: the workers serve their own)."),
        Metric("celery_worker_concurrency", "gauge", ("worker",),
               "The worker's pool size (max-concurrency), from Celery's inspect stats "
               "(every --inspect-interval). Absent for a worker that did not answer."),
        Metric("celery_worker_prefetch_limit", "gauge", ("worker",),
               "The most messages the worker takes before it acks any (Celery's prefetch_count: "
               "concurrency x worker_prefetch_multiplier, as it stands now), from Celery's "
               "inspect stats (every --inspect-interval). Named _limit, not _count: a gauge "
               "ending in _count reads as part of a histogram."),
        Metric("celery_worker_task_events_enabled", "gauge", ("worker",),
               "1 when task events arrive from the worker, 0 when its heartbeats show it "
               "taking tasks (processed growing, active rising) and no task event from it "
               "came within 30 s: it runs without -E / worker_send_task_events. Absent until "
               "it has processed a task since the exporter first heard it."),
        Metric("celery_worker_processed_total", "counter", ("worker",),
               "Tasks the worker has accepted, from the processed field of its heartbeats "
               "(works with task events off); a worker restart, which starts processed again "
               "from 0, does not make it go down."),
        Metric("celery_worker_clock_offset_seconds", "gauge", ("worker",),
               "How far the worker's clock is ahead of the exporter's (negative: behind): its "
               "events' timestamp minus the exporter's receive time, the largest of its last 8 "
               "heartbeats, so that delivery delay does not count."),
        Metric("celery_workers", "gauge", (),
               "Workers currently up (celery_worker_up == 1)."),
        Metric("celery_worker_lost_total", "counter", (),
               "Workers that stopped heartbeating without a worker-offline event (crash, "
               "SIGKILL, network loss). A clean shutdown does not count. Kept when the "
               "worker's own series are forgotten."),
        Metric("celery_workflow_started_total", "counter", ("workflow",),
               "Workflows started: sets of tasks sharing a root_id, counted when a second task "
               "of the root appears in task-sent/received events. workflow is the root task's "
               "name."),
        Metric("celery_workflow_finished_total", "counter", ("workflow", "outcome"),
               "Workflows finished: none of their tasks in flight for --workflow-settle. outcome "
               "is failed if any task of it ended in task-failed (or was rejected or revoked), "
               "else succeeded."),
        Metric("celery_workflow_duration_seconds", "histogram", ("workflow",),
               "Seconds from a finished workflow's start (its root's task-sent) to the last "
               "task-succeeded/failed of any of its tasks, from the events' timestamps."),
        Metric("celery_workflow_tasks", "histogram", ("workflow",),
               "Tasks per finished workflow (distinct task ids sharing its root_id)."),
        Metric("celery_workflows_in_flight", "gauge", ("workflow",),
               "Workflows started and not finished (including those settling)."),
        Metric("celery_workflow_oldest_in_flight_age_seconds", "gauge", ("workflow",),
               "Seconds since the oldest workflow in flight started (exporter's clock minus its "
               "root's task-sent timestamp)."),
        Metric("celery_workflow_task_failed_total", "counter", ("workflow", "task", "exception"),
               "Tasks of workflows that failed for good, by workflow, task and exception class "
               "(task-failed; Reject for task-rejected, TaskRevokedError for task-revoked)."),
        Metric("celery_beat_entry_info", "gauge", ("entry", "task", "schedule"),
               "Always 1: each beat schedule entry (from the app's beat_schedule or RedBeat's "
               "keys) with its task and schedule."),
        Metric("celery_beat_entry_last_run_timestamp_seconds", "gauge", ("entry",),
               "When the entry last ran: the timestamp of the task-sent (else task-received) event "
               "of a task matching its task name and argument reprs."),
        Metric("celery_beat_entry_next_run_timestamp_seconds", "gauge", ("entry",),
               "When the entry is due next, from Celery's schedule classes (timezone as the app "
               "sets it) or RedBeat's schedule; absent when it will not run again."),
        Metric("celery_beat_entry_last_missed_timestamp_seconds", "gauge", ("entry",),
               "The due time of the entry's latest missed run (see "
               "celery_beat_entry_missed_runs_total); absent until one is missed. Later than "
               "its last run: the entry has not run since."),
        Metric("celery_beat_entry_runs_total", "counter", ("entry",),
               "Runs of the entry seen: task-sent (else task-received) events matching its task "
               "name and arguments; duplicates included."),
        Metric("celery_beat_entry_missed_runs_total", "counter", ("entry",),
               "Due times of the entry passed by more than --beat-grace (exporter's clock) with no "
               "run sent."),
        Metric("celery_beat_entry_duplicate_runs_total", "counter", ("entry",),
               "Runs of the entry sent before their due time while the previous one ran: a second "
               "beat, or the same task and arguments sent by other code."),
        Metric("celery_beat_entry_delay_seconds", "histogram", ("entry",),
               "Seconds a run was sent after its due time (beat's clock; a missed run sent later "
               "counts from its own due time)."),
        Metric("celery_stalk_build_info", "gauge", ("version",),
               "Always 1; the exporter's version in the label."),
        Metric("celery_stalk_events_total", "counter", ("type",),
               "Celery events applied, by event type (other: types this version does not know)."),
        Metric("celery_stalk_events_invalid_total", "counter", ("reason",),
               "Messages or events that could not be applied and were skipped, by reason: "
               "not_json, too_deep (JSON nested deeper than any event), content_type, bad_envelope "
               "(not a kombu message), not_an_object, "
               "missing_type, missing_field (absent or wrongly typed), bad_value (empty, longer "
               "than 300 characters or not UTF-8), internal_error (a bug: see the log)."),
        Metric("celery_stalk_last_event_timestamp_seconds", "gauge", (),
               "When the exporter last applied an event (exporter's clock)."),
        Metric("celery_stalk_task_name_unknown_total", "counter", ("type",),
               "Task events whose task name could not be joined on the task id (the event "
               "carries none and no task-sent/received was seen); counted under task=\"unknown\"."),
        Metric("celery_stalk_queue_wait_clock_skew_total", "counter", (),
               "Queue waits that came out more than 1 s negative (observed as 0) or longer than "
               "30 days (not observed) because producer and worker clocks disagree."),
        Metric("celery_stalk_task_metrics_from_events", "gauge", (),
               "1 if this exporter counts task metrics from task events, 0 if it leaves them to "
               "instrumented workers (--task-metrics-source workers)."),
        Metric("celery_stalk_enable_events_broadcasts_total", "counter", ("result",),
               "enable_events broadcasts to the workers (--enable-events; absent when off), by "
               "result: sent, failed (the broker could not be reached)."),
        Metric("celery_stalk_tracked_tasks", "gauge", (),
               "Tasks in flight kept for joining events (bounded by --max-tracked-tasks)."),
        Metric("celery_stalk_tracked_tasks_evicted_total", "counter", (),
               "Tasks in flight dropped to stay within --max-tracked-tasks; their later "
               "events count as task name unknown."),
        Metric("celery_stalk_label_overflow_total", "counter", ("label",),
               "Values past the cap of distinct label values (--max-task-names, --max-queues, "
               "--max-exceptions), reported as \"other\"."),
        Metric("celery_stalk_label_forgotten_total", "counter", ("label",),
               "Label values forgotten, their series dropped, to make room for a new one once "
               "the cap was full: task names, queues and exception types idle for --label-ttl; "
               "workers (--max-workers) down longest, else heard from only once, else heard from "
               "least recently."),
        Metric("celery_stalk_workflows_evicted_total", "counter", ("reason",),
               "Open workflows dropped, not counted as finished: limit (past --max-workflows or "
               "--max-tracked-tasks tasks in open workflows), link_lost (the event stream was lost, "
               "and their events with it)."),
        Metric("celery_stalk_workflow_orphan_tasks_total", "counter", (),
               "Tasks with a root_id of another task that belong to no workflow followed: their "
               "root was never seen (the exporter started mid-workflow), or their workflow had "
               "already settled or was dropped."),
        Metric("celery_stalk_beat_schedule_up", "gauge", (),
               "1 if the last read of the beat schedule (RedBeat's keys) succeeded, else 0 (the "
               "schedule read before is kept). Absent when the schedule comes from the app."),
        Metric("celery_stalk_inspect_last_success_timestamp_seconds", "gauge", (),
               "When the last inspect stats broadcast (celery_worker_concurrency, "
               "celery_worker_prefetch_limit) got its answer (exporter's clock). Absent until "
               "the first one; not emitted with --inspect-interval 0."),
        Metric("celery_stalk_inspect_failures_total", "counter", (),
               "Inspect stats broadcasts that failed (broker unreachable or refused); the "
               "last answer is kept."),
        Metric("celery_stalk_broker_up", "gauge", (),
               "1 if this scrape's queue depth read from the broker succeeded (with "
               "--rabbitmq-management-url: the management API's last poll), else 0."),
        Metric("celery_stalk_queue_heads_invalid_total", "counter", ("reason",),
               "Messages at the head of a Redis queue that gave no Celery task id, skipped "
               "for celery_queue_oldest_message_age_seconds (counted once per message), by "
               "reason: not_json (not a kombu message), no_task_id, body_unreadable (task "
               "protocol 1 with a body that is not JSON)."),
        Metric("celery_stalk_rabbitmq_management_polls_failed_total", "counter", (),
               "Polls of the RabbitMQ management API (--rabbitmq-management-url) that failed: "
               "refused, timed out, rejected credentials or an answer that is not the queue list."),
        Metric("celery_stalk_rabbitmq_management_last_success_timestamp_seconds", "gauge", (),
               "When the last poll of the RabbitMQ management API succeeded (exporter's clock); "
               "absent until one has."),
        Metric("celery_stalk_events_connected", "gauge", (),
               "1 if the event consumer is connected to the broker and consuming, else 0."),
        Metric("celery_stalk_broker_reconnects_total", "counter", (),
               "Times the event consumer reconnected to the broker after losing it (an error, "
               "or a stall)."),
        Metric("celery_stalk_events_stalls_total", "counter", (),
               "Times no event at all arrived for --events-stall-timeout while workers were up "
               "(a half-open connection or a pub/sub subscription lost in a broker failover), "
               "so the event consumer reconnected."),
        Metric("celery_stalk_http_connections", "gauge", (),
               "HTTP connections open now, sending a request or being answered (at most "
               "--web-max-connections; more wait in the listen backlog)."),
        Metric("celery_stalk_http_rejected_total", "counter", ("reason",),
               "HTTP connections or requests turned away before any handler ran, by reason: "
               "client_connection_limit (--web-max-client-connections open from that address; "
               "refused at once), evicted_slow (still sending its request after 0.25 s, closed "
               "to make room while --web-max-connections are open), read_timeout (TLS handshake "
               "and request head not received within --web-read-timeout), too_large (request "
               "head over 16 KiB, or a request body), bad_request (not HTTP), tls_handshake "
               "(failed TLS handshake)."),
        Metric("celery_stalk_http_auth_failures_total", "counter", (),
               "Basic auth attempts with a wrong user or password."),
        Metric("celery_stalk_http_auth_throttled_total", "counter", ("reason",),
               "Basic auth attempts answered 429 without checking the password, by reason: "
               "client_failures (the client address used up --web-auth-max-failures wrong "
               "passwords a minute), busy (--web-auth-max-concurrent password checks running)."),
        Metric("celery_stalk_collector_success", "gauge", ("collector",),
               "1 if the collector succeeded in this scrape, else 0."),
        Metric("celery_stalk_collector_duration_seconds", "gauge", ("collector",),
               "Seconds the collector took in this scrape."),
    ]
}


def family(name: str) -> Family:
    """An empty metric family for a catalog entry."""
    m = CATALOG[name]
    if m.kind == "counter":
        return CounterMetricFamily(name.removesuffix("_total"), m.help, labels=m.labels)
    if m.kind == "histogram":
        return HistogramMetricFamily(name, m.help, labels=m.labels)
    return GaugeMetricFamily(name, m.help, labels=m.labels)


def single(name: str, value: float) -> Family:
    fam = family(name)
    fam.add_metric([], value)
    return fam


def labelled(name: str, values: dict[str, int]) -> Family:
    fam = family(name)
    for label, value in sorted(values.items()):
        fam.add_metric([label], value)
    return fam


def catalog_markdown(catalog: dict[str, Metric] = CATALOG) -> str:
    """The README's metric table, generated from CATALOG (or another catalog)."""
    rows = ["| metric | type | labels | meaning |", "| --- | --- | --- | --- |"]
    for m in catalog.values():
        labels = ", ".join(f"`{label}`" for label in m.labels) or "—"
        rows.append(f"| `{m.name}` | {m.kind} | {labels} | {m.help} |")
    return "\n".join(rows)
