"""Prometheus recording and alerting rules for celery-stalk, and their runbook.

Every alert carries severity, summary, description (templated with its labels) and a
runbook_url to its section of alerts/runbook.md, which is rendered from the same
definitions so the thresholds it quotes are the ones in the rules.

Conventions in the expressions: aggregations use ``without (...)`` so the target's own
labels (job, instance, namespace, pod...) survive; counters are read through rate/increase,
never averaged; series that appear only after their first event (failures, exceptions,
per-type event counts) are handled so that their absence cannot silence an alert.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import Config, seconds

TIME_LIMIT_EXCEPTIONS = "SoftTimeLimitExceeded|TimeLimitExceeded"
# Events only workers send: their absence means workers run without -E.
WORKER_TASK_EVENTS = "task-(received|started|succeeded|failed)"


@dataclass(frozen=True)
class Recording:
    group: str
    record: str
    expr: str


@dataclass(frozen=True)
class Alert:
    group: str
    name: str
    expr: str
    severity: str  # critical | warning | info
    summary: str
    description: str
    when: str  # README and runbook: the condition in one line, with thresholds
    meaning: str  # runbook: what it means
    confirm: str  # runbook: how to confirm
    fix: str  # runbook: how to fix
    for_: str | None = None


def _sel(c: Config, metric: str, *matchers: str) -> str:
    return f"{metric}{{{', '.join((c.selector, *matchers))}}}"


def _span(total: int) -> str:
    return f"{total // 60} minutes" if total % 60 == 0 else f"{total} seconds"


class Names:
    """Recording rule names; the window is part of the name, as Prometheus convention asks."""

    def __init__(self, c: Config):
        self.worker_lost = "worker:celery_worker_lost:bool"
        self.failed = f"task:celery_task_failed:increase{c.failure_window}"
        self.outcomes = f"task:celery_task_outcomes:increase{c.failure_window}"
        self.wait_p95 = f"queue:celery_task_queue_wait_seconds:p95_rate{c.queue_wait_window}"
        self.time_limit_hits = f"task:celery_task_time_limit_hits:increase{c.time_limit_window}"


def recording_rules(c: Config) -> list[Recording]:
    n = Names(c)
    limits = _sel(c, "celery_task_exceptions_total", f'exception=~"{TIME_LIMIT_EXCEPTIONS}"')
    wait_buckets = _sel(c, "celery_task_queue_wait_seconds_bucket")
    w = c.time_limit_window
    return [
        # 1 while the worker is down without having said goodbye (worker-offline),
        # 0 while it is up or cleanly shut down.
        Recording("workers", n.worker_lost, f"""\
(1 - {_sel(c, "celery_worker_up")}) * (1 - {_sel(c, "celery_worker_offline")})"""),
        Recording("tasks", n.failed, f"""\
sum without (queue) (increase({_sel(c, "celery_task_failed_total")}[{c.failure_window}]))"""),
        # succeeded + failed, for tasks that failed in the window. A task that never
        # succeeded has no succeeded series at all: it counts as 0, not as absent.
        Recording("tasks", n.outcomes, f"""\
{n.failed}
+
(
    sum without (queue) (increase({_sel(c, "celery_task_succeeded_total")}[{c.failure_window}]))
  or
    {n.failed} * 0
)"""),
        Recording("queues", n.wait_p95, f"""\
histogram_quantile(0.95,
  sum without (task) (rate({wait_buckets}[{c.queue_wait_window}]))
)"""),
        # increase() cannot see the first hit of a task: that series is created at 1.
        # A series that did not exist one window ago, from an exporter that did, is
        # counted whole; the guard keeps a fresh Prometheus or a long scrape gap quiet.
        Recording("tasks", n.time_limit_hits, f"""\
increase({limits}[{w}]) > 0
or
(
    (
        {limits}
      unless
        {limits} offset {w}
    )
  and ignoring (task, queue, exception)
    group without (version) ({_sel(c, "celery_stalk_build_info")} offset {w})
)"""),
    ]


def alerts(c: Config) -> list[Alert]:
    n = Names(c)
    return [
        Alert(
            group="exporter",
            name="CeleryExporterDown",
            expr=f'{_sel(c, "up")} == 0\nor\nabsent({_sel(c, "up")})',
            for_=c.exporter_down_for,
            severity="critical",
            summary="The celery-stalk exporter is down or not scraped.",
            description=(
                "Prometheus has not scraped celery-stalk"
                "{{ with $labels.instance }} at {{ . }}{{ end }} for " + c.exporter_down_for
                + ": every other Celery alert is blind until it is back."
            ),
            when=f"the exporter's target is down or absent for {c.exporter_down_for}",
            meaning=(
                "Prometheus cannot scrape the exporter (`up == 0`), or no target matches "
                f"`{c.selector}` at all. While it lasts no Celery alert can fire, including "
                "the ones for lost workers and unconsumed queues."
            ),
            confirm=(
                "Open Prometheus' *Status → Targets* page and find the celery-stalk target: "
                "the error column says why the scrape fails. `curl http://EXPORTER:9808/healthz` "
                "from the Prometheus host tells a dead process from a network problem."
            ),
            fix=(
                "Restart the exporter and read its log: a bad flag fails at start with one line "
                "naming the fix. If the target is missing, check the scrape config or "
                "ServiceMonitor labels, and that the job name matches the rules' selector "
                f"(`{c.selector}`; change it in `mixin/config.py` and run `python -m mixin`)."
            ),
        ),
        Alert(
            group="exporter",
            name="CeleryBrokerUnreachable",
            expr=(f'{_sel(c, "celery_stalk_broker_up")} == 0\nor\n'
                  f'{_sel(c, "celery_stalk_events_connected")} == 0'),
            for_=c.broker_unreachable_for,
            severity="critical",
            summary="celery-stalk cannot read the Celery broker.",
            description=(
                "celery-stalk {{ $labels.instance }} has not been able to read the broker for "
                + c.broker_unreachable_for + " (queue depth read failing, or the event "
                "consumer disconnected). Workers on the same broker probably cannot get tasks "
                "either."
            ),
            when=(
                "the exporter's broker read fails or its event consumer is "
                f"disconnected for {c.broker_unreachable_for}"
            ),
            meaning=(
                "The exporter's queue depth read fails (`celery_stalk_broker_up 0`) or its "
                "event consumer is disconnected (`celery_stalk_events_connected 0`). Queue and "
                "worker metrics are stale meanwhile; the exporter keeps the last worker verdicts "
                "instead of declaring the fleet dead."
            ),
            confirm=(
                "The exporter log names the error of each failed read and reconnect. "
                "`/readyz` answers 503 while disconnected. Try the broker from the same host: "
                "`redis-cli -u URL ping` or `rabbitmq-diagnostics -q ping`."
            ),
            fix=(
                "Restore the broker or the network path to it (DNS, firewall, TLS, "
                "credentials). If only the exporter cannot reach it, check its --broker-url "
                "and --queue-read-timeout. The exporter reconnects by itself."
            ),
        ),
        Alert(
            group="exporter",
            name="CeleryEventsStalled",
            expr=_events_stalled(c),
            for_=c.events_stalled_for,
            severity="warning",
            summary="Celery workers run tasks but celery-stalk receives no task events.",
            description=(
                "celery-stalk {{ $labels.instance }} has received no task events from workers "
                f"for {c.events_stalled_window}, while workers run tasks. Start the workers with "
                "-E or set worker_send_task_events = True (at runtime: celery -A proj control "
                "enable_events). If they already send events, the exporter's event consumer is "
                "stuck: restart it."
            ),
            when=(
                "workers run tasks (heartbeats, or the broker shows queues consumed) "
                f"but no task event arrived for {c.events_stalled_window}, for "
                f"{c.events_stalled_for}"
            ),
            meaning=(
                "Task metrics (throughput, failures, run time, wait) come only from Celery's task "
                "events, which workers send only when started with `-E` or with "
                "`worker_send_task_events = True`. This fires when the evidence says tasks run "
                f"but none of their events arrived for {c.events_stalled_window}: either "
                "heartbeats "
                "report tasks executing (`celery_worker_tasks_active`) yet no task-received/"
                "started/succeeded/failed event came, or the exporter heard no event at all while "
                "the broker shows the queues being consumed (RabbitMQ consumers, or a Redis queue "
                "depth that keeps going down)."
            ),
            confirm=(
                "`celery -A proj inspect active` shows tasks running; "
                "`celery_stalk_events_total` by type shows worker-heartbeat growing but no "
                "task-* types, or nothing at all. `celery -A proj events` on the same broker "
                "shows whether task events exist."
            ),
            fix=(
                "Add `-E` to the worker command or `worker_send_task_events = True` to the "
                "Celery config and restart the workers; `celery -A proj control enable_events` "
                "turns events on until the next restart. If events do exist, restart the "
                "exporter and report it as a bug: its consumer should never be stuck. Redis drops a "
                "subscriber whose output buffer overflows (`client-output-buffer-limit pubsub`)."
            ),
        ),
        Alert(
            group="workers",
            name="CeleryWorkerLost",
            expr=f"""\
max_over_time({n.worker_lost}[{c.worker_lost_window}]) == 1
or ignoring (worker)
increase({_sel(c, "celery_worker_lost_total")}[{c.worker_lost_window}]) > 0""",
            severity="warning",
            summary="A Celery worker stopped heartbeating without a clean shutdown.",
            description=(
                "{{ if $labels.worker }}Celery worker {{ $labels.worker }} stopped heartbeating"
                "{{ else }}{{ $value | printf \"%.0f\" }} Celery worker(s) stopped heartbeating"
                "{{ end }} without a clean shutdown (no worker-offline) in the last "
                + c.worker_lost_window + ": crashed, killed (OOM, SIGKILL) or cut off from the "
                "broker. Its tasks in flight may be lost."
                "{{ if not $labels.worker }} The exporter no longer has their series, so their "
                "names are unknown here.{{ end }}"
            ),
            when=(
                "a worker stopped heartbeating without worker-offline; fires for "
                f"{c.worker_lost_window} after the loss, named while the exporter "
                "keeps its series"
            ),
            meaning=(
                "The exporter stopped receiving a worker's heartbeats for longer than "
                "`--worker-timeout` (20 s, and at least 2.5 heartbeat intervals) and the worker "
                "never sent `worker-offline`. A clean shutdown (SIGTERM, a deploy, a scale-down) "
                "sends `worker-offline` and does not page. The alert names the worker from "
                "`celery_worker_up`/`celery_worker_offline` while the exporter keeps its series "
                "(`--worker-ttl`), and still fires from the fleet counter "
                "`celery_worker_lost_total` without a name once they are forgotten. It keeps "
                f"firing for {c.worker_lost_window} after the loss, even if the worker came back "
                "under the same name, because the tasks it held may be lost either way."
            ),
            confirm=(
                "Look for the worker's process or pod: an OOM kill shows in `dmesg` or as "
                "`OOMKilled` in `kubectl describe pod`; a node failure in the node's events. "
                "A shutdown slower than the orchestrator's grace period (Kubernetes "
                "`terminationGracePeriodSeconds`, 30 s by default) ends in SIGKILL and counts "
                "as lost. If every worker is reported lost at once, check first that the "
                "exporter still receives events (`celery_stalk_last_event_timestamp_seconds`): "
                "a deaf exporter looks like a dead fleet. Workers running the solo pool send no "
                "heartbeats while a task runs, so tasks longer than the timeout look like losses."
            ),
            fix=(
                "Give workers the memory they use (or lower `worker_max_memory_per_child`), "
                "give warm shutdown enough grace to finish tasks, and use `acks_late` with "
                "`task_reject_on_worker_lost` for tasks that must not be lost. For the solo pool, "
                "raise `--worker-timeout` above your longest task."
            ),
        ),
        Alert(
            group="queues",
            name="CeleryQueueNoConsumers",
            expr=_no_consumers(c),
            for_=c.no_consumers_for,
            severity="critical",
            summary="A Celery queue has a backlog and nothing consumes it.",
            description=(
                "Queue {{ $labels.queue }} holds {{ $value | humanize }} messages and nothing "
                "consumes it: RabbitMQ reports no consumers, or (Redis) no worker has received "
                "a task from it in " + c.no_consumers_window + ". Tasks sent to it are not run."
            ),
            when=(
                "a queue holds messages and has no consumers (RabbitMQ), or none of "
                f"its tasks was received for {c.no_consumers_window} (Redis), for "
                f"{c.no_consumers_for}"
            ),
            meaning=(
                "On RabbitMQ the broker counts the queue's consumers: this fires when it holds "
                "messages and has none. Redis cannot tell consumers, so there it fires when the "
                f"queue held messages for all of {c.no_consumers_window} and no worker received a "
                "task from it (no `task-received` event for that queue) in that time. The Redis "
                "rule judges only queues whose `task-sent` events the exporter has seen since "
                "the start of the window (`task_send_sent_event = True` on producers): without "
                "them a received task cannot be tied to its queue."
            ),
            confirm=(
                "`celery -A proj inspect active_queues` lists the queues each worker consumes. "
                "A typo in a route, a queue missing from `-Q`, or a worker pool scaled to zero "
                "are the usual causes. On Redis, a queue whose workers are all busy with tasks "
                f"longer than {c.no_consumers_window} also takes nothing new: check "
                "`celery_worker_tasks_active`."
            ),
            fix=(
                "Start workers for the queue (`celery -A proj worker -Q QUEUE`) or fix the "
                "route that sends tasks there. If the queue is not meant to be consumed, "
                "exclude it from the rule's selector."
            ),
        ),
        Alert(
            group="queues",
            name="CeleryQueueBacklogGrowing",
            expr=f"""\
deriv({_sel(c, "celery_queue_messages")}[{c.backlog_window}]) * 60 > 0
and
{_sel(c, "celery_queue_messages")} >= {c.backlog_min_messages}""",
            for_=c.backlog_for,
            severity="warning",
            summary=("A Celery queue's backlog keeps growing: tasks arrive faster than they "
                     "are taken."),
            description=(
                "Queue {{ $labels.queue }} has grown for " + c.backlog_for + " (by "
                "{{ $value | humanize }} messages per minute over the last " + c.backlog_window
                + "): tasks arrive faster than the workers take them."
            ),
            when=(
                f"a queue's depth trends up over {c.backlog_window}, for "
                f"{c.backlog_for}, with at least {c.backlog_min_messages} messages"
            ),
            meaning=(
                "The queue's depth (`celery_queue_messages`, from the broker) has a rising "
                f"trend over {c.backlog_window}, continuously for {c.backlog_for}, and holds at "
                f"least {c.backlog_min_messages} messages. A depth rises exactly when arrivals "
                "outpace what workers take, on Redis and RabbitMQ alike, with or without task "
                "events. A burst that drains stops rising before the alert fires, and a large "
                "but steady or shrinking backlog does not fire at all."
            ),
            confirm=(
                "The *Celery / Queue* dashboard shows depth, arrivals (task-sent) and "
                "consumption (task-received) per queue. Check whether throughput dropped "
                "(slower tasks, failing dependency, fewer workers) or arrivals rose."
            ),
            fix=(
                "Add workers or concurrency for the queue, or find why tasks got slower "
                "(runtime p95 on the *Celery / Task* dashboard). Spread a flood of low-priority "
                "tasks over time or to their own queue."
            ),
        ),
        Alert(
            group="queues",
            name="CeleryQueueWaitHigh",
            expr=f"{n.wait_p95} > {c.queue_wait_p95_seconds:g}",
            for_=c.queue_wait_for,
            severity="warning",
            summary="Tasks wait too long in a Celery queue before they start.",
            description=(
                "The 95th percentile of queue wait in {{ $labels.queue }} is "
                "{{ $value | humanizeDuration }} over the last " + c.queue_wait_window
                + f" (threshold {c.queue_wait_p95_seconds:g} s): tasks wait that long between "
                "being sent and starting."
            ),
            when=(
                f"a queue's p95 wait from sent to started over {c.queue_wait_window} "
                f"is above {c.queue_wait_p95_seconds:g} s, for {c.queue_wait_for}"
            ),
            meaning=(
                "`celery_task_queue_wait_seconds` measures from `task-sent` (or a task's ETA) to "
                f"`task-started`. Its p95 over {c.queue_wait_window}, across the queue's tasks, "
                f"has been above {c.queue_wait_p95_seconds:g} s for {c.queue_wait_for}. Queues "
                "with no task started in the window have no p95 and do not fire."
            ),
            confirm=(
                "The *Celery / Queue* dashboard shows wait percentiles next to depth and "
                "consumption. A deep queue with steady consumption is under-provisioned; a "
                "shallow queue with high wait points at prefetching workers busy with long "
                "tasks (`worker_prefetch_multiplier`)."
            ),
            fix=(
                "Add workers or concurrency, move long tasks to their own queue, and lower "
                "`worker_prefetch_multiplier` (1 with `acks_late` for long tasks) so short "
                "tasks do not wait behind long ones."
            ),
        ),
        Alert(
            group="tasks",
            name="CeleryTaskFailureRatioHigh",
            expr=f"""\
{n.failed} / {n.outcomes} > {c.failure_ratio:g}
and
{n.outcomes} >= {c.failure_min_tasks}""",
            for_=c.failure_for,
            severity="warning",
            summary="A Celery task fails too often.",
            description=(
                "{{ $value | humanizePercentage }} of {{ $labels.task }} tasks failed in the "
                "last " + c.failure_window + f" (threshold {c.failure_ratio:.0%}, counting "
                "terminal failures only, not retries)."
            ),
            when=(
                f"a task's terminal failures over finished tasks in {c.failure_window} "
                f"are above {c.failure_ratio:.0%} with at least {c.failure_min_tasks} "
                f"finished, for {c.failure_for}"
            ),
            meaning=(
                "Terminal failures (`task-failed`: the task raised and will not be retried) over "
                "all finished tasks (succeeded + failed) of one task name, over "
                f"{c.failure_window}, above {c.failure_ratio:.0%} for {c.failure_for}, with at "
                f"least {c.failure_min_tasks} tasks finished in the window. Retries are "
                "`task-retried` and do not count. A single failure, or a burst of failures "
                f"shorter than {_span(seconds(c.failure_for) - seconds(c.failure_window))}, "
                "does not page."
            ),
            confirm=(
                "The *Celery / Task* dashboard shows failures by exception type for the task; "
                "the worker log has the tracebacks (the exporter never records exception "
                "messages)."
            ),
            fix=(
                "Fix the cause the exception names: a failing dependency, bad input, a bug "
                "shipped in the last deploy. Transient errors deserve `autoretry_for` with "
                "backoff so they stop being terminal."
            ),
        ),
        Alert(
            group="tasks",
            name="CeleryTaskTimeLimitHit",
            expr=f"{n.time_limit_hits} > 0",
            severity="warning",
            summary="Celery tasks are being stopped by their time limit.",
            description=(
                "{{ $labels.task }} (queue {{ $labels.queue }}) failed with "
                "{{ $labels.exception }} {{ $value | printf \"%.0f\" }} time(s) in the last "
                + c.time_limit_window + ": it ran past its time limit."
            ),
            when=(
                "a task failed with SoftTimeLimitExceeded or TimeLimitExceeded; fires "
                f"for {c.time_limit_window} after each"
            ),
            meaning=(
                "Tasks failed with `SoftTimeLimitExceeded` (the soft limit raised inside the "
                "task and it did not handle it) or `TimeLimitExceeded` (the hard limit killed "
                "the pool process), from `celery_task_exceptions_total`. Any such failure "
                f"fires, and the alert stays for {c.time_limit_window} after the last one."
            ),
            confirm=(
                "Compare the task's runtime p95/p99 on the *Celery / Task* dashboard with its "
                "`soft_time_limit`/`time_limit`. The worker log shows which calls were cut off."
            ),
            fix=(
                "Find what made the task slow (a dependency, input size), split the work, or "
                "raise the limit if the work legitimately takes longer. Handle "
                "`SoftTimeLimitExceeded` in the task to clean up before the hard limit."
            ),
        ),
    ]


def _events_stalled(c: Config) -> str:
    w = c.events_stalled_window
    task_events = _sel(c, "celery_stalk_events_total", f'type=~"{WORKER_TASK_EVENTS}"')
    return f"""\
(
    sum without (worker) (
        max_over_time({_sel(c, "celery_worker_tasks_active")}[{w}]) > 0
      and
        {_sel(c, "celery_worker_up")} == 1
    )
  unless
    sum without (type) (increase({task_events}[{w}])) > 0
)
or
(
    (
        time() - {_sel(c, "celery_stalk_last_event_timestamp_seconds")} > {seconds(w)}
      or
        group without (version) ({_sel(c, "celery_stalk_build_info")})
          unless {_sel(c, "celery_stalk_last_event_timestamp_seconds")}
    )
  and
    (
        sum without (queue) ({_sel(c, "celery_queue_consumers")}) > 0
      or
        sum without (queue) (
          resets({_sel(c, "celery_queue_messages")}[{w}]) unless {_sel(c, "celery_queue_consumers")}
        ) >= 2
    )
)"""


def _no_consumers(c: Config) -> str:
    w = c.no_consumers_window
    return f"""\
(
    {_sel(c, "celery_queue_messages")} > 0
  and
    {_sel(c, "celery_queue_consumers")} == 0
)
or
(
    min_over_time({_sel(c, "celery_queue_messages")}[{w}]) > 0
  and
    sum without (task) ({_sel(c, "celery_task_sent_total")} offset {w})
  unless
    {_sel(c, "celery_queue_consumers")}
  unless
    sum without (task) (increase({_sel(c, "celery_task_received_total")}[{w}])) > 0
)"""


GROUPS = ("exporter", "workers", "queues", "tasks")


def rule_groups(c: Config) -> dict:
    """The rule file as a plain structure, ready for YAML.

    A group's rules are evaluated in order, so each alert sits in the group of the
    recording rules it reads, after them: it never sees a value one interval old.
    """
    groups = {name: [] for name in GROUPS}
    for r in recording_rules(c):
        groups[r.group].append({"record": r.record, "expr": r.expr})
    for a in alerts(c):
        rule = {"alert": a.name, "expr": a.expr}
        if a.for_:
            rule["for"] = a.for_
        rule["labels"] = {"severity": a.severity}
        rule["annotations"] = {
            "summary": a.summary,
            "description": a.description,
            "runbook_url": f"{c.runbook_url}#{a.name.lower()}",
        }
        groups[a.group].append(rule)
    return {"groups": [{"name": f"celery-stalk.{name}", "rules": rules}
                       for name, rules in groups.items()]}


def runbook(c: Config) -> str:
    parts = [
        "# celery-stalk alert runbook",
        "",
        "One section per alert in `alerts/celery-stalk.rules.yml`: what it means, how to confirm "
        "it, how to fix it. Generated by `python -m mixin` from `mixin/alerts.py`; the "
        "thresholds quoted are the shipped defaults from `mixin/config.py`.",
    ]
    for a in alerts(c):
        parts += [
            "",
            f"## {a.name}",
            "",
            f"**Severity:** {a.severity}. **Fires when** {a.when}.",
            "",
            f"**Meaning.** {a.meaning}",
            "",
            f"**Confirm.** {a.confirm}",
            "",
            f"**Fix.** {a.fix}",
        ]
    return "\n".join(parts) + "\n"


def alert_table(c: Config) -> str:
    """The README's table of alerts."""
    rows = ["| alert | severity | what it means | fires when |", "| --- | --- | --- | --- |"]
    for a in alerts(c):
        link = f"[`{a.name}`](alerts/runbook.md#{a.name.lower()})"
        rows.append(f"| {link} | {a.severity} | {a.summary} | {a.when} |")
    return "\n".join(rows)
