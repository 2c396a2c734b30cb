"""The demo's producer: once a second, a round of a shop's task mix.

Every round sends successes, and on a fixed rhythm failures of several types,
a retry, a slow task that overruns its time limit, and reports for the one
slow reports worker, so the reports queue backs up (up to BACKLOG_TARGET).

Run alone (as the compose stack does): python -m celery_stalk.demo.traffic
"""

from __future__ import annotations

import logging
import random
import threading

from . import tasks

BACKLOG_TARGET = 25

log = logging.getLogger(__name__)


def send_round(number: int, rng: random.Random, reports_waiting: int) -> None:
    order = number * 100
    for i in range(6):
        tasks.send_email.delay(order + i, smtp_down=(i == 0 and number % 3 == 0))
    for i in range(3):
        tasks.resize_image.delay(order + i, round(rng.uniform(0.05, 0.4), 2),
                                 size_missing=(i == 0 and number % 4 == 0))
    tasks.charge_card.delay(order, gateway_flaky=(number % 2 == 0))
    tasks.charge_card.delay(order + 1, declined=(number % 5 == 0))
    if number % 3 == 0:
        # every other one runs past its 3 s soft time limit
        seconds = 4.0 if number % 6 == 0 else round(rng.uniform(1.0, 2.5), 2)
        tasks.sync_inventory.delay(seconds)
    if reports_waiting < BACKLOG_TARGET:
        for i in range(2):
            tasks.build_report.delay(order + i, round(rng.uniform(1.5, 3.0), 2))


def waiting(queue: str) -> int:
    """Messages waiting in ``queue``, from the broker; 0 if it does not exist yet."""
    with tasks.app.connection_for_write() as connection:
        try:
            return connection.default_channel.queue_declare(queue, passive=True).message_count
        except connection.channel_errors:
            return 0


def run(stop: threading.Event, interval: float = 1.0, seed: int = 7) -> None:
    rng = random.Random(seed)
    number = 0
    while not stop.is_set():
        try:
            send_round(number, rng, waiting(tasks.REPORTS_QUEUE))
        except Exception as exc:  # broker gone for a moment: try again next round
            log.warning("could not send round %d: %s: %s", number, type(exc).__name__, exc)
        number += 1
        stop.wait(interval)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    run(threading.Event())
