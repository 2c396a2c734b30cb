"""The one place for thresholds, windows and selectors of the alerts and dashboards.

``celery-stalk mixin`` takes any of these as a flag or from a YAML file and writes the
rules and dashboards for them; ``python -m celery_stalk.mixin`` regenerates the committed
files from DEFAULT. DEFAULT is what ships: each window is chosen for how fast the alert
must page and for what it must stay quiet about (the runbook says which, per alert).
TEST shrinks minutes to seconds so the end-to-end test sees alerts on a real Prometheus
scraping every second.

Every rate window assumes a scrape interval of 30 s or less (two samples in the shortest
window); the page times quoted assume scrapes and rule evaluations every 30 s.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields, replace

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def seconds(duration: str) -> int:
    """Seconds in a one-unit Prometheus duration such as "30s", "10m" or "1h"."""
    match = re.fullmatch(r"(\d+)([smhd])", duration)
    if not match:
        raise ValueError(f"duration {duration!r}: use a number and one unit, like 30s or 10m")
    return int(match.group(1)) * _UNITS[match.group(2)]


def span(duration: str) -> str:
    """A duration for people: "2m" -> "2 minutes"."""
    total = seconds(duration)
    for unit, size in (("hour", 3600), ("minute", 60)):
        if total % size == 0 and total >= size:
            n = total // size
            return f"{n} {unit}{'s' if n != 1 else ''}"
    return f"{total} seconds"


class ConfigError(ValueError):
    """Every problem of a configuration at once, one line each."""

    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Config:
    # Selects the exporter's series (and its `up`) in every rule. Dashboards use a $job
    # variable instead.
    selector: str = 'job="celery-stalk"'
    # Target labels that differ between the exporters of an HA pair scraping one broker.
    # Rules aggregate them away (so a pair pages once) and match `up` on them (so a dead
    # exporter's last samples page nothing). Exporters of different brokers must differ
    # in some other label (their job, or a target label of your own).
    replica_labels: tuple[str, ...] = ("instance", "pod")
    runbook_url: str = "https://github.com/celery-stalk/celery-stalk/blob/main/alerts/runbook.md"

    # A dead exporter pages within 2.5 minutes (3 at 1 m scrapes); a restart takes seconds.
    exporter_down_for: str = "2m"
    # A total broker outage pages within 2.5 minutes; a failover under 2 minutes does not.
    broker_unreachable_for: str = "2m"

    # Worker heartbeats show tasks processed, but no task event arrived.
    events_stalled_window: str = "10m"
    events_stalled_for: str = "5m"
    # The exporter judged a worker's task events off (30 s after its first task without
    # them); for: lets a worker restarted with -E right after a deploy turn it back.
    task_events_off_for: str = "2m"

    # A lost worker pages at once (the exporter's --worker-timeout already told a dead
    # worker from a late heartbeat) and stops paging this long after its last heartbeat.
    worker_lost_window: str = "15m"
    # The exporter's event stream must have been connected this long before a loss pages:
    # after a broker outage workers reconnect with a backoff of up to 30 s.
    worker_lost_settle: str = "2m"

    # Redis cannot count consumers: a queue is unconsumed when it held messages and no task
    # was received from it for the window (RabbitMQ reports consumers directly), for for:.
    no_consumers_window: str = "5m"
    no_consumers_for: str = "5m"

    # Growing: the depth trends up over the window and over its last short window (a burst
    # that drains turns the short trend down at once), continuously for for:.
    backlog_window: str = "10m"
    backlog_short_window: str = "5m"
    backlog_for: str = "10m"
    backlog_min_messages: int = 10  # noise floor, not a static threshold

    # Stuck: the oldest message waiting in a queue (celery_queue_oldest_message_age_seconds)
    # is older than the threshold. The age is already a duration, so for: only rides out a
    # scrape that read a stale head; a queue that is consumed keeps renewing its head.
    queue_oldest_age_seconds: float = 600
    queue_oldest_age_for: str = "1m"

    queue_wait_window: str = "10m"
    queue_wait_for: str = "15m"  # longer than the window: a deploy's slow minutes stay quiet
    queue_wait_p95_seconds: float = 300  # a bucket bound of the default wait buckets

    # Terminal failures (task-failed; retries are task-retried) over succeeded + failed.
    # Severe: the ratio over the fast window, for fast_for (longer than a 2-minute burst
    # plus the tail the window gives it).
    failure_fast_window: str = "2m"
    failure_fast_for: str = "3m"
    failure_fast_ratio: float = 0.5
    # Mild and sustained: the ratio over the slow window and over its short window (so it
    # resolves soon after failures stop), for slow_for.
    failure_slow_window: str = "30m"
    failure_slow_short_window: str = "5m"
    failure_slow_for: str = "10m"
    failure_slow_ratio: float = 0.1
    failure_min_tasks: int = 10  # finished in the window, so 1 failure out of 1 does not page

    # A time-limit hit is seen as a counter that grew, or appeared, since this long ago
    # (at least one rule evaluation interval), and keeps the alert firing for the window.
    time_limit_lookback: str = "1m"
    time_limit_window: str = "5m"

    # A task running (started, not finished) longer than this pages, after for:. Above
    # the longest run any task legitimately takes.
    task_stuck_after: str = "1h"
    task_stuck_for: str = "2m"
    # Orphans (tasks on a worker that was lost) are seen as the time-limit hits are, and
    # keep the alert firing for the window (as long as a lost worker's page).
    orphaned_lookback: str = "1m"
    orphaned_window: str = "15m"
    # Saturated: workers busy to this share of their concurrency while the total backlog
    # trends up over the window, for for:.
    saturation_ratio: float = 0.9
    saturation_window: str = "10m"
    saturation_for: str = "10m"

    # A duplicate periodic run keeps its alert firing this long.
    beat_duplicate_window: str = "15m"
    # Beat is down when a run was missed and no entry has run since, for for: (long enough
    # for a frequent entry to prove beat alive when only a slow one missed).
    beat_down_for: str = "5m"

    # Workflows finished failed over all finished, over the window, for for:.
    workflow_failure_window: str = "30m"
    workflow_failure_for: str = "10m"
    workflow_failure_ratio: float = 0.1
    workflow_failure_min_workflows: int = 5
    # Stuck: the oldest in flight is older than factor times the p99 duration over the
    # history window, and older than the floor (longer than --workflow-settle), for for:.
    workflow_history_window: str = "1d"
    workflow_stuck_factor: float = 3.0
    workflow_stuck_floor: str = "15m"
    workflow_stuck_for: str = "5m"

    dashboard_refresh: str = "30s"

    # The job label of the compatibility series (alerts/compat/): the job the old tool was
    # scraped as, which its dashboards and alerts select.
    celery_exporter_job: str = "celery-exporter"
    flower_job: str = "flower"

    def __post_init__(self):
        problems = self.problems()
        if problems:
            raise ConfigError(problems)

    def problems(self) -> list[str]:
        found = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name.endswith(("_for", "_window", "_settle", "_lookback", "_refresh", "_floor",
                                "_after")):
                try:
                    if seconds(value) <= 0:
                        found.append(f"{f.name}: {value!r} must be longer than 0s")
                except (TypeError, ValueError):
                    found.append(f"{f.name}: {value!r} is not a duration: use a number and one "
                                 "unit, like 30s or 10m")
            elif f.name.endswith("_ratio") and not 0 < value <= 1:
                found.append(f"{f.name}: {value!r} must be a fraction above 0 and at most 1")
            elif f.name.endswith(("_min_tasks", "_min_messages", "_min_workflows")) and value < 1:
                found.append(f"{f.name}: {value!r} must be 1 or more")
        if not self.selector.strip() or "{" in self.selector or "}" in self.selector:
            found.append(f"selector: {self.selector!r}: give label matchers without braces, "
                         'like job="celery"')
        bad = [label for label in self.replica_labels if not _LABEL.fullmatch(label)]
        if bad or not self.replica_labels:
            found.append(f"replica_labels: {list(self.replica_labels)!r}: give label names, "
                         "like instance,pod")
        if found:  # the window comparisons below need valid durations
            return found
        for short, long in (("backlog_short_window", "backlog_window"),
                            ("failure_slow_short_window", "failure_slow_window"),
                            ("time_limit_lookback", "time_limit_window"),
                            ("orphaned_lookback", "orphaned_window")):
            if seconds(getattr(self, short)) > seconds(getattr(self, long)):
                found.append(f"{short}: {getattr(self, short)} must not be longer than "
                             f"{long} ({getattr(self, long)})")
        if not self.queue_oldest_age_seconds > 0:
            found.append(f"queue_oldest_age_seconds: {self.queue_oldest_age_seconds!r} must be "
                         "above 0")
        if self.workflow_stuck_factor < 1:
            found.append(f"workflow_stuck_factor: {self.workflow_stuck_factor!r} must be 1 or "
                         "more: a workflow is stuck when older than its usual p99")
        if self.failure_slow_ratio >= self.failure_fast_ratio:
            found.append("failure_slow_ratio must be below failure_fast_ratio: the slow alert "
                         "is for failure ratios under the fast one's")
        return found


DEFAULT = Config()

# For tests on a real Prometheus scraping and evaluating every second: the same rules,
# seconds instead of minutes. Never shipped.
TEST = replace(
    DEFAULT,
    exporter_down_for="5s",
    broker_unreachable_for="5s",
    events_stalled_window="20s",
    events_stalled_for="5s",
    task_events_off_for="5s",
    worker_lost_window="25s",
    worker_lost_settle="15s",
    no_consumers_window="10s",
    no_consumers_for="5s",
    backlog_window="20s",
    backlog_short_window="10s",
    backlog_for="20s",
    queue_oldest_age_seconds=60,
    queue_oldest_age_for="5s",
    queue_wait_window="20s",
    queue_wait_for="30s",
    failure_fast_window="10s",
    failure_fast_for="10s",
    failure_slow_window="60s",
    failure_slow_short_window="20s",
    failure_slow_for="30s",
    time_limit_lookback="3s",
    time_limit_window="10s",
    task_stuck_after="20s",
    task_stuck_for="5s",
    orphaned_lookback="3s",
    orphaned_window="10s",
    saturation_window="20s",
    saturation_for="10s",
    beat_duplicate_window="30s",
    beat_down_for="10s",
    workflow_failure_window="20s",
    workflow_failure_for="5s",
    workflow_history_window="5m",
    workflow_stuck_floor="10s",
    workflow_stuck_for="5s",
)


def overrides(base: Config, values: dict) -> Config:
    """``base`` with the given fields replaced; values may be strings, as from flags or YAML.

    Unknown names and bad values are all reported at once in a ConfigError.
    """
    known = {f.name: f for f in fields(Config)}
    problems, changes = [], {}
    for raw_name, value in values.items():
        name = str(raw_name).replace("-", "_")
        if name not in known:
            problems.append(f"{raw_name}: no such setting (known: {', '.join(sorted(known))})")
            continue
        default = getattr(base, name)
        try:
            changes[name] = _coerce(value, default)
        except ValueError:
            problems.append(f"{raw_name}: {value!r} is not {_kind(default)}")
    if problems:
        raise ConfigError(problems)
    try:
        return replace(base, **changes)
    except ConfigError:
        raise
    except TypeError as exc:  # a wrongly typed value that _coerce let through
        raise ConfigError([str(exc)]) from None


def _coerce(value, default):
    if isinstance(default, tuple):
        items = value if isinstance(value, (list, tuple)) else str(value).split(",")
        return tuple(str(item).strip() for item in items if str(item).strip())
    if isinstance(default, bool):
        raise ValueError
    if isinstance(default, int):
        if isinstance(value, float) or not re.fullmatch(r"-?\d+", str(value).strip()):
            raise ValueError
        return int(value)
    if isinstance(default, float):
        return float(value)
    return str(value)


def _kind(default) -> str:
    if isinstance(default, tuple):
        return "a comma-separated list of label names"
    if isinstance(default, int):
        return "a whole number"
    if isinstance(default, float):
        return "a number"
    return "a string"
