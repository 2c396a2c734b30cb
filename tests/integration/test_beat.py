"""Periodic tasks: a real `celery beat` (and a real worker), the exporter reading the
schedule from the app (`celery -A tests.beat_app stalk`) or from RedBeat's keys alone."""

from __future__ import annotations

import socket
import sys
import time

import pytest

from tests.harness import (
    BeatProcess,
    ExporterProcess,
    WorkerProcess,
    app_env,
    eventually,
    save_redbeat_entry,
    wait_worker_up,
)

pytestmark = pytest.mark.integration

HOST = socket.gethostname()
GRACE = 1.5



def stalk_from_app(broker_url: str, *args: str, **env: str) -> ExporterProcess:
    """`celery -A tests.beat_app stalk`: the schedule from the app's beat_schedule."""
    process = ExporterProcess(broker_url, env=app_env(broker_url, **env))
    process.args = [sys.executable, "-m", "celery", "-A", "tests.beat_app", "stalk",
                    "--listen-address", f"127.0.0.1:{process.port}", *args]
    return process


def entry(m, name: str, metric: str):
    return m.get(f"celery_beat_entry_{metric}", entry=name)


def sent(m, task: str) -> float:
    return m.get("celery_task_sent_total", task=task, queue="work") or 0


def test_interval_and_crontab_entries_run_on_time_and_a_stopped_beat_misses_runs(
        redis_server, fleet):
    url = redis_server.fresh_url()
    beat = fleet(BeatProcess(url))  # running before the exporter starts, as in production
    worker = fleet(WorkerProcess(url, f"beat-worker@{HOST}", app="tests.beat_app"))
    exporter = fleet(stalk_from_app(url, "--beat-grace", str(GRACE)))
    wait_worker_up(exporter, worker.nodename)
    assert exporter.scrape().get("celery_beat_entry_info", entry="report-every-minute",
                                 task="beat.report", schedule="crontab * * * * *") == 1

    # Past the next minute, so the crontab entry has run once.
    minute = (int(time.time()) // 60 + 1) * 60
    eventually(lambda: entry(exporter.scrape(), "report-every-minute", "runs_total") == 1,
               minute - time.time() + 15, message=f"crontab run\n{beat.output()}")
    time.sleep(0.5)
    m = exporter.scrape()
    # Every run beat sent is counted, once, under its entry (matched by task and arguments).
    for name, task in (("add-every-second", "beat.add"), ("ping-every-2s", "beat.ping"),
                       ("report-every-minute", "beat.report")):
        assert entry(m, name, "runs_total") == sent(m, task) > 0, name
        assert entry(m, name, "missed_runs_total") == 0, name
        assert entry(m, name, "duplicate_runs_total") == 0, name
    runs = entry(m, "add-every-second", "runs_total")
    last = entry(m, "add-every-second", "last_run_timestamp_seconds")
    assert entry(m, "add-every-second", "next_run_timestamp_seconds") == pytest.approx(last + 1.0)
    # Every run was on time (the first one seen may only anchor the schedule).
    assert entry(m, "add-every-second", "delay_seconds_count") in (runs - 1, runs)
    assert entry(m, "add-every-second", "delay_seconds_sum") < 0.2 * runs
    cron_last = entry(m, "report-every-minute", "last_run_timestamp_seconds")
    assert minute <= cron_last < minute + 1.0  # beat sent it on the minute
    assert entry(m, "report-every-minute", "next_run_timestamp_seconds") == minute + 60
    assert entry(m, "report-every-minute", "delay_seconds_sum") < 1.0

    beat.stop()
    stopped = time.time()
    m = eventually(lambda: (lambda m: m if entry(m, "ping-every-2s", "missed_runs_total") >= 1
                            else None)(exporter.scrape()), 2 + GRACE + 5, message="missed run")
    assert entry(m, "add-every-second", "missed_runs_total") >= 1
    assert entry(m, "add-every-second", "runs_total") == sent(m, "beat.add")
    assert time.time() - stopped < 2 + GRACE + 5
    # What CeleryBeatDown reads (alerts/tests/beat.yml): a miss later than every run.
    last_runs = [v for (name, _), v in m.samples.items()
                 if name == "celery_beat_entry_last_run_timestamp_seconds"]
    assert entry(m, "ping-every-2s", "last_missed_timestamp_seconds") > max(last_runs)


def test_two_beats_count_duplicate_runs(redis_server, fleet):
    url = redis_server.fresh_url()
    fleet(BeatProcess(url))
    fleet(BeatProcess(url))
    exporter = fleet(stalk_from_app(url, "--beat-grace", str(GRACE)))
    m = eventually(lambda: (lambda m: m if entry(m, "add-every-second",
                                                 "duplicate_runs_total") >= 3 else None)(
        exporter.scrape()), 20, message="duplicates counted")
    assert entry(m, "add-every-second", "runs_total") == sent(m, "beat.add")
    assert entry(m, "add-every-second", "missed_runs_total") == 0


def test_redbeat_schedule_is_read_from_its_redis_keys_without_the_app(redis_server, fleet):
    url = redis_server.fresh_url()
    exporter = fleet(ExporterProcess(url, "--redbeat-key-prefix", "redbeat:",
                                     "--beat-refresh-interval", "0.5", "--beat-grace", str(GRACE)))
    beat = fleet(BeatProcess(url, STALK_TEST_SCHEDULER="redbeat"))
    eventually(lambda: entry(exporter.scrape(), "add-every-second", "runs_total"), 30,
               message=f"RedBeat runs\n{beat.output()}")

    # A dynamic entry, as applications add them at run time: only in Redis.
    save_redbeat_entry(url, "dynamic-add", "beat.add", 2.0, args=[5, 5])
    m = eventually(lambda: (lambda m: m if (entry(m, "dynamic-add", "runs_total") or 0) >= 2
                            else None)(exporter.scrape()), 20, message="dynamic entry runs")
    assert m.get("celery_beat_entry_info", entry="dynamic-add", task="beat.add",
                 schedule="every 2 s") == 1
    assert m.get("celery_stalk_beat_schedule_up") == 1
    total = sum(entry(m, name, "runs_total") for name in ("add-every-second", "dynamic-add"))
    assert total == sent(m, "beat.add")  # split by arguments: [2, 3] and [5, 5]
    for name in ("add-every-second", "ping-every-2s", "dynamic-add"):
        assert entry(m, name, "missed_runs_total") == 0, name
        assert entry(m, name, "duplicate_runs_total") == 0, name
    nxt = entry(m, "add-every-second", "next_run_timestamp_seconds")
    assert nxt == pytest.approx(entry(m, "add-every-second", "last_run_timestamp_seconds") + 1, abs=1)

    beat.stop()
    eventually(lambda: entry(exporter.scrape(), "dynamic-add", "missed_runs_total") >= 1,
               2 + GRACE + 5, message="missed after RedBeat stopped")


def test_an_app_whose_beat_runs_redbeat_is_read_from_redbeats_keys(redis_server, fleet):
    """`celery -A proj stalk` for an app with beat_scheduler RedBeat: its keys, not beat_schedule."""
    url = redis_server.fresh_url()
    save_redbeat_entry(url, "only-in-redis", "beat.ping", 30.0, args=["x"])
    exporter = fleet(stalk_from_app(url, "--beat-refresh-interval", "0.5",
                                    STALK_TEST_SCHEDULER="redbeat"))
    m = eventually(lambda: (lambda m: m if m.get("celery_stalk_beat_schedule_up") == 1 else None)(
        exporter.scrape()), 20, message="RedBeat read")
    assert m.label_values("celery_beat_entry_info", "entry") == {"only-in-redis"}
