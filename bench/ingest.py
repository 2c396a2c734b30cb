"""Benchmark 1: event ingest through a real broker, celery-stalk against its peers.

For each stream shape (batched task.multi, one event per message) and each
consumer, in turn on the same private broker (redis-server with its default
client-output-buffer-limit, checked at start; or a RabbitMQ node), with the
same generated stream:

* ladder: publish at an offered rate for --duration seconds, wait until the
  consumer's /metrics counts every event of the slice (or stops making
  progress), and go up the ladder (x1.5) until it loses events or lags; then
  one step halfway back. Sustained = the highest rate with nothing lost and
  the consumer done within --max-lag seconds of the publisher.
* burst: publish --burst-events as fast as the publisher can and count what
  arrives (a slow consumer is dropped by Redis here, or exits).

A consumer runs alone (peers are stopped), so the three never share the two
cores; the publisher and the broker do run beside it (with --pin, on the other
core: the consumer on CPU 1, the publisher and the broker on CPU 0). On
RabbitMQ, each shape starts with the publisher alone (a queue bound, nobody
consuming): the rate the broker takes, the ceiling of every ladder. Results
go to a JSON file and a table on stdout.

    bench/.venv/bin/python bench/ingest.py --shape batched --consumer celery-stalk
    bench/.venv/bin/python bench/ingest.py --broker rabbitmq --pin --tasks 50000
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import threading
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import rabbitmq  # noqa: E402
import stream  # noqa: E402
from consumers import CONSUMERS, wait_subscribed  # noqa: E402
from pacing import PacedPublisher  # noqa: E402

from tests.brokers import RabbitMQServer, RedisServer, free_port  # noqa: E402

CONSUMER_CPU, PUBLISHER_CPU = 1, 0  # with --pin


class Publisher(PacedPublisher):
    """Writes ready RESP PUBLISH commands to Redis at a paced rate; counts the replies.

    A reply of 0 means no subscriber received the message: the consumer had
    been dropped (or exited) by then.
    """

    def __init__(self, port: int, fleet: stream.Fleet):
        super().__init__(fleet)
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.replies = 0
        self.unreceived = 0
        self.thread = threading.Thread(target=self._read_replies, daemon=True)
        self.thread.start()

    def _read_replies(self) -> None:
        tail = b""
        while True:
            data = self.sock.recv(1 << 16)
            if not data:
                return
            data = tail + data
            cut = data.rfind(b"\r\n") + 2
            whole, tail = data[:cut], data[cut:]
            self.replies += whole.count(b"\r\n")
            self.unreceived += whole.count(b":0\r\n")

    def publish(self, messages: list, rate: float | None) -> tuple[float, float]:
        """Send ``messages`` at ``rate`` events/s (None: as fast as possible), and the
        workers' heartbeats meanwhile; returns when it started and ended, once Redis
        has answered every command."""
        commands = len(messages)
        heartbeats_before = self.heartbeats
        replies_before = self.replies
        start = self.send_paced(messages, rate)
        end = time.perf_counter()
        commands += self.heartbeats - heartbeats_before
        while self.replies < replies_before + commands:
            time.sleep(0.001)
        return start, end

    def close(self) -> None:
        self.sock.close()


class RedisBroker:
    """A private redis-server with Redis's default pub/sub output buffer limit."""

    name = "redis"

    def __init__(self, pin: bool):
        self.server = RedisServer()
        self.pin = pin

    def __enter__(self):
        self.server.__enter__()
        if self.pin:
            rabbitmq.pin_tree(self.server._proc.pid, PUBLISHER_CPU)
        self.client = self.server.client()
        limit = self.client.config_get("client-output-buffer-limit")["client-output-buffer-limit"]
        self.info = {"version": self.client.info()["redis_version"],
                     "client-output-buffer-limit": limit}
        print(f"redis {self.info['version']} client-output-buffer-limit: {limit}")
        return self

    def __exit__(self, *exc):
        self.server.__exit__(*exc)

    @property
    def url(self) -> str:
        return self.server.url

    def publisher(self, fleet):
        return Publisher(self.server.port, fleet)

    def wait_ready(self, consumer) -> None:
        wait_subscribed(self.client, consumer)

    def backlog(self) -> int | None:
        return None  # pub/sub keeps none: what a subscriber misses is gone

    def reset(self) -> None:
        self.client.flushall()


class RabbitBroker:
    """A private RabbitMQ node (tests/brokers.py), no plugins, default settings."""

    name = "rabbitmq"

    def __init__(self, pin: bool):
        self.server = RabbitMQServer()
        self.pin = pin

    def __enter__(self):
        self.server.__enter__()
        if self.pin:
            rabbitmq.pin_tree(self.server._proc.pid, PUBLISHER_CPU)
        version = self.server.ctl("version").strip()
        self.info = {"version": version}
        print(f"rabbitmq {version}")
        return self

    def __exit__(self, *exc):
        self.server.__exit__(*exc)

    @property
    def url(self) -> str:
        return self.server.url

    def publisher(self, fleet):
        return rabbitmq.AmqpPublisher(self.server.url, fleet)

    def wait_ready(self, consumer) -> None:
        rabbitmq.wait_consuming(self.server, consumer)

    def backlog(self) -> int | None:
        """Messages waiting in the event queues (the consumer's, while it runs)."""
        return sum(ready for ready, _ in rabbitmq.event_queues(self.server).values())

    def reset(self) -> None:
        for name in rabbitmq.event_queues(self.server):
            self.server.ctl("delete_queue", name)

    def publisher_alone(self, messages: list, spec) -> dict:
        """The rate the broker takes the stream at with nobody consuming (a queue of our
        own bound, so every message is routed and stored, as for a consumer)."""
        from kombu import Connection, Exchange, Queue

        queue = Queue("celeryev.bench-publisher-alone", Exchange("celeryev", type="topic"),
                      routing_key="#", auto_delete=False, durable=False)
        with Connection(self.server.url) as connection:
            queue(connection.default_channel).declare()
            publisher = self.publisher(stream.Fleet(spec))
            try:
                start, end = publisher.publish(messages, None)
            finally:
                publisher.close()
            events = sum(m.events for m in messages)
            queue(connection.default_channel).delete()
        return {"events": events, "published_events_per_s": round(events / (end - start))}


class Cursor:
    """Consecutive slices of the stream, so each step publishes tasks not published before
    (wrapping to the start, with the same task ids again, only when the stream runs out)."""

    def __init__(self, messages: list):
        self.messages, self.at, self.wrapped = messages, 0, False

    def take(self, events: int) -> list:
        out, count = [], 0
        while count < events:
            if self.at >= len(self.messages):
                self.at, self.wrapped = 0, True
            message = self.messages[self.at]
            out.append(message)
            count += message.events
            self.at += 1
        return out


def wait_counted(consumer, before: Counter, expected: Counter, stall: float, limit: float):
    """Poll /metrics until every expected event is counted.

    Returns (counted, done_at, scrape_s): done_at is when the scrape that first saw
    everything counted was sent (its answer reflects the consumer at or after that
    time), scrape_s how long the slowest scrape took: a consumer whose scrapes are
    slow (celery-exporter asks the workers on every scrape) is judged with that slack.
    """
    deadline = time.perf_counter() + limit
    last_total, last_progress, slowest = -1, time.perf_counter(), 0.0
    delta: dict = {}
    while True:
        sent = time.perf_counter()
        try:
            counts = consumer.counted()
        except OSError:
            counts = None
        now = time.perf_counter()
        slowest = max(slowest, now - sent)
        if counts is not None:
            delta = {k: counts[k] - before[k] for k in expected}
            total = sum(delta.values())
            if all(delta[k] >= expected[k] for k in expected):
                return delta, sent, slowest
            if total != last_total:
                last_total, last_progress = total, now
        if not consumer.alive() or now - last_progress > stall or now > deadline:
            return delta, None, slowest
        time.sleep(0.1)


def settled_counts(consumer, timeout: float = 60.0) -> Counter:
    """Counts once the consumer is done with earlier steps (two equal reads 0.5 s apart)."""
    deadline = time.monotonic() + timeout
    last = consumer.counted()
    while time.monotonic() < deadline:
        time.sleep(0.5)
        counts = consumer.counted()
        if counts == last:
            return counts
        last = counts
    return last


class RssSampler:
    """The consumer's peak RSS while a step runs, sampled every 0.5 s."""

    def __init__(self, consumer):
        self.consumer, self.peak, self.done = consumer, 0.0, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.done.wait(0.5):
            try:
                self.peak = max(self.peak, self.consumer.rss_mb())
            except OSError:  # it exited
                return

    def stop(self) -> None:
        self.done.set()
        self.thread.join()


def run_step(consumer, broker, publisher, messages, rate, args) -> dict:
    totals = stream.totals(messages)
    before = settled_counts(consumer)
    cpu_before = consumer.cpu_seconds()
    unreceived_before = publisher.unreceived
    heartbeats_before = publisher.heartbeats
    rss = RssSampler(consumer)
    start, end = publisher.publish(messages, rate)
    totals["worker-heartbeat"] += publisher.heartbeats - heartbeats_before
    expected = Counter({k: totals[k] for k in consumer.counts if totals[k]})
    events = sum(totals.values())
    counted, done, scrape_s = wait_counted(consumer, before, expected, stall=args.stall,
                                           limit=max(60.0, 4 * (end - start)))
    alive = consumer.alive()
    rss.stop()
    lost = sum(expected.values()) - sum(min(counted.get(k, 0), expected[k]) for k in expected)
    result = {
        "offered_events_per_s": rate,
        "events": events,
        "messages": len(messages),
        "published_events_per_s": round(events / (end - start)),
        "lost_events": lost,
        "unreceived_messages": publisher.unreceived - unreceived_before,
        "alive": alive,
        "lag_s": round(done - end, 2) if done else None,
        "processed_events_per_s": round(events / (done - start)) if done else None,
        "cpu_us_per_event": (round((consumer.cpu_seconds() - cpu_before) / events * 1e6, 1)
                             if alive else None),
        "rss_mb": round(consumer.rss_mb(), 1) if alive else None,
        "rss_mb_peak": round(rss.peak, 1),
        "slowest_scrape_s": round(scrape_s, 2),
        "loadavg": os.getloadavg()[0],
        # messages left in the broker's event queues once counted (RabbitMQ)
        "backlog_messages": broker.backlog() if alive else None,
    }
    result["kept_up"] = bool(done and lost == 0 and done - end <= args.max_lag + scrape_s)
    return result


def start_consumer(name, broker, args):
    consumer = CONSUMERS[name](broker.url, free_port(), CONSUMER_CPU if args.pin else None)
    consumer.start()
    try:
        broker.wait_ready(consumer)
    except BaseException:
        consumer.stop()
        raise
    time.sleep(1.0)  # let it settle (Flower and celery-exporter start extra threads)
    return consumer


def ladder(name, broker, publisher, cursor, args, log) -> dict:
    steps = []
    consumer = start_consumer(name, broker, args)
    try:
        rate = args.start_rate or (args.stalk_start_rate if name.startswith("celery-stalk")
                                   else 2_000.0)
        best, failed = None, None
        def step_at(rate: float) -> dict:
            """One ladder step at ``rate``, on a fresh consumer if the last one died."""
            nonlocal consumer
            if not consumer.alive():
                consumer.stop()
                consumer = start_consumer(name, broker, args)
            step = run_step(consumer, broker, publisher, cursor.take(int(rate * args.duration)),
                            rate, args)
            steps.append(step)
            log(name, step)
            return step

        publisher_limited = False
        while rate <= args.max_rate:
            step = step_at(rate)
            if step["kept_up"]:
                best = step
                if step["published_events_per_s"] < 0.9 * rate:
                    # The broker took less than offered: the ladder has reached the
                    # publisher's limit, not the consumer's. Higher steps measure nothing new.
                    publisher_limited = True
                    break
                rate *= 1.5
            else:
                failed = step
                break
        if best and failed:  # one step halfway between the last success and the failure
            step = step_at((best["offered_events_per_s"] + failed["offered_events_per_s"]) / 2)
            if step["kept_up"]:
                best = step
        burst = None
        if args.burst_events:
            if not consumer.alive():
                consumer.stop()
                consumer = start_consumer(name, broker, args)
            burst = run_step(consumer, broker, publisher, cursor.take(args.burst_events), None, args)
            log(name, burst)
    finally:
        consumer.stop()
    return {
        "sustained_events_per_s": best["processed_events_per_s"] if best else 0,
        "sustained_offered_events_per_s": best["offered_events_per_s"] if best else 0,
        "publisher_limited": publisher_limited,
        "steps": steps,
        "burst": burst,
    }


def sustain(name, broker, publisher, cursor, spec, args, log) -> dict:
    """One long step at --sustain tasks/s: does anything get lost, does memory stay flat?"""
    events_per_task = sum(m.events for m in cursor.messages) / spec.tasks
    rate = args.sustain * events_per_task
    consumer = start_consumer(name, broker, args)
    try:
        step = run_step(consumer, broker, publisher, cursor.take(int(rate * args.sustain_seconds)),
                        rate, args)
        log(name, step)
    finally:
        consumer.stop()
    return {"sustained_events_per_s": step["processed_events_per_s"] or 0,
            "tasks_per_s": args.sustain, "steps": [step], "burst": None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--broker", choices=("redis", "rabbitmq"), default="redis")
    parser.add_argument("--pin", action="store_true", help=f"the consumer on CPU {CONSUMER_CPU}, "
                        f"the publisher and the broker on CPU {PUBLISHER_CPU} (taskset)")
    parser.add_argument("--shape", action="append", choices=("batched", "single"))
    parser.add_argument("--consumer", action="append", choices=sorted(CONSUMERS))
    parser.add_argument("--tasks", type=int, default=120_000, help="tasks in the generated stream")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per ladder step")
    parser.add_argument("--start-rate", type=float, help="first ladder step (default: 20,000 "
                        "events/s for celery-stalk, on RabbitMQ at most a quarter of what the "
                        "publisher alone reached; 2,000 for the others)")
    parser.add_argument("--max-rate", type=float, default=400_000.0)
    parser.add_argument("--max-lag", type=float, default=1.0)
    parser.add_argument("--stall", type=float, default=5.0)
    parser.add_argument("--burst-events", type=int, default=200_000)
    parser.add_argument("--sustain", type=float, metavar="TASKS_PER_S",
                        help="instead of the ladder: one step at this many tasks/s for "
                        "--sustain-seconds (the no-loss check under Redis's default limit)")
    parser.add_argument("--sustain-seconds", type=float, default=75.0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    # Stopped with SIGTERM, still stop the broker and the consumer it started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    shapes = args.shape or ["batched", "single"]
    names = args.consumer or ["celery-stalk", "celery-stalk-kombu", "flower", "celery-exporter"]

    def log(name, step):
        print(f"  {name:20} offered={step['offered_events_per_s'] or 'burst'!s:>8} "
              f"published={step['published_events_per_s']:>7} "
              f"processed={step['processed_events_per_s']!s:>7} lost={step['lost_events']:>6} "
              f"unreceived={step['unreceived_messages']:>5} lag={step['lag_s']!s:>5} "
              f"cpu/event={step['cpu_us_per_event']!s:>5}us rss={step['rss_mb']!s:>6}MB peak={step['rss_mb_peak']}MB "
              f"scrape={step['slowest_scrape_s']}s "
              f"alive={step['alive']} load={step['loadavg']:.2f} "
              f"backlog={step['backlog_messages']}", flush=True)

    if args.pin:
        os.sched_setaffinity(0, {PUBLISHER_CPU})
    results = {"machine": machine(), "args": {k: v for k, v in vars(args).items() if k != "out"},
               "runs": {}, "publisher_alone": {}}
    broker_class = RabbitBroker if args.broker == "rabbitmq" else RedisBroker
    with broker_class(args.pin) as broker:
        results[broker.name] = broker.info
        for shape in shapes:
            spec = stream.StreamSpec(tasks=args.tasks, batched=shape == "batched",
                                     heartbeat_every_tasks=0,
                                     wire="amqp" if broker.name == "rabbitmq" else "redis")
            messages = stream.build(spec)
            print(f"{shape}: {len(messages)} messages, {sum(m.events for m in messages)} events, "
                  f"{sum(len(m.command) for m in messages) / 1e6:.0f} MB", flush=True)
            args.stalk_start_rate = 20_000.0
            if broker.name == "rabbitmq":
                alone = broker.publisher_alone(messages, spec)
                results["publisher_alone"][shape] = alone
                print(f"  publisher alone: {alone['published_events_per_s']} events/s", flush=True)
                # Below the broker's own ceiling, or the first step measures only the broker.
                args.stalk_start_rate = min(20_000.0, round(alone["published_events_per_s"] / 4, -3))
            for name in names:
                publisher = broker.publisher(stream.Fleet(spec))
                try:
                    cursor = Cursor(messages)
                    if args.sustain:
                        run = sustain(name, broker, publisher, cursor, spec, args, log)
                    else:
                        run = ladder(name, broker, publisher, cursor, args, log)
                    run["stream_wrapped"] = cursor.wrapped
                finally:
                    publisher.close()
                results["runs"].setdefault(shape, {})[name] = run
                print(f"{shape} {name}: sustained {run['sustained_events_per_s']} events/s", flush=True)
                broker.reset()
            del messages
    summary(results)
    out = args.out or Path(__file__).parent / "results" / (
        f"ingest-{args.broker}-{time.strftime('%Y%m%d-%H%M%S')}.json")
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(f"wrote {out}")


def summary(results) -> None:
    for shape, runs in results["runs"].items():
        peers = [r["sustained_events_per_s"] for n, r in runs.items() if not n.startswith("celery-stalk")]
        ours = runs.get("celery-stalk", {}).get("sustained_events_per_s")
        best_peer = max(peers) if peers else None
        ratio = f"{ours / best_peer:.1f}x the faster peer" if ours and best_peer else ""
        print(f"{shape}: " + ", ".join(f"{n} {r['sustained_events_per_s']}/s" for n, r in runs.items())
              + (f" -> celery-stalk {ratio}" if ratio else ""))


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), "?")
    return {"nproc": os.cpu_count(), "cpu": cpu, "python": sys.version.split()[0],
            "loadavg_at_start": os.getloadavg()}


if __name__ == "__main__":
    main()
