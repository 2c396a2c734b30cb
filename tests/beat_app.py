"""The Celery app of the beat tests: a schedule beat runs, and the exporter reads from the app.

STALK_TEST_SCHEDULER=redbeat runs it with RedBeat (its keys in the broker's Redis);
STALK_TEST_BEAT_STATIC=no leaves its beat_schedule empty (RedBeat's dynamic entries only).
"""

from __future__ import annotations

import os

from celery import Celery
from celery.schedules import crontab

broker = os.environ.get("STALK_TEST_BROKER", "memory://")
app = Celery("stalkbeat", broker=broker, set_as_current=True)
app.conf.update(
    task_send_sent_event=True,  # beat's runs as task-sent events
    worker_send_task_events=True,
    task_default_queue="work",
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
    timezone=os.environ.get("STALK_TEST_TIMEZONE", "UTC"),
    beat_max_loop_interval=1,
    beat_schedule={
        "add-every-second": {"task": "beat.add", "schedule": 1.0, "args": (2, 3)},
        "ping-every-2s": {"task": "beat.ping", "schedule": 2.0, "kwargs": {"who": "beat"}},
        "report-every-minute": {"task": "beat.report", "schedule": crontab(minute="*")},
    },
)
if os.environ.get("STALK_TEST_SCHEDULER") == "redbeat":
    app.conf.beat_scheduler = "redbeat.RedBeatScheduler"
    app.conf.redbeat_redis_url = broker
    app.conf.redbeat_lock_timeout = 5
    # no minute-level entry with RedBeat: its test checks intervals only
    app.conf.beat_schedule = {k: v for k, v in app.conf.beat_schedule.items()
                              if k != "report-every-minute"}
if os.environ.get("STALK_TEST_BEAT_STATIC") == "no":
    app.conf.beat_schedule = {}


@app.task(name="beat.add")
def add(x, y):
    return x + y


@app.task(name="beat.ping")
def ping(who):
    return who


@app.task(name="beat.report")
def report():
    return "done"
