"""Prometheus recording and alerting rules for celery-stalk, and their runbook.

Every alert carries severity, summary, description (templated with its labels) and a
runbook_url to its section of alerts/runbook.md, which is rendered from the same
definitions so the thresholds and page times it quotes are the ones in the rules.

Conventions in the expressions:
- Exporters may run in HA pairs on one broker: every symptom is computed per exporter,
  then aggregated over the replica labels (``max without (instance, pod)``), so a pair
  pages once and either one alone keeps the alert going.
- A target can die: every symptom is matched against ``up == 1`` of its own exporter
  before the aggregation. A dead exporter's series go stale at once, but rules over range
  windows would keep reading its last samples for the whole window; the guard drops them.
- Aggregations use ``without (...)`` so the target's own labels (job, namespace...) survive;
  counters are read through rate/increase, never averaged; series that appear only after
  their first event (failures, exceptions) are handled so their absence cannot silence an
  alert.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import Config, seconds, span

TIME_LIMIT_EXCEPTIONS = "SoftTimeLimitExceeded|TimeLimitExceeded"
# Events only workers send: their absence means workers run without -E.
WORKER_TASK_EVENTS = "task-(received|started|succeeded|failed)"
# The page times quoted assume Prometheus scrapes and evaluates every 30 s.
SCRAPE = 30


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
    pages: str  # runbook: how fast it pages and why that window
    meaning: str  # runbook: what it means
    confirm: str  # runbook: how to confirm
    fix: str  # runbook: how to fix
    for_: str | None = None


def _sel(c: Config, metric: str, *matchers: str) -> str:
    return f"{metric}{{{', '.join((c.selector, *matchers))}}}"


def _indent(expr: str, by: int = 2) -> str:
    return "\n".join(" " * by + line if line else line for line in expr.splitlines())


def _replicas(c: Config) -> str:
    return ", ".join(c.replica_labels)


def _target(c: Config) -> str:
    """The labels that name one exporter's target, to match its `up` on."""
    return ", ".join(("job", *(label for label in c.replica_labels if label != "job")))


def _live(c: Config, expr: str) -> str:
    """``expr`` for exporters whose target is up now: a dead one's last samples page nothing."""
    return f"(\n{_indent(expr)}\n)\nand on ({_target(c)})\n  {_sel(c, 'up')} == 1"


def _once(c: Config, expr: str) -> str:
    """One series per condition however many exporters watch the broker, from live ones."""
    return f"max without ({_replicas(c)}) (\n{_indent(_live(c, expr))}\n)"


def _within(*durations: str) -> str:
    """How long after the fault the alert fires: one scrape to see it, then the durations."""
    total = SCRAPE + sum(seconds(d) for d in durations)
    if total % 60 == 0:
        return f"{total // 60} minutes"
    if total % 30 == 0:
        return f"{total / 60:g} minutes"
    return f"{total} seconds"


class Names:
    """Recording rule names; the window is part of the name, as Prometheus convention asks."""

    def __init__(self, c: Config):
        self.worker_lost = "worker:celery_worker_lost:bool"
        self.wait_p95 = f"queue:celery_task_queue_wait_seconds:p95_rate{c.queue_wait_window}"
        self.time_limit_hits = "task:celery_task_time_limit_hits:new"

    @staticmethod
    def failed(window: str) -> str:
        return f"task:celery_task_failed:increase{window}"

    @staticmethod
    def outcomes(window: str) -> str:
        return f"task:celery_task_outcomes:increase{window}"

    def ratio(self, window: str) -> str:
        return f"{self.failed(window)} / {self.outcomes(window)}"


def recording_rules(c: Config) -> list[Recording]:
    from . import beat, inflight, workflows  # their rules read helpers of this module

    n = Names(c)
    limits = _sel(c, "celery_task_exceptions_total", f'exception=~"{TIME_LIMIT_EXCEPTIONS}"')
    wait_buckets = _sel(c, "celery_task_queue_wait_seconds_bucket")
    rules = [
        # 1 while the worker is down without having said goodbye (worker-offline),
        # 0 while it is up or cleanly shut down.
        Recording("workers", n.worker_lost, f"""\
(1 - {_sel(c, "celery_worker_up")}) * (1 - {_sel(c, "celery_worker_offline")})"""),
        Recording("queues", n.wait_p95, f"""\
histogram_quantile(0.95,
  sum without (task) (rate({wait_buckets}[{c.queue_wait_window}]))
)"""),
        *beat.recording_rules(c),
        *workflows.recording_rules(c),
        *inflight.recording_rules(c),
    ]
    windows = dict.fromkeys((c.failure_fast_window, c.failure_slow_short_window,
                             c.failure_slow_window))
    for window in windows:
        rules += [
            Recording("tasks", n.failed(window), f"""\
sum without (queue) (increase({_sel(c, "celery_task_failed_total")}[{window}]))"""),
            # succeeded + failed, for tasks that failed in the window. A task that never
            # succeeded has no succeeded series at all: it counts as 0, not as absent.
            Recording("tasks", n.outcomes(window), f"""\
{n.failed(window)}
+
(
    sum without (queue) (increase({_sel(c, "celery_task_succeeded_total")}[{window}]))
  or
    {n.failed(window)} * 0
)"""),
        ]
    # A time-limit hit, at the first evaluation that sees it: the counter differs from
    # what it was one lookback ago (it grew, or the exporter restarted and was hit again),
    # or the series appeared since then. increase() cannot see a series' first sample, so
    # it would miss the first hit of every task. An appeared series counts only if the
    # exporter was scraped in the window before: a fresh Prometheus, or an exporter back
    # from a long gap, shows old hits as new series.
    rules.append(Recording("tasks", n.time_limit_hits,
                           new_since(c, limits, c.time_limit_lookback, c.time_limit_window)))
    return rules


def new_since(c: Config, counter: str, lookback: str, window: str) -> str:
    """The series of ``counter`` that moved since ``lookback`` ago: it differs (grew, or its
    exporter restarted and counted again), or it appeared since then while its exporter was
    scraped in the ``window`` before (a fresh Prometheus, or an exporter back from a long
    gap, shows old counts as new series)."""
    return f"""\
(
    {counter}
  !=
    {counter} offset {lookback}
)
or
(
    (
        {counter}
      unless
        {counter} offset {lookback}
    )
  and on ({_target(c)})
    max_over_time({_sel(c, "up")}[{window}] offset {lookback}) == 1
)"""


def alerts(c: Config) -> list[Alert]:
    from . import beat, inflight, workflows  # their alerts read helpers of this module

    n = Names(c)
    fast, slow, short = c.failure_fast_window, c.failure_slow_window, c.failure_slow_short_window
    return [
        Alert(
            group="exporter",
            name="CeleryExporterDown",
            expr=f'{_sel(c, "up")} == 0\nor\nabsent({_sel(c, "up")})',
            for_=c.exporter_down_for,
            severity="critical",
            summary="A celery-stalk exporter is down or not scraped.",
            description=(
                "Prometheus has not scraped celery-stalk"
                "{{ with $labels.instance }} at {{ . }}{{ end }} for " + c.exporter_down_for
                + ". Alerts that need its samples are blind unless another exporter watches "
                "the same broker."
            ),
            when=f"an exporter's target is down, or no target matches at all, for "
                 f"{c.exporter_down_for}",
            pages=(
                f"Within {_within(c.exporter_down_for)} of the exporter's death: one scrape to "
                f"see `up` drop, then `for: {c.exporter_down_for}`. An exporter restarts in "
                "seconds, and a rolling update of an HA pair replaces one pod at a time, so "
                f"neither lasts {span(c.exporter_down_for)}; anything longer leaves the "
                "symptom alerts blind."
            ),
            meaning=(
                "Prometheus cannot scrape this exporter (`up == 0`), or no target matches "
                f"`{c.selector}` at all. Each exporter of an HA pair pages for itself: the "
                "other keeps the symptom alerts working meanwhile. With no exporter left, no "
                "Celery alert can fire, including the ones for lost workers and unconsumed "
                "queues. A dead exporter's last samples never start other alerts: every rule "
                "reads only exporters whose `up` is 1."
            ),
            confirm=(
                "Open Prometheus' *Status → Targets* page and find the celery-stalk target: "
                "the error column says why the scrape fails. `curl http://EXPORTER:9808/healthz` "
                "from the Prometheus host tells a dead process from a network problem."
            ),
            fix=(
                "Restart the exporter and read its log: a bad flag fails at start with one line "
                "naming the fix. If the target is missing, check the scrape config or "
                "ServiceMonitor labels, and that the job matches the rules' selector "
                f"(`{c.selector}`; write rules for yours with "
                "`celery-stalk mixin --selector 'job=\"...\"' --out DIR`)."
            ),
        ),
        Alert(
            group="exporter",
            name="CeleryBrokerUnreachable",
            expr=_once(c, f"""\
{_sel(c, "celery_stalk_broker_up")}
*
{_sel(c, "celery_stalk_events_connected")}""") + " == 0",
            for_=c.broker_unreachable_for,
            severity="critical",
            summary="celery-stalk cannot read the Celery broker.",
            description=(
                "No celery-stalk exporter of {{ $labels.job }} has been able to read the "
                "broker for " + c.broker_unreachable_for + " (queue depth read failing, or the "
                "event consumer disconnected). Workers on the same broker probably cannot get "
                "tasks either."
            ),
            when=(
                "no live exporter can read the broker (queue depth read failing or event "
                f"consumer disconnected) for {c.broker_unreachable_for}"
            ),
            pages=(
                f"Within {_within(c.broker_unreachable_for)} of a total broker outage: the "
                "exporter notices at its next scrape (the queue read fails, the event consumer "
                f"disconnects), then `for: {c.broker_unreachable_for}`. A Redis Sentinel "
                "failover or a RabbitMQ node restart is over in well under "
                f"{span(c.broker_unreachable_for)} and does not page; an outage longer than "
                "that stops every task."
            ),
            meaning=(
                "Every live exporter watching this broker fails its queue depth read "
                "(`celery_stalk_broker_up 0`) or has its event consumer disconnected "
                "(`celery_stalk_events_connected 0`). One exporter of an HA pair that alone "
                "cannot reach the broker does not page (the other still sees it): the "
                "*Celery / Overview* dashboard shows it. Queue and worker metrics are stale "
                "meanwhile; the exporter keeps the last worker verdicts instead of declaring "
                "the fleet dead, so an outage does not page `CeleryWorkerLost` as well."
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
                "celery-stalk ({{ $labels.job }}) has received no task events from workers "
                f"for {c.events_stalled_window}, while workers take new tasks. Start "
                "the workers with -E or set worker_send_task_events = True (at runtime: celery "
                "-A proj control enable_events). If they already send events, the exporter's "
                "event consumer is stuck: restart it."
            ),
            when=(
                "workers take new tasks (heartbeats' processed count, or the broker shows "
                f"queues consumed) but no task event arrived for {c.events_stalled_window}, for "
                f"{c.events_stalled_for}"
            ),
            pages=(
                f"Within {_within(c.events_stalled_window, c.events_stalled_for)} of the last "
                f"task event: the {c.events_stalled_window} window, then `for: "
                f"{c.events_stalled_for}`. Missing events blind the task alerts but break "
                "nothing by themselves, so it waits out short gaps rather than page for them."
            ),
            meaning=(
                "Task metrics (throughput, failures, run time, wait) come only from Celery's task "
                "events, which workers send only when started with `-E` or with "
                "`worker_send_task_events = True`. This fires when the evidence says tasks start "
                f"or finish but none of their events arrived for {c.events_stalled_window}: "
                "either heartbeats show workers taking new tasks "
                "(`celery_worker_processed_total` growing) yet no task-received/started/"
                "succeeded/failed event came from any, or the exporter heard no event at all "
                "while the broker shows the queues being consumed (RabbitMQ consumers, or a "
                "Redis queue depth that keeps going down). A task that runs longer than the "
                "window adds one to `processed` when it starts, together with its own task "
                "events, and nothing after: it does not fire this. Workers the exporter knows "
                "run without task events page as `CeleryWorkerTaskEventsOff`, by name, instead."
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
            name="CeleryWorkerTaskEventsOff",
            expr=_once(c, f"""\
{_sel(c, "celery_worker_task_events_enabled")} == 0
and
{_sel(c, "celery_worker_up")} == 1"""),
            for_=c.task_events_off_for,
            severity="warning",
            summary="A Celery worker runs tasks without sending task events.",
            description=(
                "Celery worker {{ $labels.worker }} processes tasks but sends no task events, "
                "so its tasks are missing from every task metric and alert. Start it with -E "
                "or set worker_send_task_events = True (Django: "
                "CELERY_WORKER_SEND_TASK_EVENTS = True)."
            ),
            when=(
                "the exporter saw a worker's heartbeats count new tasks with no task-started "
                f"from it within 30 s, for {c.task_events_off_for}"
            ),
            pages=(
                f"Within {_within('30s', c.task_events_off_for)} of the worker's first task: "
                "the exporter waits 30 s for the task events of work a heartbeat shows (they "
                f"come within milliseconds when on), then `for: {c.task_events_off_for}` lets "
                "a worker restarted with -E in the same deploy turn it back first. It names "
                "the worker; it resolves at the worker's first task event, or when it is down."
            ),
            meaning=(
                "`celery_worker_task_events_enabled` is 0: the worker's heartbeats show its "
                "`processed` count growing (or `active` rising) and no task-started event "
                "came from it. The worker was started without `-E` and without "
                "`worker_send_task_events = True`: often a Django project whose settings use "
                "the `CELERY_` namespace but set `CELERY_SEND_EVENTS` or another old name, or "
                "a worker command line that lost its `-E`. Its tasks show only as sent "
                "(`celery_task_sent_total`): no received, succeeded, failed, run time or wait, "
                "and the task alerts cannot see them. Its throughput is still in "
                "`celery_worker_processed_total`."
            ),
            confirm=(
                "`celery-stalk doctor --broker-url URL` lists each worker with task events "
                "on or off; the exporter's log and landing page name it with the fix. The "
                "worker's start banner says `task events: OFF`."
            ),
            fix=(
                "Add `-E` to the worker command, or set `worker_send_task_events = True` "
                "(Django with `namespace=\"CELERY\"`: `CELERY_WORKER_SEND_TASK_EVENTS = True`) "
                "and restart the worker. `celery -A proj control enable_events` (or the "
                "exporter's `--enable-events`) turns them on until the worker's next restart."
            ),
        ),
        Alert(
            group="workers",
            name="CeleryWorkerLost",
            expr=_worker_lost(c),
            severity="warning",
            summary="A Celery worker stopped heartbeating without a clean shutdown.",
            description=(
                "{{ if $labels.worker }}Celery worker {{ $labels.worker }} stopped heartbeating"
                "{{ else }}{{ $value | printf \"%.0f\" }} Celery worker(s) stopped heartbeating"
                "{{ end }} without a clean shutdown (no worker-offline): crashed, killed (OOM, "
                "SIGKILL) or cut off from the broker. Its tasks in flight may be lost."
                "{{ if not $labels.worker }} The exporter no longer has their series, so their "
                "names are unknown here.{{ end }}"
            ),
            when=(
                "a worker stopped heartbeating without worker-offline; resolves when it is "
                f"back, or {c.worker_lost_window} after its last heartbeat"
            ),
            pages=(
                "At the first scrape after the exporter's `--worker-timeout` (20 s) runs out: "
                "within about 50 s of a SIGKILL, with no `for:`, because the exporter's timeout "
                "already tells a dead worker from a late heartbeat. It resolves as soon as the "
                f"worker heartbeats again, else {span(c.worker_lost_window)} after its last "
                "heartbeat: long enough to be acted on, short enough that one crash is one "
                "page, not an all-night alert. Losses in the first "
                f"{span(c.worker_lost_settle)} after the exporter's event stream reconnects "
                "wait for that long: after a broker outage, workers reconnect with a backoff "
                "of up to 30 s and would otherwise all look lost."
            ),
            meaning=(
                "The exporter stopped receiving a worker's heartbeats for longer than "
                "`--worker-timeout` (20 s, and at least 2.5 heartbeat intervals) and the worker "
                "never sent `worker-offline`. A clean shutdown (SIGTERM, a deploy, a scale-down) "
                "sends `worker-offline` and does not page. The alert names the worker from "
                "`celery_worker_up`/`celery_worker_offline` while the exporter keeps its series "
                "(`--worker-ttl`), and fires from the fleet counter `celery_worker_lost_total` "
                "without a name when the series were forgotten before any scrape saw the loss."
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
            pages=(
                f"Within {_within(c.no_consumers_for)} for a queue that was never consumed "
                "(a route typo, a queue missing from `-Q`), and within "
                f"{_within(c.no_consumers_window, c.no_consumers_for)} of the last task "
                f"received from a queue whose workers all went away (Redis: the "
                f"{c.no_consumers_window} window, then `for:`). A Recreate deploy of every "
                f"worker, or workers busy with tasks under {span(c.no_consumers_window)}, "
                "does not page; tasks that nobody runs for that long do."
            ),
            meaning=(
                "On RabbitMQ the broker counts the queue's consumers: this fires when it holds "
                "messages and has none. Redis cannot tell consumers, so there it fires when the "
                "queue holds messages and no worker received a task from it (no `task-received` "
                f"event for that queue) in the last {c.no_consumers_window}, continuously for "
                f"{c.no_consumers_for}. The Redis "
                "rule judges only queues whose `task-sent` events the exporter has seen "
                "(`task_send_sent_event = True` on producers): without them a received task "
                "cannot be tied to its queue. With the exporter in `--task-metrics-source "
                "workers` mode it judges every queue it reads, by the tasks the instrumented "
                "workers (scraped in the same job) received from it."
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
            name="CeleryQueueOldestMessageTooOld",
            expr=_once(c, f"""\
{_sel(c, "celery_queue_oldest_message_age_seconds")} > {c.queue_oldest_age_seconds:g}"""),
            for_=c.queue_oldest_age_for,
            severity="critical",
            summary="The oldest message in a Celery queue has waited too long: the queue is stuck.",
            description=(
                "The oldest message in queue {{ $labels.queue }} has waited "
                "{{ $value | humanizeDuration }} (threshold "
                f"{c.queue_oldest_age_seconds:g} s): nothing has taken it from the queue."
            ),
            when=(
                f"a queue's oldest message has waited more than {c.queue_oldest_age_seconds:g} s, "
                f"for {c.queue_oldest_age_for}"
            ),
            pages=(
                f"Within {_within(c.queue_oldest_age_for)} of the oldest message turning "
                f"{c.queue_oldest_age_seconds:g} s old: {c.queue_oldest_age_seconds:g} s plus "
                f"{_within(c.queue_oldest_age_for)} after a task is sent to a queue nobody "
                "takes from, whether or not tasks keep arriving and whatever the depth. The "
                "age is a duration already, so `for:` is short; a busy queue keeps renewing its "
                "head and never comes near the threshold, and the alert resolves at the first "
                "scrape after the message is taken."
            ),
            meaning=(
                "`celery_queue_oldest_message_age_seconds` is the age of the message that will "
                "be taken next. On Redis the exporter reads the message at the consuming end of "
                "the queue's list and of each priority sub-list, and dates it by its task's "
                "`task-sent` event; without task-sent events (`task_send_sent_event`) it dates "
                "it from when it first saw it there, a lower bound (an exporter restart starts "
                "that count again, so the page comes later, never wrongly). On RabbitMQ with "
                "`--rabbitmq-management-url` it is the head message's timestamp, which Celery "
                "does not set by default: then the series is absent and this alert cannot fire. "
                "Unlike the queue wait percentiles, the age grows while no task starts at all."
            ),
            confirm=(
                "The *Celery / Queue* dashboard shows the oldest message's age per queue next to "
                "its depth and consumption. `celery -A proj inspect active_queues` lists the "
                "queues each worker consumes; `celery_worker_tasks_active` shows whether its "
                "workers are all busy with long tasks."
            ),
            fix=(
                "Start workers for the queue (`celery -A proj worker -Q QUEUE`), or add "
                "concurrency if they are saturated; if workers run but none lists the queue in "
                "`inspect active_queues`, fix their `-Q` or the task's route. If the queue is "
                "meant to hold old messages (a batch queue drained on a schedule), raise the "
                "threshold "
                "(`queue_oldest_age_seconds`) or exclude it from the rule's selector."
            ),
        ),
        Alert(
            group="queues",
            name="CeleryQueueBacklogGrowing",
            expr=_once(c, f"""\
deriv({_sel(c, "celery_queue_messages")}[{c.backlog_window}]) * 60 > 0
and
deriv({_sel(c, "celery_queue_messages")}[{c.backlog_short_window}]) > 0
and
{_sel(c, "celery_queue_messages")} >= {c.backlog_min_messages}"""),
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
                f"a queue's depth trends up over {c.backlog_window} and over the last "
                f"{c.backlog_short_window}, for {c.backlog_for}, with at least "
                f"{c.backlog_min_messages} messages"
            ),
            pages=(
                f"Within {_within(c.backlog_for, '30s')} of the start of a steady growth: "
                "the trend is positive from its second sample, then "
                f"`for: {c.backlog_for}`. A burst that is being worked off turns the "
                f"{c.backlog_short_window} trend down within minutes and resets `for:`; growth "
                f"that lasts {span(c.backlog_for)} without a single pause is not a burst."
            ),
            meaning=(
                "The queue's depth (`celery_queue_messages`, from the broker) has a rising "
                f"trend over {c.backlog_window} and over its last {c.backlog_short_window}, "
                f"continuously for {c.backlog_for}, and holds at least "
                f"{c.backlog_min_messages} messages. A depth rises exactly when arrivals "
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
            expr=_once(c, f"{n.wait_p95} > {c.queue_wait_p95_seconds:g}"),
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
            pages=(
                f"Within about {_within(c.queue_wait_for)} of waits going over "
                f"{c.queue_wait_p95_seconds:g} s: `for: {c.queue_wait_for}`, longer than the "
                f"{c.queue_wait_window} window, so the slow minutes of a deploy or a "
                "morning's first burst stay quiet. Slow starts hurt but rarely break: "
                "`CeleryQueueBacklogGrowing` and `CeleryQueueNoConsumers` page the urgent cases "
                "sooner."
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
            expr=_once(c, f"""\
{n.ratio(fast)} >= {c.failure_fast_ratio:g}
and
{n.outcomes(fast)} >= {c.failure_min_tasks}"""),
            for_=c.failure_fast_for,
            severity="critical",
            summary="A Celery task fails most of the time.",
            description=(
                "{{ $value | humanizePercentage }} of {{ $labels.task }} tasks failed in the "
                "last " + fast + f" (threshold {c.failure_fast_ratio:.0%}, counting terminal "
                "failures only, not retries)."
            ),
            when=(
                f"at least {c.failure_fast_ratio:.0%} of a task's runs fail over {fast}, with "
                f"at least {c.failure_min_tasks} finished, for {c.failure_fast_for}"
            ),
            pages=(
                f"Within {_within(fast, c.failure_fast_for)} of the task starting to fail "
                f"{c.failure_fast_ratio:.0%} of its runs (sooner the more it fails): the "
                f"{fast} window fills with failures, then `for: {c.failure_fast_for}`. A "
                f"burst that stops sooner stays quiet: {_burst_note(c)} This is the fast "
                "window of a two-window scheme; `CeleryTaskFailureRatioElevated` is the slow "
                "one."
            ),
            meaning=(
                "Terminal failures (`task-failed`: the task raised and will not be retried) over "
                f"all finished tasks (succeeded + failed) of one task name, over {fast}, at "
                f"least {c.failure_fast_ratio:.0%} for {c.failure_fast_for}, with at least "
                f"{c.failure_min_tasks} tasks finished in the window. Retries are `task-retried` "
                "and do not count. A task that never succeeds pages too."
            ),
            confirm=(
                "The *Celery / Task* dashboard shows failures by exception type for the task; "
                "the worker log has the tracebacks (the exporter never records exception "
                "messages)."
            ),
            fix=(
                "Fix the cause the exception names: a failing dependency, bad input, a bug "
                "shipped in the last deploy (roll it back). Transient errors deserve "
                "`autoretry_for` with backoff so they stop being terminal."
            ),
        ),
        Alert(
            group="tasks",
            name="CeleryTaskFailureRatioElevated",
            expr=_once(c, f"""\
{n.ratio(slow)} >= {c.failure_slow_ratio:g}
and
{n.ratio(short)} >= {c.failure_slow_ratio:g}
and
{n.outcomes(slow)} >= {c.failure_min_tasks}
unless
{n.ratio(fast)} >= {c.failure_fast_ratio:g}"""),
            for_=c.failure_slow_for,
            severity="warning",
            summary="A Celery task keeps failing more often than it should.",
            description=(
                "{{ $value | humanizePercentage }} of {{ $labels.task }} tasks failed in the "
                "last " + slow + f" (threshold {c.failure_slow_ratio:.0%}, counting terminal "
                "failures only, not retries), and they still fail."
            ),
            when=(
                f"at least {c.failure_slow_ratio:.0%} of a task's runs fail over {slow} and "
                f"over the last {short}, with at least {c.failure_min_tasks} finished, for "
                f"{c.failure_slow_for}"
            ),
            pages=(
                f"Within {_within(slow, c.failure_slow_for)} of the task starting to fail "
                f"{c.failure_slow_ratio:.0%} of its runs (sooner the more it fails): the "
                f"{slow} window must fill, then `for: {c.failure_slow_for}`. The {short} "
                "window resolves it soon after the failures stop; a short burst never keeps "
                f"both windows over {c.failure_slow_ratio:.0%} for {span(c.failure_slow_for)}. "
                f"While the task fails {c.failure_fast_ratio:.0%} or more, "
                "`CeleryTaskFailureRatioHigh` pages instead, not both."
            ),
            meaning=(
                "The slow window of the two-window scheme: a mild failure ratio that lasts. "
                f"Terminal failures over finished tasks of one task name, over {slow} and over "
                f"the last {short}, at least {c.failure_slow_ratio:.0%}, with at least "
                f"{c.failure_min_tasks} tasks finished in {slow}. Retries do not count."
            ),
            confirm=(
                "The *Celery / Task* dashboard shows the failure ratio over time and failures "
                "by exception type; the worker log has the tracebacks."
            ),
            fix=(
                "Find the exception that grew (a flaky dependency, a class of bad input) and fix "
                "it, or retry it with `autoretry_for` and backoff if it is transient."
            ),
        ),
        Alert(
            group="tasks",
            name="CeleryTaskTimeLimitHit",
            expr=_once(c, f"max_over_time({n.time_limit_hits}[{c.time_limit_window}])"),
            severity="warning",
            summary="Celery tasks are being stopped by their time limit.",
            description=(
                "{{ $labels.task }} (queue {{ $labels.queue }}) failed with "
                "{{ $labels.exception }} in the last " + c.time_limit_window
                + ": it ran past its time limit."
            ),
            when=(
                "a task failed with SoftTimeLimitExceeded or TimeLimitExceeded; fires "
                f"for {c.time_limit_window} after each"
            ),
            pages=(
                "At the first rule evaluation after the scrape that counts the hit, also for a "
                "task's first hit (a new series), with no `for:`: every hit is worth a look and "
                f"none is noise. It resolves {span(c.time_limit_window)} after the last "
                "evaluation that saw a hit (a hit is seen for "
                f"{span(c.time_limit_lookback)}), so a later hit pages again; hits closer "
                "together than that are one page. Hits "
                "counted while Prometheus was not scraping the exporter (a fresh Prometheus, a "
                f"gap over {span(c.time_limit_window)}) do not page."
            ),
            meaning=(
                "Tasks failed with `SoftTimeLimitExceeded` (the soft limit raised inside the "
                "task and it did not handle it) or `TimeLimitExceeded` (the hard limit killed "
                "the pool process), from `celery_task_exceptions_total`."
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
        *inflight.alerts(c),
        *beat.alerts(c),
        *workflows.alerts(c),
    ]


def _burst_note(c: Config) -> str:
    """What a 2-minute burst of failures does to the fast failure alert."""
    window, hold, burst = seconds(c.failure_fast_window), seconds(c.failure_fast_for), 120
    if window < burst:
        return (f"a burst shorter than {hold - window} seconds does not page, whatever its "
                "volume.")
    if 2 * burst <= hold:
        return "a 2-minute burst does not page, whatever its volume."
    # The window's ratio is over the threshold from window/k into the burst until
    # burst - window/k after it, for failures at k times the rate of the task's successes.
    factor = 2 * window / (2 * burst - hold)
    return (f"a 2-minute burst does not page unless its failures come at {factor:g} times the "
            "rate of the task's successes or more, on top of them.")


def _events_stalled(c: Config) -> str:
    w = c.events_stalled_window
    task_events = _sel(c, "celery_stalk_events_total", f'type=~"{WORKER_TASK_EVENTS}"')
    # Workers took new tasks: their heartbeats' processed count grew. A single long task
    # adds one when it starts, with its own task events, and nothing after: however long
    # it runs, it cannot look like missing events. A task event arrived: its counter grew,
    # or its series appeared (the first task events after an exporter restart create
    # them, and increase() cannot see a series' first sample). A worker the exporter knows
    # runs without task events pages as CeleryWorkerTaskEventsOff, by name, not here.
    # An exporter run with --task-metrics-source workers expects no task events at all.
    return _once(c, f"""\
(
(
    sum without (worker) (
        increase({_sel(c, "celery_worker_processed_total")}[{w}]) > 0
      and
        {_sel(c, "celery_worker_up")} == 1
    )
  unless
    sum without (type) (increase({task_events}[{w}])) > 0
  unless
    sum without (type) ({task_events} unless {task_events} offset {w})
  unless on ({_target(c)})
    {_sel(c, "celery_worker_task_events_enabled")} == 0
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
)
)
unless on ({_target(c)})
  {_sel(c, "celery_stalk_task_metrics_from_events")} == 0""")


def _worker_lost(c: Config) -> str:
    n = Names(c)
    w = c.worker_lost_window
    named = f"""\
  (
      {n.worker_lost} == 1
    and
      time() - {_sel(c, "celery_worker_last_heartbeat_timestamp_seconds")} < {seconds(w)}
  )"""
    # The fleet counter pages when the worker's series were forgotten before any scrape
    # saw it down; never while a named loss of the same exporter is in the window, or it
    # would page again, unnamed, right after the named alert resolved.
    unnamed = f"""\
  (
      increase({_sel(c, "celery_worker_lost_total")}[{w}]) > 0
    unless on ({_target(c)})
      max_over_time({n.worker_lost}[{w}]) == 1
  )"""
    settled = f"min_over_time({_sel(c, 'celery_stalk_events_connected')}[{c.worker_lost_settle}])"
    return _once(c, f"""\
(
{named}
  or
{unnamed}
)
and on ({_target(c)})
  {settled} == 1""")


def _no_consumers(c: Config) -> str:
    w = c.no_consumers_window
    messages = _sel(c, "celery_queue_messages")
    # A task received from the queue in the window: the counter grew, or its series
    # appeared (increase() cannot see a series' first sample, as after an exporter restart).
    received = _sel(c, "celery_task_received_total")
    # An exporter that leaves task metrics to instrumented workers (--task-metrics-source
    # workers) counts no task: the received tasks are the workers' series, in the same job.
    from_events = _sel(c, "celery_stalk_task_metrics_from_events")
    return _once(c, f"""\
(
    {messages} > 0
  and
    {_sel(c, "celery_queue_consumers")} == 0
)
or
(
    {messages} > 0
  and
    sum without (task) ({_sel(c, "celery_task_sent_total")})
  unless
    {_sel(c, "celery_queue_consumers")}
  unless
    sum without (task) (increase({received}[{w}])) > 0
  unless
    sum without (task) ({received} unless {received} offset {w})
)
or
(
    {messages} > 0
  and on ({_target(c)})
    {from_events} == 0
  unless
    {_sel(c, "celery_queue_consumers")}
  unless on (job, queue)
    sum by (job, queue) (increase({received}[{w}])) > 0
  unless on (job, queue)
    sum by (job, queue) ({received} unless {received} offset {w})
)""")


GROUPS = ("exporter", "workers", "queues", "tasks", "beat", "workflows")


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
        "One section per alert in `alerts/celery-stalk.rules.yml`: how fast it pages and why, "
        "what it means, how to confirm it, how to fix it. Generated by `celery-stalk mixin` "
        "(the committed files: `python -m celery_stalk.mixin`) from "
        "`exporter/celery_stalk/mixin/`; the thresholds quoted are the ones the rules were "
        "generated with.",
        "",
        "Page times assume Prometheus scrapes and evaluates rules every 30 s; Alertmanager's "
        "`group_wait` comes on top.",
        "",
        "**Exporters in HA pairs.** Two or more exporters may watch the same broker (each "
        "scraped as its own target). Every symptom alert is computed per exporter, from "
        "exporters whose `up` is 1 only, then aggregated over the labels that tell the "
        f"replicas apart ({', '.join(f'`{label}`' for label in c.replica_labels)}): a "
        "condition pages once however many exporters see it, keeps firing while any live "
        "exporter sees it, and a dead exporter's last samples start nothing. Exporters of "
        "different brokers must differ in another label (their job, or a target label of "
        "your own), or their queues and workers would be taken for one.",
    ]
    for a in alerts(c):
        parts += [
            "",
            f"## {a.name}",
            "",
            f"**Severity:** {a.severity}. **Fires when** {a.when}.",
            "",
            f"**Pages.** {a.pages}",
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
