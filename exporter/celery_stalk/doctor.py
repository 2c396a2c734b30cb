"""``celery-stalk doctor``: listen to the broker for a while and say what is wrong.

It runs the exporter's own parts for a bounded time: the event source for the
transport feeds a fresh model, the queue reader reads depths, and problems.py
names what the model sees as misconfigured. Nothing is decoded or judged twice.

Exit status: 0 all is well, 1 something needs fixing, 2 the broker cannot be read.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from dataclasses import dataclass

from .brokers import reader_for
from .capacity import broker_stats, capacities
from .config import Config, redact
from .model import Model
from .model.diagnosis import CLOCK_SKEW_LIMIT
from .problems import SENT_EVENTS_FIX, clock_skew, sent_events_missing, task_events_off
from .sources import SourceState, event_source

OK, FAIL, NOTE = "ok", "fail", "note"
ALL_WELL, TO_FIX, UNREACHABLE = 0, 1, 2
# Seconds to wait for the event stream's subscription once the broker answered.
SUBSCRIBE_TIMEOUT = 10.0
# Seconds workers have to answer the stats broadcast (their pool and concurrency).
STATS_TIMEOUT = 1.0


@dataclass
class Check:
    check: str  # what was checked: broker, events, worker, task-sent, queue, settings
    status: str  # ok | fail | note (for information, nothing to fix)
    detail: str
    subject: str = ""  # the worker's or queue's name
    fix: str = ""


@dataclass
class Report:
    broker: str
    listened: float
    checks: list[Check]
    status: int
    workers: dict = dataclasses.field(default_factory=dict)  # name -> facts, for --format json
    queues: dict = dataclasses.field(default_factory=dict)  # name -> ready messages

    def text(self) -> str:
        lines = [f"celery-stalk doctor: {self.broker} (listened {self.listened:g} s)"]
        for c in self.checks:
            mark = {OK: "[ok]  ", FAIL: "[FAIL]", NOTE: "[note]"}[c.status]
            lines.append(f"{mark} {c.detail}")
            if c.fix:
                lines.append(f"       fix: {c.fix}")
        failed = sum(1 for c in self.checks if c.status == FAIL)
        lines.append("all well." if not failed else f"{failed} to fix.")
        return "\n".join(lines)

    def json(self) -> str:
        return json.dumps({"broker": self.broker, "listened_seconds": self.listened,
                           "status": self.status,
                           "checks": [dataclasses.asdict(c) for c in self.checks],
                           "workers": self.workers, "queues": self.queues}, indent=2)


def unreachable(config: Config, listened: float, what: str, exc: BaseException | None) -> Report:
    error = f": {type(exc).__name__}: {exc}" if exc is not None else ""
    detail = redact(f"broker {config.redacted_broker_url} cannot be read ({what}{error})",
                    config.secrets)
    return Report(config.redacted_broker_url, listened, [Check(
        "broker", FAIL, detail, fix="check --broker-url (host, port, password, Redis database "
        "or virtual host) and that the broker runs and is reachable from this host")],
        UNREACHABLE)


def examine(config: Config, listen: float, clock=time.time) -> Report:
    reader = reader_for(config)
    try:
        return _examine(config, listen, reader, clock)
    finally:
        try:
            reader.close()
        except Exception:  # closing a connection that never opened
            pass


def _examine(config: Config, listen: float, reader, clock) -> Report:
    try:
        reader.read(config.queues)
    except Exception as exc:
        return unreachable(config, 0, "queue read", exc)
    checks = [Check("broker", OK, f"broker reachable ({config.transport})")]
    heard = _listen(config, listen)
    if isinstance(heard, Report):
        return heard
    model, listened = heard
    now = clock()
    model.tick(now)
    health = model.health_snapshot()
    checks.append(_event_stream(health.events, listened))
    worker_checks, facts, longest_beat = _workers(config, model, now)
    checks += worker_checks
    checks.append(_task_sent(config, model, health.events))
    queue_checks, depths = _queues(config, model, reader)
    checks += queue_checks
    checks.append(_settings(config, longest_beat))
    failed = any(c.status == FAIL for c in checks)
    return Report(config.redacted_broker_url, listened, checks, TO_FIX if failed else ALL_WELL,
                  workers=facts, queues=depths)


def _listen(config: Config, listen: float) -> tuple[Model, float] | Report:
    """The event stream for ``listen`` seconds into a fresh model, as the exporter reads it."""
    # Within a short listen, work must be explained sooner than the exporter's 30 s.
    settings = dataclasses.replace(config.model, task_events_grace=min(30.0, listen / 3))
    model = Model(settings, static_queues=config.queues, routes=config.task_routes)
    source = event_source(config, model, SourceState())
    source.start()
    started = time.monotonic()
    try:
        if not source.consuming.wait(min(listen, SUBSCRIBE_TIMEOUT)):
            return unreachable(config, time.monotonic() - started,
                               "cannot subscribe to its event stream", None)
        time.sleep(max(0.0, listen - (time.monotonic() - started)))
    finally:
        source.stop()
        source.thread.join(5)
    return model, round(time.monotonic() - started, 1)


def _event_stream(events: dict[str, int], listened: float) -> Check:
    total = sum(events.values())
    if total:
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(events.items()))
        return Check("events", OK, f"event stream flowing: {total} events ({kinds})")
    return Check("events", FAIL, f"no event arrived in {listened:g} s",
                 fix="start a worker on this broker; if workers run, check that they use this "
                     "broker URL (same Redis database or virtual host) and do not run with "
                     "--without-heartbeat")


def _workers(config: Config, model: Model, now: float) -> tuple[list[Check], dict, float]:
    """A check per worker heard (and one per clock too far off), each worker's facts for
    --format json, and the longest heartbeat interval among them."""
    workers = model.worker_snapshot(now).workers
    pools = _pools(config) if workers else {}
    checks: list[Check] = []
    facts_json: dict[str, dict] = {}
    longest_beat = 0.0
    for name, view in sorted(workers.items()):
        d = view.diagnosis
        longest_beat = max(longest_beat, d.freq)
        facts_json[name] = {
            "up": view.up, "version": view.version, "system": d.system,
            "pool": pools.get(name), "heartbeat_interval_seconds": d.freq,
            "task_events": d.task_events, "processed": d.processed_total,
            "clock_offset_seconds": d.clock_offset,
        }
        facts = [f"Celery {view.version or '?'}", d.system or "system ?",
                 pools.get(name, "pool ?"), f"heartbeat every {d.freq:g} s",
                 f"{'?' if d.processed_total is None else d.processed_total} tasks processed"]
        if not view.up:
            facts.append("offline" if view.offline else "lost")
        if d.clock_offset is not None:
            facts.append(f"clock {round(d.clock_offset, 1) + 0.0:+.1f} s")  # never -0.0
        said = ", ".join(facts)
        if d.task_events is True:
            checks.append(Check("worker", OK, f"worker {name}: task events on; {said}",
                                subject=name))
        elif d.task_events is False and config.task_metrics_source == "workers":
            checks.append(Check("worker", NOTE, f"worker {name}: task events off (not needed "
                                f"with --task-metrics-source workers); {said}", subject=name))
        elif d.task_events is False:
            checks.append(Check("worker", FAIL, f"worker {name}: task events OFF; {said}",
                                subject=name, fix=task_events_off(name).fix))
        else:
            checks.append(Check("worker", NOTE, f"worker {name}: task events not known (it "
                                f"processed no task while listening); {said}", subject=name))
        if d.clock_offset is not None and abs(d.clock_offset) > CLOCK_SKEW_LIMIT:
            problem = clock_skew(name, d.clock_offset)
            checks.append(Check("clock", FAIL, problem.what, subject=name, fix=problem.fix))
    return checks, facts_json, longest_beat


def _task_sent(config: Config, model: Model, events: dict[str, int]) -> Check:
    sent = events.get("task-sent", 0)
    unsent = model.unsent_tasks()
    if unsent and config.task_metrics_source == "workers":  # the workers know their queue
        return Check("task-sent", NOTE, sent_events_missing(unsent).what
                     + " (not needed with --task-metrics-source workers)")
    if unsent:
        return Check("task-sent", FAIL, sent_events_missing(unsent).what, fix=SENT_EVENTS_FIX)
    if sent:
        return Check("task-sent", OK, f"task-sent events arrive ({sent} seen)")
    return Check("task-sent", NOTE, "no task-sent event seen (no task was sent, or its "
                 "producer sends none)",
                 fix=SENT_EVENTS_FIX if events.get("task-received") else "")


def _pools(config: Config) -> dict[str, str]:
    """Each worker's pool and concurrency, from one ``stats`` broadcast (heartbeats do not
    carry them): {worker: "pool prefork x4"}. Workers that do not answer in time are left
    out; this is information, never a failure."""
    try:
        replies = broker_stats(config)(STATS_TIMEOUT)
    except Exception:
        return {}
    return {worker: f"pool {found.pool or '?'}"
            + (f" x{found.concurrency}" if found.concurrency else "")
            for worker, found in capacities(replies, config.model.max_workers).items()}


def _queues(config: Config, model: Model, reader) -> tuple[list[Check], dict[str, int]]:
    """A check per queue found (--queue, task-sent events, Redis bindings) with its depth."""
    try:
        names = set(model.known_queues()) | set(reader.discover())
        depths = reader.read(sorted(names))
    except Exception as exc:
        return [Check("queue", FAIL, redact(f"queue depths could not be read: "
                                            f"{type(exc).__name__}: {exc}", config.secrets),
                      fix="see --queue-read-timeout, and the broker's load")], {}
    if not depths:
        return [Check("queue", NOTE, "no queue found: none named by --queue, in task-sent "
                      "events or (Redis) in kombu's bindings",
                      fix="name the queues the workers consume with --queue")], {}
    checks = []
    for name, depth in sorted(depths.items()):
        consumers = "" if depth.consumers is None else f", consumers {depth.consumers}"
        checks.append(Check("queue", OK, f"queue {name}: {depth.messages} messages{consumers}",
                            subject=name))
    return checks, {name: depth.messages for name, depth in depths.items()}


def _settings(config: Config, longest_beat: float) -> Check:
    timeout = config.model.worker_timeout
    factor = config.model.heartbeat_grace_factor
    if not longest_beat:
        return Check("settings", NOTE, f"--worker-timeout {timeout:g} s (no heartbeat seen to "
                     "compare it with)")
    if timeout < longest_beat * factor:
        return Check("settings", NOTE, f"--worker-timeout {timeout:g} s is under {factor:g} "
                     f"heartbeat intervals ({longest_beat:g} s): such workers get "
                     f"{longest_beat * factor:g} s before they count as lost")
    return Check("settings", OK, f"--worker-timeout {timeout:g} s covers {timeout / longest_beat:.1f} "
                 f"heartbeat intervals (longest {longest_beat:g} s)")


def run_doctor(config: Config, listen: float, output: str = "text") -> int:
    # The parts log their reconnects at warning; the checklist says it once, clearly.
    logging.basicConfig(level=logging.CRITICAL)
    for name in ("celery_stalk", "kombu", "amqp", "celery"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    report = examine(config, listen)
    if output == "json":
        print(report.json(), flush=True)
    elif report.status == UNREACHABLE:  # one line, on stderr as every error
        [check] = report.checks
        print(f"celery-stalk doctor: error: {check.detail}: {check.fix}", file=sys.stderr,
              flush=True)
    else:
        print(report.text(), flush=True)
    return report.status


__all__ = ["Check", "Report", "examine", "run_doctor"]
