"""Alerts on periodic tasks: a missed run (named), beat down, two beats.

The exporter counts a missed run once a due time has passed by its --beat-grace with
nothing sent (and never while its event stream is down), and keeps the due time of each
entry's latest miss. An entry is *missing* while that miss is later than its last run:
it has not run since. A missing entry pages until it runs again; when nothing at all has
run since the latest miss, beat itself is down, and that one page replaces the others.
"""

from __future__ import annotations

from .config import Config, span

MISSING = "entry:celery_beat_entry_last_missed_timestamp_seconds:not_run_since"


def recording_rules(c: Config) -> list:
    from .alerts import Recording, _sel

    missed = _sel(c, "celery_beat_entry_last_missed_timestamp_seconds")
    last = _sel(c, "celery_beat_entry_last_run_timestamp_seconds")
    # Per entry: the due time of its latest miss, while it has not run since.
    return [Recording("beat", MISSING, f"""\
{missed} > {last}
or
{missed} unless {last}""")]


def _beat_down(c: Config) -> str:
    """Per exporter: no entry has run since the latest miss of any entry (or ever)."""
    from .alerts import _sel

    last = _sel(c, "celery_beat_entry_last_run_timestamp_seconds")
    return f"""\
max without (entry) ({MISSING})
>
(
    max without (entry) ({last})
  or
    max without (entry) ({MISSING}) * 0
)"""


def alerts(c: Config) -> list:
    from .alerts import Alert, _indent, _once, _sel, _target, _within

    duplicates = _sel(c, "celery_beat_entry_duplicate_runs_total")
    return [
        Alert(
            group="beat",
            name="CeleryBeatDown",
            expr=_once(c, _beat_down(c)),
            for_=c.beat_down_for,
            severity="critical",
            summary="Celery beat sends nothing while periodic tasks are due.",
            description=(
                "No periodic task of {{ $labels.job }} has been sent since a run due at "
                "{{ $value | humanizeTimestamp }} was missed: celery beat is down, stuck, or "
                "cannot reach the broker."
            ),
            when=(f"a periodic run was missed and no entry has run since, for "
                  f"{c.beat_down_for}"),
            pages=(
                f"Within --beat-grace (60 s by default) plus {_within(c.beat_down_for)} of the "
                "first due time after beat stopped: the exporter counts the miss after the "
                f"grace, then `for: {c.beat_down_for}`. The `for:` lets an entry that runs "
                "more often than that prove beat alive when only one slow entry missed (then "
                "`CeleryBeatRunMissed` pages for that entry instead). Meanwhile the per-entry "
                "alert stays quiet: one page for one dead beat. It resolves at the first run "
                "of any entry."
            ),
            meaning=(
                "The exporter knows the schedule (from the app's `beat_schedule` or RedBeat's "
                "keys) and sees each run as the task-sent event of a task with the entry's task "
                "name and arguments. Due times passed with nothing sent by any entry: beat is "
                "not running, is stuck (a scheduler waiting on a lock: RedBeat's lock held by a "
                "dead beat until it expires), or cannot publish to the broker."
            ),
            confirm=(
                "`celery_beat_entry_last_run_timestamp_seconds` on the *Celery / Beat and "
                "workflows* dashboard shows when each entry last ran. Check the beat process "
                "(`ps`, its pod) and its log. Beat must send task-sent events "
                "(`task_send_sent_event = True` in its config), or a worker must receive its "
                "tasks (task-received is the fallback): with neither, no run is ever seen."
            ),
            fix=(
                "Start (or restart) exactly one beat. With RedBeat, a beat killed hard holds "
                "its lock until `redbeat_lock_timeout`; the next one starts after it. Missed "
                "runs are not replayed by Celery (a crontab catches up once at most): run what "
                "must not be skipped by hand."
            ),
        ),
        Alert(
            group="beat",
            name="CeleryBeatRunMissed",
            expr=_once(c, f"""\
{MISSING}
unless on ({_target(c)})
(
{_indent(_beat_down(c))}
)"""),
            severity="warning",
            summary="A periodic task did not run when it was due.",
            description=(
                "Periodic task {{ $labels.entry }} did not run when it was due at "
                "{{ $value | humanizeTimestamp }} and has not run since, while other entries "
                "ran."
            ),
            when=("an entry's due time passed by the exporter's --beat-grace with no run; "
                  "fires until it runs again"),
            pages=(
                "At the first rule evaluation after the exporter counts the miss, --beat-grace "
                "(60 s by default) after the due time, with no `for:`: the grace is the "
                "debounce, and a periodic task that did not run is worth a look every time. It "
                "resolves when the entry runs again (late, sent by hand with the same "
                "arguments, or at its next due time), however long that takes: a missed "
                "nightly job stays on the board until it has run. When nothing at all runs, "
                "`CeleryBeatDown` pages instead: a miss after which no entry has run yet waits "
                "until one does (at most that alert's `for:`) before it pages here."
            ),
            meaning=(
                "Beat sends other entries but not this one: its task cannot be sent (an error "
                "in beat's log: a bad route, an argument that cannot be serialized), the "
                "schedule beat runs differs from the one the exporter reads (a beat started "
                "from another config, a RedBeat entry disabled or edited), or the entry's "
                "arguments are computed at send time and differ from what the exporter matches "
                "(beat_schedule entries with BeatLazyFunc arguments are matched by task name "
                "only)."
            ),
            confirm=(
                "The beat table of the *Celery / Beat and workflows* dashboard: last run, next "
                "run, missed and duplicate counts by entry. Beat's log at INFO names every run "
                "it sends (`Scheduler: Sending due task`)."
            ),
            fix=(
                "Fix what beat's log reports for the entry; make beat and the exporter read the "
                "same schedule (`celery -A proj stalk` reads the app's). Run the missed work by "
                "hand if it must not be skipped."
            ),
        ),
        Alert(
            group="beat",
            name="CeleryBeatDuplicateRuns",
            expr=_once(c, f"""\
sum without (entry) (increase({duplicates}[{c.beat_duplicate_window}])) > 0"""),
            severity="warning",
            summary="Periodic tasks are sent twice: more than one beat is running.",
            description=(
                "{{ $value | printf \"%.0f\" }} periodic run(s) of {{ $labels.job }} were sent "
                f"again before they were due in the last {c.beat_duplicate_window}: a second "
                "celery beat is running, or code sends the same tasks with the same arguments."
            ),
            when=(f"a periodic run was sent before its due time while the previous one was "
                  f"on time; fires for {c.beat_duplicate_window} after each"),
            pages=(
                "At the first rule evaluation after the exporter counts a duplicate, with no "
                "`for:`: two beats run every periodic task twice (two reports, two charges) "
                f"until one is stopped. It resolves {span(c.beat_duplicate_window)} after the "
                "last duplicate. One page for all entries: they are duplicated together."
            ),
            meaning=(
                "Runs matching an entry (its task name and arguments) arrived before its next "
                "due time while the previous due time had already run: the signature of two "
                "beat processes with the default scheduler (a deploy that starts a new beat "
                "before stopping the old one, beat embedded in several workers with `-B`), or "
                "of application code sending the same task with the same arguments."
            ),
            confirm=(
                "`celery_beat_entry_duplicate_runs_total` by entry on the dashboard. The "
                "`hostname` of the task-sent events (`celery -A proj events`) names each "
                "sender: two beats show as two `gen<pid>@host` names. Look for beat processes "
                "and workers started with `-B`."
            ),
            fix=(
                "Run exactly one beat (not `-B` on several workers; in Kubernetes a Deployment "
                "with one replica and the Recreate strategy), or a scheduler with a lock such "
                "as RedBeat."
            ),
        ),
    ]
