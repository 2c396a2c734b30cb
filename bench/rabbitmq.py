"""The RabbitMQ side of the ingest benchmark: a paced publisher of ready AMQP frames,
the broker pinned to its core, and what the broker says about the event queues.

The publisher opens a connection and channel with py-amqp, declares Celery's
``celeryev`` topic exchange, then writes ready Basic.Publish frames
(stream.amqp_publish) straight to the socket in writes of up to 1 MB, so
publishing costs the benchmark almost nothing: its rate is the broker's.
RabbitMQ pushes back on a publisher faster than it can route (credit flow,
then TCP), so ``published_events_per_s`` of a step says what the broker took.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time

import stream
from kombu import Connection, Exchange
from pacing import PacedPublisher


class AmqpPublisher(PacedPublisher):
    """Paced publishing of ready frames, and every worker's heartbeat every 2 s."""

    def __init__(self, url: str, fleet: stream.Fleet):
        super().__init__(fleet)
        self.unreceived = 0  # AMQP says nothing of unrouted messages without confirms
        self.connection = Connection(url, heartbeat=0)
        self.connection.connect()
        channel = self.connection.connection.channel(1)
        Exchange("celeryev", type="topic", durable=True)(channel).declare()
        self.sock = self.connection.connection.sock
        # RabbitMQ blocks a publisher faster than it can route (credit flow) for as long
        # as it takes: a write must wait, not time out.
        self.sock.settimeout(None)
        # py-amqp sets TCP_USER_TIMEOUT to 1 s: a write the broker leaves unacknowledged
        # that long (it is pushing back) would drop the connection.
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, 0)

    def publish(self, messages: list, rate: float | None) -> tuple[float, float]:
        start = self.send_paced(messages, rate)
        return start, time.perf_counter()

    def close(self) -> None:
        try:
            self.connection.release()
        except Exception:  # the broker may have cut us off already
            pass


def event_queues(server) -> dict[str, tuple[int, int]]:
    """Queues bound to celeryev (celeryev.*): name -> (messages ready, consumers)."""
    queues = {}
    for line in server.ctl("list_queues", "-q", "name", "messages_ready", "consumers").splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0].startswith("celeryev.") and parts[1].isdigit():
            queues[parts[0]] = (int(parts[1]), int(parts[2]))
    return queues


def wait_consuming(server, consumer, timeout: float = 90.0) -> str:
    """Until a celeryev queue has a consumer and the consumer serves /metrics; its name."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not consumer.alive():
            raise RuntimeError(f"{consumer.name} exited:\n{consumer.output()}")
        consuming = [name for name, (_, consumers) in event_queues(server).items() if consumers]
        if consuming:
            try:
                consumer.counted()
                return consuming[0]
            except OSError:
                pass
        time.sleep(0.5)
    raise RuntimeError(f"{consumer.name} not consuming within {timeout} s:\n{consumer.output()}")


def pin_tree(pid: int, cpu: int) -> None:
    """Pin a process, every thread of it and of its descendants, to one CPU."""
    pids = [pid]
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid in pids or _descends(int(entry), pid):
                pids.append(int(entry))
    for p in set(pids):
        subprocess.run(["taskset", "-a", "-p", "-c", str(cpu), str(p)], capture_output=True)


def _descends(pid: int, ancestor: int) -> bool:
    while pid > 1:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                pid = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return False
        if pid == ancestor:
            return True
    return False
