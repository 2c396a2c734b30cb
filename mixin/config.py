"""The one place for thresholds, windows and the job selector of the alerts and dashboards.

Change a value here and run ``python -m mixin`` to regenerate alerts/ and dashboards/.
DEFAULT is what ships: windows and ``for:`` durations long enough that a deploy, a
scale-down or a short burst does not page. TEST shrinks them so the end-to-end test
sees an alert within seconds on a real Prometheus.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def seconds(duration: str) -> int:
    """Seconds in a one-unit Prometheus duration such as "30s", "10m" or "1h"."""
    match = re.fullmatch(r"(\d+)([smhd])", duration)
    if not match:
        raise ValueError(f"duration {duration!r}: use a number and one unit, like 30s or 10m")
    return int(match.group(1)) * _UNITS[match.group(2)]


@dataclass(frozen=True)
class Config:
    # Selects the exporter's series in every rule. Dashboards use a $job variable instead.
    selector: str = 'job="celery-stalk"'
    runbook_url: str = "https://github.com/celery-stalk/celery-stalk/blob/main/alerts/runbook.md"

    # The target must be down this long: an exporter restart takes seconds.
    exporter_down_for: str = "5m"
    # A Redis failover or RabbitMQ restart takes well under this.
    broker_unreachable_for: str = "5m"

    # Heartbeats report tasks executing, but no task event arrived for this long.
    events_stalled_window: str = "10m"
    events_stalled_for: str = "5m"

    # How long a lost worker keeps the alert firing. The exporter's --worker-timeout
    # (20 s) already tells a dead worker from a late heartbeat, so there is no for:.
    worker_lost_window: str = "15m"

    # Redis has no consumer count: a queue is unconsumed when it held messages and no
    # task was received from it for this long (RabbitMQ reports consumers directly).
    no_consumers_window: str = "10m"
    no_consumers_for: str = "5m"

    # The backlog trend is fitted over the window; it must rise for all of for:.
    # for: is longer than the window so a burst that drains does not page.
    backlog_window: str = "10m"
    backlog_for: str = "15m"
    backlog_min_messages: int = 10  # noise floor, not a static threshold

    queue_wait_window: str = "10m"
    queue_wait_for: str = "15m"  # longer than the window, as for failures
    queue_wait_p95_seconds: float = 300  # a bucket bound of the default wait buckets

    # Terminal failures (task-failed; retries are task-retried) over succeeded+failed.
    failure_window: str = "10m"
    failure_for: str = "15m"  # longer than the window: a burst under 5 minutes stays quiet
    failure_ratio: float = 0.1
    failure_min_tasks: int = 10  # so 1 failure out of 1 does not page

    # How long a time-limit kill keeps the alert firing; every kill pages.
    time_limit_window: str = "10m"

    dashboard_refresh: str = "30s"

    # The job label of the compatibility series (alerts/compat/): the job the old tool was
    # scraped as, which its dashboards and alerts select.
    celery_exporter_job: str = "celery-exporter"
    flower_job: str = "flower"

    def __post_init__(self):
        for name, value in vars(self).items():
            if name.endswith(("_for", "_window")):
                seconds(value)  # fail early on a bad duration


DEFAULT = Config()

# For tests on a real Prometheus scraping every second: same rules, seconds instead of
# minutes. Never shipped.
TEST = replace(
    DEFAULT,
    exporter_down_for="10s",
    broker_unreachable_for="10s",
    events_stalled_window="20s",
    events_stalled_for="5s",
    worker_lost_window="1m",
    no_consumers_window="20s",
    no_consumers_for="5s",
    backlog_window="20s",
    backlog_for="30s",
    queue_wait_window="20s",
    queue_wait_for="30s",
    failure_window="20s",
    failure_for="30s",
    time_limit_window="1m",
)
