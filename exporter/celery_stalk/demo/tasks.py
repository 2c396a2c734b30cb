"""The demo's Celery app: a small shop whose tasks succeed, fail, retry, run slow and back up.

Each task's fate is decided by its arguments (chosen by traffic.py), so the mix
is realistic yet reproducible. Configured from the environment, so the same
module serves the workers and the producer, here and in the compose stack:

- CELERY_STALK_DEMO_BROKER_URL (default redis://localhost:6379/0)
- CELERY_STALK_DEMO_TRANSPORT_OPTIONS (JSON, default {})
"""

from __future__ import annotations

import json
import os
import time

from celery import Celery

DEFAULT_QUEUE = "default"
REPORTS_QUEUE = "reports"  # served by one slow worker: this is where a backlog builds

app = Celery("shop", set_as_current=False)
app.conf.update(
    broker_url=os.environ.get("CELERY_STALK_DEMO_BROKER_URL", "redis://localhost:6379/0"),
    broker_transport_options=json.loads(os.environ.get("CELERY_STALK_DEMO_TRANSPORT_OPTIONS", "{}")),
    broker_connection_retry_on_startup=True,
    # What celery-stalk needs: task events from workers, task-sent from producers.
    worker_send_task_events=True,
    task_send_sent_event=True,
    task_default_queue=DEFAULT_QUEUE,
    task_routes={"shop.build_report": {"queue": REPORTS_QUEUE}},
    task_ignore_result=True,
    worker_prefetch_multiplier=1,
    worker_hijack_root_logger=False,
)


class CardDeclined(ValueError):
    pass


@app.task(name="shop.send_email")
def send_email(order_id: int, smtp_down: bool = False) -> None:
    time.sleep(0.02)
    if smtp_down:
        raise TimeoutError("SMTP server did not answer within 10 s")


@app.task(name="shop.resize_image")
def resize_image(image_id: int, seconds: float, size_missing: bool = False) -> int:
    time.sleep(seconds)
    sizes = {"thumb": 64, "hero": 1200}
    if size_missing:
        del sizes["hero"]
    return sizes["hero"]  # KeyError when the size is missing, as a real bug would


@app.task(name="shop.charge_card", bind=True, max_retries=3)
def charge_card(self, order_id: int, gateway_flaky: bool = False, declined: bool = False) -> None:
    time.sleep(0.05)
    if declined:
        raise CardDeclined("card declined")
    if gateway_flaky and self.request.retries == 0:
        raise self.retry(countdown=1, exc=ConnectionError("payment gateway reset the connection"))


@app.task(name="shop.sync_inventory", soft_time_limit=3)
def sync_inventory(seconds: float) -> None:
    """Slow; past 3 s it hits its soft time limit and fails with SoftTimeLimitExceeded."""
    time.sleep(seconds)


@app.task(name="shop.build_report")
def build_report(report_id: int, seconds: float) -> None:
    time.sleep(seconds)
