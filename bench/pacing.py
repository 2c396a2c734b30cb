"""Writing a generated stream to a broker's socket at a paced rate, with the workers'
heartbeats on time: what the Redis and the RabbitMQ publishers of the ingest benchmark
share (each brings its socket and its ready commands or frames)."""

from __future__ import annotations

import time

import stream

# At most this much in one write: large enough to cost the benchmark almost nothing,
# small enough to keep the pace.
MAX_WRITE = 1 << 20


class PacedPublisher:
    """Subclasses set ``sock``, connected to the broker."""

    def __init__(self, fleet: stream.Fleet):
        self.fleet = fleet
        self.heartbeats = 0
        self.next_heartbeat = 0.0
        self.sock = None

    def send_paced(self, messages: list, rate: float | None) -> float:
        """Write ``messages`` (each a ready ``command`` of ``events`` events) at ``rate``
        events/s (None: as fast as the socket takes them), every worker's heartbeat every
        2 s of wall time among them; returns when it started (perf_counter)."""
        self.next_heartbeat = 0.0
        start = time.perf_counter()
        sent = 0
        i, n = 0, len(messages)
        while i < n:
            allowed = float("inf") if rate is None else rate * (time.perf_counter() - start) + 1
            batch, size = [], 0
            while i < n and sent < allowed and size < MAX_WRITE:
                batch.append(messages[i].command)
                size += len(messages[i].command)
                sent += messages[i].events
                i += 1
            now = time.time()
            if now >= self.next_heartbeat:
                batch += self.heartbeat_commands(now)
            if batch:
                self.sock.sendall(b"".join(batch))
            else:
                time.sleep(0.0005)
        return start

    def heartbeat_commands(self, now: float) -> list[bytes]:
        """A heartbeat from every worker, as each sends one every 2 s of wall time."""
        self.next_heartbeat = now + 2.0
        commands = []
        for hostname in self.fleet.workers_now():
            event = self.fleet.heartbeat(hostname, now)
            commands.append(self.fleet.message("worker.heartbeat", hostname, event).command)
        self.heartbeats += len(commands)
        return commands
