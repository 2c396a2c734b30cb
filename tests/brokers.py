"""Real Redis and RabbitMQ servers for tests.

Each server runs as a child process of the test run, listens on 127.0.0.1 on
a free port and keeps all of its state in a private temp dir, so it never
interferes with (or depends on) brokers already running on the machine.

Lifecycle: ``start()`` / ``stop()`` / ``kill()`` / ``restart()`` control the
process and keep the temp dir (so a restart keeps data, certificates and the
port); ``close()`` stops everything and removes the temp dir.  Used as a
context manager, a server is started on enter and closed on exit.
"""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import kombu
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

REDIS_SERVER = "/usr/bin/redis-server"
RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")
EPMD = "epmd"
# databases per test Redis: one per test that asks (RedisServer.fresh_url)
DATABASES = 1024


def free_ports(count: int) -> list[int]:
    """Return ``count`` distinct TCP ports that are free on 127.0.0.1 right now."""
    sockets = []
    try:
        # Hold every socket open until all are bound, otherwise the kernel
        # may hand out the same port twice.
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def free_port() -> int:
    return free_ports(1)[0]


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _start_time(pid: int) -> str | None:
    """Kernel start time of ``pid``: tells a process apart from a later one reusing its pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may contain spaces; fields after
    # it are fixed: state, ppid, ... starttime is field 22 of the whole line.
    return stat.rsplit(")", 1)[1].split()[19]


def _descendants(pid: int) -> list[tuple[int, str]]:
    """All (pid, start time) below ``pid``; empty where /proc is unavailable."""
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            started = _start_time(child)
            if started is not None:
                found.append((child, started))
            todo.append(child)
    return found


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class BrokerStartError(RuntimeError):
    pass


# Servers that still own a process or temp dir; closed at interpreter exit in
# case the test run is interrupted before fixtures tear down.
_open_servers: set[_Server] = set()


@atexit.register
def _close_open_servers() -> None:
    for server in list(_open_servers):
        server.close()


class _Server:
    """A subprocess in its own session with a private temp dir."""

    name = "server"
    start_timeout = 10.0
    stop_timeout = 30.0

    def __init__(self) -> None:
        self._dir: Path | None = None
        self._proc: subprocess.Popen | None = None

    # -- hooks for subclasses -------------------------------------------------

    def _prepare(self) -> None:
        """One-time setup of a fresh temp dir (configs, certificates)."""

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _env(self) -> dict[str, str] | None:
        return None

    def _ping(self) -> None:
        """Raise unless the server answers real requests."""
        raise NotImplementedError

    def _log_files(self) -> list[Path]:
        return [self.directory / "stdout.log"]

    # -- public API -------------------------------------------------------------

    @property
    def directory(self) -> Path:
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix=f"stalk-{self.name}-"))
            _open_servers.add(self)
            self._prepare()
        return self._dir

    @property
    def pid(self) -> int | None:
        """The server process (to freeze it with SIGSTOP: a broker that stops answering)."""
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        if self.running:
            return
        directory = self.directory
        with open(directory / "stdout.log", "ab") as log:
            self._proc = subprocess.Popen(
                self._command(),
                cwd=directory,
                env=self._env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Own process group, so stop() can signal the whole tree
                # without touching the test runner.
                start_new_session=True,
            )
        self._wait_ready()

    def stop(self) -> None:
        """Graceful shutdown (SIGTERM), SIGKILL if it takes too long."""
        self._terminate(signal.SIGTERM)

    def kill(self) -> None:
        """Crash the server (SIGKILL), as an abrupt broker failure would."""
        self._terminate(signal.SIGKILL)

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop the server and delete its temp dir."""
        self.stop()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
        _open_servers.discard(self)

    def log_tail(self, lines: int = 40) -> str:
        if self._dir is None:
            return ""
        parts = []
        for path in self._log_files():
            text = _tail(path, lines)
            if text:
                parts.append(f"--- {path.name} ---\n{text}")
        return "\n".join(parts)

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- internals --------------------------------------------------------------

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        last_error: BaseException | None = None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                reason = f"exited with code {self._proc.returncode}"
                break
            try:
                self._ping()
                return
            except Exception as exc:  # anything short of a reply means "not yet"
                last_error = exc
            time.sleep(0.1)
        else:
            reason = f"not ready after {self.start_timeout:.0f} s (last error: {last_error!r})"
        self.kill()
        raise BrokerStartError(f"{self.name} {reason}\n{self.log_tail()}")

    def _terminate(self, sig: int) -> None:
        proc = self._proc
        if proc is None:
            return
        # Some helpers (Erlang's erl_child_setup, inet_gethost) move to their
        # own session, so a group signal misses them. Note them now, before
        # they are re-parented and can no longer be traced back to us.
        helpers = _descendants(proc.pid)
        _signal_group(proc.pid, sig)
        try:
            proc.wait(self.stop_timeout)
        except subprocess.TimeoutExpired:
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait()
        # Anything from the group that outlived the leader.
        _signal_group(proc.pid, signal.SIGKILL)
        for pid, started in helpers:
            if _start_time(pid) == started:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self._proc = None


class RedisServer(_Server):
    """``redis-server`` without persistence on a free port.

    ``tls=True`` serves only TLS (self-signed certificate, ``ca_file``);
    ``password`` turns on ``requirepass``.
    """

    name = "redis"
    start_timeout = 10.0

    def __init__(self, tls: bool = False, password: str | None = None) -> None:
        super().__init__()
        self.tls = tls
        self.password = password
        self._port = free_port()
        self._databases_handed_out = 0

    @property
    def port(self) -> int:
        return self._port

    def fresh_url(self) -> str:
        """The URL of a database no other test of this session has used.

        Redis scopes queues, bindings and event fanout (``/N.celeryev``) to the database, so
        one database per test keeps a test's leftovers (unconsumed tasks, event bindings)
        from reaching another's workers. Handed out, never reused: fixed numbers collided.
        """
        self._databases_handed_out += 1
        if self._databases_handed_out >= DATABASES:
            raise RuntimeError(f"more than {DATABASES - 1} Redis databases asked for in one session")
        return self.url.rsplit("/", 1)[0] + f"/{self._databases_handed_out}"

    @property
    def url(self) -> str:
        scheme = "rediss" if self.tls else "redis"
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"{scheme}://{auth}127.0.0.1:{self._port}/0"

    @property
    def ca_file(self) -> Path | None:
        return self.directory / "cert.pem" if self.tls else None

    def client(self, **kwargs) -> redis.Redis:
        """A redis-py client for this server (trusting its certificate)."""
        if self.tls:
            kwargs.setdefault("ssl_ca_certs", str(self.ca_file))
        return redis.Redis.from_url(self.url, **kwargs)

    def _prepare(self) -> None:
        if self.tls:
            # The address as subjectAltName, so clients can verify the
            # hostname instead of having to switch verification off.
            subprocess.run(
                [
                    # EC key: RSA generation takes up to seconds.
                    "openssl", "req", "-x509", "-nodes", "-days", "2",
                    "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(self._dir / "key.pem"),
                    "-out", str(self._dir / "cert.pem"),
                ],
                check=True,
                capture_output=True,
            )

    def _command(self) -> list[str]:
        command = [
            REDIS_SERVER,
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--daemonize", "no",
            "--save", "",
            "--appendonly", "no",
            "--databases", str(DATABASES),
        ]
        if self.tls:
            cert = str(self.directory / "cert.pem")
            command += [
                "--port", "0",
                "--tls-port", str(self._port),
                "--tls-cert-file", cert,
                "--tls-key-file", str(self.directory / "key.pem"),
                "--tls-ca-cert-file", cert,
                "--tls-auth-clients", "no",
            ]
        else:
            command += ["--port", str(self._port)]
        if self.password:
            command += ["--requirepass", self.password]
        return command

    def _ping(self) -> None:
        # redis-py retries with backoff by default (seconds per call against
        # a server that is still down); poll quickly instead.
        client = self.client(
            socket_connect_timeout=1, socket_timeout=1, retry=Retry(NoBackoff(), 0)
        )
        try:
            client.ping()
        finally:
            client.close()


class RabbitMQServer(_Server):
    """A separate RabbitMQ node (own name, ports, epmd, data and config).

    The machine's own RabbitMQ node and epmd are left alone: this node
    registers with a private epmd on a free port, reads no file under
    /etc/rabbitmq and enables no plugins.
    """

    name = "rabbitmq"
    start_timeout = 60.0
    stop_timeout = 30.0

    def __init__(self, tls: bool = False, management: bool = False) -> None:
        """``tls=True`` adds a TLS listener (``tls_url``, certificate signed by ``ca_file``)
        beside the plain one. ``management=True`` enables the management plugin on a free
        port of its own (``management_url``); it adds a few seconds to the boot."""
        super().__init__()
        (self._port, self._dist_port, self._epmd_port, self._tls_port,
         self._management_port) = free_ports(5)
        self.tls = tls
        self.management = management
        self.nodename = f"stalk-{self._port}@localhost"
        self._epmd: subprocess.Popen | None = None

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self._port}//"

    @property
    def tls_url(self) -> str:
        return f"amqps://guest:guest@127.0.0.1:{self._tls_port}//"

    @property
    def management_url(self) -> str:
        return f"http://127.0.0.1:{self._management_port}"

    @property
    def ca_file(self) -> Path:
        return self.directory / "ca.crt"

    def ctl(self, *args: str, timeout: float = 60) -> str:
        """Run ``rabbitmqctl`` against this node and return its output."""
        result = subprocess.run(
            [str(RABBITMQ_BIN / "rabbitmqctl"), "-n", self.nodename, *args],
            env=self._env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"rabbitmqctl {' '.join(args)} failed ({result.returncode}):\n"
                f"{result.stdout}{result.stderr}"
            )
        return result.stdout

    def start(self) -> None:
        self._start_epmd()
        super().start()

    def close(self) -> None:
        self.stop()
        self._stop_epmd()
        super().close()

    def _prepare(self) -> None:
        d = self._dir
        (d / "mnesia").mkdir()
        (d / "log").mkdir()
        # Replaces /etc/rabbitmq/rabbitmq-env.conf, which would otherwise be
        # sourced and could pin the node name of the system node.
        (d / "rabbitmq-env.conf").write_text("")
        # No plugins but the management API when asked, on a free port (its default,
        # 15672, may belong to the machine's own node).
        plugins = "rabbitmq_management" if self.management else ""
        (d / "enabled_plugins").write_text(f"[{plugins}].\n")
        config = (
            # Small test disks would otherwise trip the 50 MB default and
            # block every publisher.
            "disk_free_limit.absolute = 1MB\n"
        )
        if self.management:
            config += (
                f"management.tcp.port = {self._management_port}\n"
                "management.tcp.ip = 127.0.0.1\n"
                # Queue counts in the API are refreshed this often (5 s by default).
                "collect_statistics_interval = 1000\n"
            )
        if self.tls:
            from tests.tls import make_ca, make_cert

            ca = make_ca(d, "ca")
            cert, key = make_cert(d, "server", ca)
            config += (
                f"listeners.ssl.default = 127.0.0.1:{self._tls_port}\n"
                f"ssl_options.cacertfile = {ca[0]}\n"
                f"ssl_options.certfile = {cert}\n"
                f"ssl_options.keyfile = {key}\n"
                "ssl_options.verify = verify_none\n"
                "ssl_options.fail_if_no_peer_cert = false\n"
            )
        (d / "rabbitmq.conf").write_text(config)
        # Erlang reads the cookie from $HOME; node and rabbitmqctl share it.
        cookie = d / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(16))
        cookie.chmod(0o400)

    def _command(self) -> list[str]:
        return [str(RABBITMQ_BIN / "rabbitmq-server")]

    def _env(self) -> dict[str, str]:
        d = self.directory
        # Inherited RABBITMQ_*/ERL_* settings belong to some other node.
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("RABBITMQ_", "ERL_"))
        }
        # Erlang would spawn a detached "epmd -daemon" that outlives the
        # test run if ours were missing; fail instead.
        no_epmd = "-start_epmd false"
        env.update(
            HOME=str(d),
            ERL_EPMD_PORT=str(self._epmd_port),
            RABBITMQ_CONF_ENV_FILE=str(d / "rabbitmq-env.conf"),
            RABBITMQ_CONFIG_FILE=str(d / "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(d / "advanced.config"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(d / "enabled_plugins"),
            RABBITMQ_MNESIA_BASE=str(d / "mnesia"),
            RABBITMQ_LOG_BASE=str(d / "log"),
            RABBITMQ_PID_FILE=str(d / "rabbitmq.pid"),
            RABBITMQ_NODENAME=self.nodename,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self._port),
            RABBITMQ_DIST_PORT=str(self._dist_port),
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=(
                f"{no_epmd} -kernel inet_dist_use_interface {{127,0,0,1}}"
            ),
            RABBITMQ_CTL_ERL_ARGS=no_epmd,
        )
        return env

    def _ping(self) -> None:
        with kombu.Connection(self.url, connect_timeout=2) as conn:
            conn.connect()
        if self.management and not _port_open(self._management_port):
            raise ConnectionError("the management API does not answer yet")

    def _log_files(self) -> list[Path]:
        return [
            self.directory / "epmd.log",
            self.directory / "stdout.log",
            self.directory / "log" / f"{self.nodename}.log",
        ]

    def _start_epmd(self) -> None:
        if self._epmd is not None and self._epmd.poll() is None:
            return
        with open(self.directory / "epmd.log", "ab") as log:
            # Foreground (no -daemon), so it stays our child and dies with us.
            self._epmd = subprocess.Popen(
                [EPMD, "-port", str(self._epmd_port), "-address", "127.0.0.1"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 10
        while not _port_open(self._epmd_port):
            if self._epmd.poll() is not None or time.monotonic() > deadline:
                self._stop_epmd()
                raise BrokerStartError(f"epmd did not start\n{self.log_tail()}")
            time.sleep(0.05)

    def _stop_epmd(self) -> None:
        if self._epmd is None:
            return
        _signal_group(self._epmd.pid, signal.SIGKILL)
        self._epmd.wait()
        self._epmd = None
