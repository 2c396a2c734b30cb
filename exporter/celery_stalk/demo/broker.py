"""The demo's broker: a private redis-server if one is on PATH, else kombu's filesystem transport.

Both carry Celery's events. The filesystem transport needs no server at all
(messages are files in the demo's temp dir) but polls, so it is a little slower.
"""

from __future__ import annotations

import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from .processes import Child


@dataclass
class Broker:
    url: str
    description: str
    transport_options: dict = field(default_factory=dict)
    process: Child | None = None

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_broker(directory: Path) -> Broker:
    redis_server = shutil.which("redis-server")
    if redis_server:
        return _start_redis(redis_server, directory)
    return _filesystem(directory)


def _start_redis(redis_server: str, directory: Path) -> Broker:
    port = free_port()
    process = Child("redis-server", [
        redis_server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
        "--appendonly", "no", "--dir", str(directory),
    ], directory)
    broker = Broker(f"redis://127.0.0.1:{port}/0", f"redis-server on 127.0.0.1:{port}", process=process)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and process.alive():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return broker
        except OSError:
            time.sleep(0.1)
    broker.stop()
    raise RuntimeError(f"redis-server did not start:\n{process.log_tail()}")


def _filesystem(directory: Path) -> Broker:
    messages, control = directory / "messages", directory / "control"
    messages.mkdir()
    control.mkdir()
    options = {
        "data_folder_in": str(messages),
        "data_folder_out": str(messages),
        "control_folder": str(control),
        "polling_interval": 0.2,
    }
    return Broker("filesystem://", f"embedded filesystem broker in {directory}", options)
