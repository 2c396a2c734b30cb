"""Alerts on workflows (tasks sharing a root_id): a failure ratio, and one stuck in flight."""

from __future__ import annotations

from .config import Config, seconds, span


def p99_name(c: Config) -> str:
    return f"workflow:celery_workflow_duration_seconds:p99_{c.workflow_history_window}"


def recording_rules(c: Config) -> list:
    from .alerts import Recording, _sel

    buckets = _sel(c, "celery_workflow_duration_seconds_bucket")
    return [
        # The usual duration of each workflow, per exporter, over a long history.
        Recording("workflows", p99_name(c), f"""\
histogram_quantile(0.99, rate({buckets}[{c.workflow_history_window}]))"""),
    ]


def alerts(c: Config) -> list:
    from .alerts import Alert, _once, _sel, _within

    w = c.workflow_failure_window
    finished = _sel(c, "celery_workflow_finished_total")
    failed = _sel(c, "celery_workflow_finished_total", 'outcome="failed"')
    age = _sel(c, "celery_workflow_oldest_in_flight_age_seconds")
    floor = seconds(c.workflow_stuck_floor)
    return [
        Alert(
            group="workflows",
            name="CeleryWorkflowFailureRatioHigh",
            expr=_once(c, f"""\
(
    sum without (outcome) (increase({failed}[{w}]))
  /
    sum without (outcome) (increase({finished}[{w}]))
) >= {c.workflow_failure_ratio:g}
and
sum without (outcome) (increase({finished}[{w}])) >= {c.workflow_failure_min_workflows}"""),
            for_=c.workflow_failure_for,
            severity="warning",
            summary="Many Celery workflows of one kind fail.",
            description=(
                "{{ $value | humanizePercentage }} of {{ $labels.workflow }} workflows finished "
                f"failed in the last {w} (threshold {c.workflow_failure_ratio:.0%}): one of "
                "their tasks failed for good."
            ),
            when=(f"at least {c.workflow_failure_ratio:.0%} of a workflow's runs finish failed "
                  f"over {w}, with at least {c.workflow_failure_min_workflows} finished, for "
                  f"{c.workflow_failure_for}"),
            pages=(
                f"Within {_within(w, c.workflow_failure_for)} of a workflow starting to fail "
                f"{c.workflow_failure_ratio:.0%} of the time (sooner the more it fails): the "
                f"{w} window fills, then `for: {c.workflow_failure_for}`. A workflow counts "
                "when it finishes (the exporter's --workflow-settle after its last task), so "
                "one that fails early is counted then; a short burst of failures stays quiet."
            ),
            meaning=(
                "A workflow is the set of tasks sharing a `root_id` (a chain, a chord or a group "
                "sent from a task), labelled by its root task's name. It finishes failed when "
                "any of its tasks ended in task-failed (or was rejected or revoked): retries "
                "do not count. `celery_workflow_task_failed_total` says which task and which "
                "exception broke it."
            ),
            confirm=(
                "The *Celery / Beat and workflows* dashboard: failures by workflow, task and "
                "exception. The task's failures and tracebacks: the *Celery / Task* dashboard "
                "and the worker log."
            ),
            fix=(
                "Fix the failing task the dashboard names. A step that fails transiently "
                "deserves `autoretry_for` with backoff, so the workflow survives it; a chord "
                "whose member fails never runs its callback."
            ),
        ),
        Alert(
            group="workflows",
            name="CeleryWorkflowStuck",
            expr=_once(c, f"""\
{age} > {c.workflow_stuck_factor:g} * {p99_name(c)}
and
{age} > {floor}"""),
            for_=c.workflow_stuck_for,
            severity="warning",
            summary="A Celery workflow has been in flight far longer than it usually takes.",
            description=(
                "The oldest {{ $labels.workflow }} workflow in flight started "
                "{{ $value | humanizeDuration }} ago, over "
                f"{c.workflow_stuck_factor:g} times its p99 duration of the last "
                f"{c.workflow_history_window}."
            ),
            when=(f"the oldest workflow in flight is older than {c.workflow_stuck_factor:g} "
                  f"times its p99 duration over {c.workflow_history_window}, and than "
                  f"{span(c.workflow_stuck_floor)}, for {c.workflow_stuck_for}"),
            pages=(
                f"Within {_within(c.workflow_stuck_for)} of the oldest workflow in flight "
                f"becoming older than {c.workflow_stuck_factor:g} times its usual p99 and than "
                f"{span(c.workflow_stuck_floor)}: one scrape, then `for: "
                f"{c.workflow_stuck_for}`. The floor keeps short workflows quiet: every "
                "workflow stays in flight for the exporter's --workflow-settle after its last "
                "task, which a p99 of seconds would take for stuck. A workflow with no finished "
                f"run in the last {c.workflow_history_window} has no p99 and does not page."
            ),
            meaning=(
                "A workflow started (its root was sent) and has not finished: some of its "
                "tasks are still in flight, or waiting in a queue. Typical causes: a step stuck "
                "in a queue no worker consumes, a chord whose header task was lost (a worker "
                "killed without acks_late), a chord unlock polling forever, a task hung on a "
                "dependency."
            ),
            confirm=(
                "The *Celery / Beat and workflows* dashboard shows the oldest age and the "
                "number in flight by workflow; the *Celery / Queue* dashboard shows queues "
                "backing up. `celery -A proj inspect active` and `reserved` show what runs. "
                "Events lost while the exporter was disconnected drop its open workflows "
                "(`celery_stalk_workflows_evicted_total{reason=\"link_lost\"}`) rather than "
                "leave them stuck."
            ),
            fix=(
                "Unblock the step that waits: start workers for its queue, restart a hung "
                "worker, revoke the workflow's remaining tasks if it cannot finish. Give tasks "
                "time limits and chords a `max_retries` for their unlock."
            ),
        ),
    ]
