"""Rules on tasks in flight and on capacity: a task running too long, tasks orphaned by a
lost worker, and a fleet saturated (busy near its concurrency with a growing backlog)."""

from __future__ import annotations

from .config import Config, seconds, span


class Names:
    worker_utilisation = "worker:celery_worker_utilisation:ratio"
    fleet_utilisation = "job:celery_worker_utilisation:ratio"
    orphaned = "task:celery_task_orphaned:new"


def recording_rules(c: Config) -> list:
    from .alerts import Recording, _sel, new_since

    active = _sel(c, "celery_worker_tasks_active")
    concurrency = _sel(c, "celery_worker_concurrency")
    orphaned = _sel(c, "celery_task_orphaned_total")
    return [
        # Per exporter: tasks executing (heartbeats) over the pool size (inspect stats).
        # A worker that stopped answering inspect has no concurrency, so no utilisation.
        Recording("workers", Names.worker_utilisation, f"{active}\n/\n{concurrency}"),
        # The fleet as a whole, queues aside: only workers whose pool size is known count.
        Recording("workers", Names.fleet_utilisation, f"""\
sum without (worker) ({active} and {concurrency})
/
sum without (worker) ({concurrency})"""),
        # New orphans, at the first evaluation that sees them: as the time-limit hits, the
        # counter differs from one lookback ago, or its series appeared since (increase()
        # cannot see a series' first sample, and the first orphan creates it) while the
        # exporter was scraped.
        Recording("tasks", Names.orphaned,
                  new_since(c, orphaned, c.orphaned_lookback, c.orphaned_window)),
    ]


def alerts(c: Config) -> list:
    from .alerts import Alert, _once, _sel, _target, _within

    stuck_after = seconds(c.task_stuck_after)
    running = _sel(c, "celery_task_oldest_running_seconds")
    messages = _sel(c, "celery_queue_messages")
    w = c.saturation_window
    return [
        Alert(
            group="tasks",
            name="CeleryTaskRunningTooLong",
            expr=_once(c, f"{running} > {stuck_after}"),
            for_=c.task_stuck_for,
            severity="warning",
            summary="A Celery task has been running far longer than tasks should.",
            description=(
                "A {{ $labels.task }} task (queue {{ $labels.queue }}) has been running for "
                "{{ $value | humanizeDuration }}, over " + span(c.task_stuck_after)
                + ": hung, or much slower than it should be."
            ),
            when=(f"a task has been running (started, not finished) for over "
                  f"{span(c.task_stuck_after)}, for {c.task_stuck_for}"),
            pages=(
                f"Within {_within(c.task_stuck_after, c.task_stuck_for)} of the task's start: "
                f"it must run past {span(c.task_stuck_after)} (`task_stuck_after`), then "
                f"`for: {c.task_stuck_for}` rides out one scrape that missed the series. Set "
                "`task_stuck_after` above the longest run any of your tasks legitimately "
                "takes (`celery-stalk mixin --task-stuck-after 4h`), or select the tasks it "
                "judges with the selector; a task whose run ends resolves it at once."
            ),
            meaning=(
                "`celery_task_oldest_running_seconds` is the time since the exporter received "
                "the `task-started` of the longest-running unfinished task of that name and "
                "queue. A task that never ends holds a pool slot: a call without a timeout, a "
                "deadlock, a loop. Tasks started before the exporter started are not known to "
                "it (it counts from events it saw), so they do not page."
            ),
            confirm=(
                "`celery -A proj inspect active` lists what each worker runs and since when; "
                "the *Celery / Task* dashboard shows the longest run per task. py-spy "
                "(`py-spy dump --pid PID`) on the pool process shows where it hangs."
            ),
            fix=(
                "Give the task `soft_time_limit`/`time_limit` and timeouts on every network "
                "call; revoke the stuck run (`celery -A proj control revoke ID --terminate`). "
                "If the task legitimately runs this long, raise `task_stuck_after`."
            ),
        ),
        Alert(
            group="tasks",
            name="CeleryTaskOrphaned",
            expr=_once(c, f"max_over_time({Names.orphaned}[{c.orphaned_window}])"),
            severity="warning",
            summary="Celery tasks were running or reserved on a worker that was lost.",
            description=(
                "{{ $labels.task }} tasks (queue {{ $labels.queue }}) were running or "
                "prefetched on a worker that was lost (no clean shutdown) in the last "
                + c.orphaned_window + ": they will be redelivered, or are gone."
            ),
            when=(f"a task was running or reserved on a worker that was lost; fires for "
                  f"{c.orphaned_window} after each"),
            pages=(
                "At the first rule evaluation after the scrape that counts the orphan, with no "
                "`for:`: the exporter counts it only once the worker is lost (silent past "
                "`--worker-timeout`, no `worker-offline`), which already tells a crash from a "
                f"late heartbeat. It resolves {span(c.orphaned_window)} after the last "
                "evaluation that saw a new orphan, as the worker-lost page does, so a later "
                "loss pages again. A clean shutdown (a deploy, a scale-down) orphans nothing."
            ),
            meaning=(
                "`celery_task_orphaned_total` counts tasks that had a `task-received` (reserved, "
                "prefetched) or `task-started` (running) on a worker that was then lost. With "
                "default settings (`acks_late` off) a running task's message was acked at its "
                "start: it is gone, whatever it had done. Prefetched messages, and running ones "
                "with `acks_late`, go back to the queue (Redis: after the visibility timeout, "
                "an hour by default) and run again."
            ),
            confirm=(
                "CeleryWorkerLost names the worker. The *Celery / Task* dashboard shows "
                "orphans per task; the task's own records (rows it should have written) show "
                "whether it finished its work before the worker died."
            ),
            fix=(
                "Make tasks that must not be lost idempotent and run them with `acks_late=True` "
                "and `task_reject_on_worker_lost=True`, so a lost worker's task runs again; "
                "then find why the worker died (CeleryWorkerLost's runbook)."
            ),
        ),
        Alert(
            group="workers",
            name="CeleryFleetSaturated",
            expr=_once(c, f"""\
{Names.fleet_utilisation} >= {c.saturation_ratio:g}
and on ({_target(c)})
  sum without (queue) (deriv({messages}[{w}])) > 0
and on ({_target(c)})
  sum without (queue) ({messages}) >= {c.backlog_min_messages}"""),
            for_=c.saturation_for,
            severity="warning",
            summary="The Celery workers are busy to their concurrency and the backlog grows.",
            description=(
                "The workers run {{ $value | humanizePercentage }} of their pool slots and the "
                "queues keep growing: tasks arrive faster than the fleet can take them."
            ),
            when=(f"workers run at least {c.saturation_ratio:.0%} of their concurrency while "
                  f"the total backlog trends up over {w}, with at least "
                  f"{c.backlog_min_messages} messages, for {c.saturation_for}"),
            pages=(
                f"Within {_within(c.saturation_for)} of the fleet filling up with a backlog "
                f"growing: the backlog trend over {w} turns positive as it starts to grow, then "
                f"`for: {c.saturation_for}`. A busy fleet that keeps up (no growth), or a "
                "backlog that grows while workers idle (a queue no worker consumes: "
                "CeleryQueueNoConsumers), does not page here."
            ),
            meaning=(
                "Utilisation is tasks executing (`celery_worker_tasks_active`, from heartbeats) "
                "over pool size (`celery_worker_concurrency`, from inspect stats every "
                "`--inspect-interval`), summed over the workers whose pool size is known. Near "
                "1 with a growing backlog, the fleet is at capacity: more traffic only waits "
                "longer. Needs the exporter's inspect loop (on by default)."
            ),
            confirm=(
                "The *Celery / Worker* dashboard: utilisation and reserved (prefetched) tasks "
                "per worker; the *Celery / Queue* dashboard: depth and pending age. "
                "Check whether traffic rose or tasks got slower (run time p95)."
            ),
            fix=(
                "Add workers or concurrency (autoscale on queue depth or age), or make the "
                "tasks faster. If only some queues grow, give them workers of their own."
            ),
        ),
    ]
