"""The HTTP server: WSGI over HTTP/1.0, with every connection bounded before any handler runs.

What it bounds, and why each matters to an exporter that must stay scrapable
while someone hostile can reach its port:

* connections open at once from one client address (``max_client_connections``;
  IPv6 by /64): past it a new connection is refused at once, a 503 on plain
  HTTP, a close on TLS (no handshake is spent on it).
* connections open at once in all (``max_connections``): past it new ones
  wait in the listen backlog, and the connection that has been sending its
  request the longest, if for over EVICT_AFTER, is closed to make room. So a
  burst of real requests waits its turn, and slow connections from many
  addresses cannot keep a scrape out for long.
* the TLS handshake plus the request head must arrive within ``read_timeout``,
  one deadline for the whole, however slowly the client trickles bytes.
* the request head is at most ``MAX_HEAD`` bytes; no request body is taken.
* writing the response may take at most ``WRITE_TIMEOUT``.
* the listen backlog is ``BACKLOG`` (the kernel caps it at net.core.somaxconn),
  so a burst of connections waits for accept instead of being reset.

Until its request head is in, a connection costs a socket and at most
MAX_HEAD bytes, no thread: one loop accepts, does TLS handshakes and reads
request heads without blocking, requests that came in before new connections.
A complete request gets a thread of its own for the answer, so a scrape that
sent its request is never behind a slow client, and threads are bounded by the
connections being answered. Every refusal is counted in a WebStats
(celery_stalk_http_rejected_total).

The SSL context is asked for on every connection, so a certificate rotated on
disk is served without a restart (webconfig.ServerTLS).

Why not a server library (compared for this change): waitress has no TLS;
cheroot does the TLS handshake in its accept loop (one silent client stalls
every other), bounds neither open connections nor the time to send a request,
and listens with a backlog of 5; gunicorn runs its own worker processes and
signal handling, while this exporter's state lives in one process; uvicorn and
hypercorn bring asyncio and ASGI for three GET endpoints, build their SSL
context once, and uvicorn bounds no request head time either.
"""

from __future__ import annotations

import http.client
import io
import ipaddress
import logging
import selectors
import socket
import ssl
import threading
import time
from collections import Counter
from urllib.parse import unquote
from wsgiref.handlers import SimpleHandler

from .webconfig import ServerTLS, WebLimits
from .webstats import WebStats

log = logging.getLogger(__name__)

BACKLOG = 1024
MAX_HEAD = 16 * 1024  # request line and headers: a scrape sends a few hundred bytes
WRITE_TIMEOUT = 30.0  # seconds for the whole response; Prometheus' scrape_timeout is at most this
WRITE_CHUNK = 256 * 1024  # the write deadline is checked between chunks
ACCEPTS_PER_TURN = 64  # then the loop reads the requests that came in
EVICT_AFTER = 0.25  # seconds: a client still sending its request head after this is slow
TICK = 0.1  # seconds between deadline checks; also how long shutdown waits for the loop
SERVER_SOFTWARE = "celery-stalk"
REFUSAL = (b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
           b"Retry-After: 1\r\nConnection: close\r\nContent-Length: 29\r\n\r\n"
           b"too many connections: retry\r\n")


def client_key(address: str) -> str:
    """Who a client is, for per-client limits: its IPv4 address, or its IPv6 /64
    (one host usually owns a whole /64, so counting addresses would not bound it)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if ip.version == 4:
        return str(ip)
    if ip.ipv4_mapped is not None:  # an IPv4 client of a dual-stack socket
        return str(ip.ipv4_mapped)
    return str(ipaddress.ip_network(f"{ip}/64", strict=False))


class _Rejected(Exception):
    """A request turned away before the app saw it: answered with ``status``, counted as ``reason``."""

    def __init__(self, reason: str, status: str, body: str):
        super().__init__(reason)
        self.reason, self.status, self.body = reason, status, body


class _Conn:
    __slots__ = ("sock", "address", "client", "started", "head", "handshaking")

    def __init__(self, sock: socket.socket, address: str, client: str):
        self.sock, self.address, self.client = sock, address, client
        self.started = time.monotonic()
        self.head = bytearray()
        self.handshaking = False


class BoundedServer:
    """serve_forever() runs the loop (on a thread of the caller's); shutdown() stops it,
    drain() lets the answers in flight finish, server_close() releases the port."""

    def __init__(self, address: tuple[str, int], app, limits: WebLimits, stats: WebStats,
                 tls: ServerTLS | None = None):
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        try:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.socket.bind(address)
            self.socket.listen(BACKLOG)
        except OSError:
            self.socket.close()
            raise
        self.socket.setblocking(False)
        self.server_address = self.socket.getsockname()
        self.server_port = self.server_address[1]
        self.app, self.limits, self.stats, self.tls = app, limits, stats, tls
        self._selector = selectors.DefaultSelector()
        self._reading: dict[_Conn, None] = {}  # oldest first; the loop's alone
        self._answering = 0  # connections whose request is being answered, each on its thread
        self._per_client: Counter = Counter()
        self._lock = threading.Condition()  # guards _answering and _per_client
        self._stop, self._stopped = threading.Event(), threading.Event()
        self._next_reap = 0.0
        # While max_connections are open and none is slow enough to close, new
        # connections wait in the backlog (the loop stops accepting); a finished
        # answer wakes the loop through this.
        self._accepting = True
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        stats.open_connections = lambda: len(self._reading) + self._answering
        self.base_environ = {
            "SERVER_NAME": self.server_address[0],
            "SERVER_PORT": str(self.server_port),
            "GATEWAY_INTERFACE": "CGI/1.1",
            "SCRIPT_NAME": "",
        }
        if tls is not None:
            self.base_environ["HTTPS"] = "on"

    # -- the loop: accept, handshake, read request heads; never blocks ----------

    def serve_forever(self) -> None:
        self._selector.register(self.socket, selectors.EVENT_READ, None)
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        try:
            while not self._stop.is_set():
                ready = self._selector.select(TICK)
                # Requests that came in first, then new connections: a burst of
                # these must not push out a request already waiting to be read.
                for key, _ in ready:
                    if isinstance(key.data, _Conn) and key.data in self._reading:
                        self._progress(key.data)
                    elif key.data == "wake":
                        self._drain_wakeups()
                if self._accepting and any(key.data is None for key, _ in ready):
                    self._accept()
                self._reap()
                self._pause_or_resume()
        except Exception:
            log.exception("the HTTP server loop failed")
            raise
        finally:
            self._stopped.set()

    def _accept(self) -> None:
        for _ in range(ACCEPTS_PER_TURN):
            if self._open() >= self.limits.max_connections and not self._make_room():
                return  # full: the next ones wait in the backlog
            try:
                sock, address = self.socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of file descriptors, or the client gave up already
                log.debug("accept failed: %s", exc)
                return
            self._admit(sock, address[0])

    def _admit(self, sock: socket.socket, address: str) -> None:
        key = client_key(address)
        with self._lock:
            refused = self._per_client[key] >= self.limits.max_client_connections
            if not refused:
                self._per_client[key] += 1
        if refused:
            self.stats.reject("client_connection_limit")
            self._refuse(sock)
            return
        conn = _Conn(sock, address, key)
        sock.setblocking(False)
        if self.tls is not None:
            try:
                conn.sock = self.tls.context().wrap_socket(sock, server_side=True,
                                                           do_handshake_on_connect=False)
            except (ssl.SSLError, OSError) as exc:
                log.debug("TLS connection from %s failed: %s", address, exc)
                self._release(key)
                sock.close()
                return
            conn.handshaking = True
        self._reading[conn] = None
        self._selector.register(conn.sock, selectors.EVENT_READ, conn)

    def _evictable(self) -> bool:
        return bool(self._reading) and time.monotonic() - next(iter(self._reading)).started >= EVICT_AFTER

    def _pause_or_resume(self) -> None:
        accept = self._open() < self.limits.max_connections or self._evictable()
        if accept != self._accepting:
            self._accepting = accept
            if accept:
                self._selector.register(self.socket, selectors.EVENT_READ, None)
            else:
                self._selector.unregister(self.socket)

    def _drain_wakeups(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def _open(self) -> int:
        with self._lock:
            return len(self._reading) + self._answering

    def _make_room(self) -> bool:
        """Free a slot for a new connection: take what the connections still reading
        have sent, oldest first; the first whose request is still not complete after
        EVICT_AFTER is the slowest client, and is closed. False if there is none."""
        now = time.monotonic()
        for conn in list(self._reading):
            if now - conn.started < EVICT_AFTER:
                return False  # the others are younger still
            self._progress(conn)
            if conn in self._reading:
                self.stats.reject("evicted_slow")
                self._close(conn)
                return True
            if self._open() < self.limits.max_connections:  # it had gone away
                return True
        return False

    def _progress(self, conn: _Conn) -> None:
        """Take what the client sent: TLS handshake, then the request head."""
        sock = conn.sock
        try:
            if conn.handshaking:
                sock.do_handshake()
                conn.handshaking = False
            while True:
                chunk = sock.recv(4096)
                if not chunk:  # the client went away
                    self._close(conn)
                    return
                start = max(0, len(conn.head) - 3)
                conn.head += chunk
                end = conn.head.find(b"\r\n\r\n", start)
                if end < 0:
                    end = conn.head.find(b"\n\n", start)
                if 0 <= end <= MAX_HEAD:
                    self._dispatch(conn, _environ(self.base_environ, bytes(conn.head[:end]), conn.address))
                    return
                if len(conn.head) > MAX_HEAD:
                    raise _Rejected("too_large", "431 Request Header Fields Too Large",
                                    f"request head over {MAX_HEAD} bytes\n")
        except ssl.SSLWantReadError:
            self._selector.modify(sock, selectors.EVENT_READ, conn)
        except ssl.SSLWantWriteError:
            self._selector.modify(sock, selectors.EVENT_WRITE, conn)
        except (BlockingIOError, InterruptedError):
            pass  # all there is for now
        except _Rejected as exc:
            self.stats.reject(exc.reason)
            _send_now(sock, f"HTTP/1.0 {exc.status}\r\nContent-Type: text/plain; charset=utf-8\r\n"
                            f"Connection: close\r\nContent-Length: {len(exc.body)}\r\n\r\n{exc.body}")
            self._close(conn)
        except ssl.SSLError as exc:  # plain HTTP on the TLS port, an untrusted client certificate
            self.stats.reject("tls_handshake" if conn.handshaking else "bad_request")
            log.debug("TLS connection from %s failed: %s", conn.address, exc)
            self._close(conn)
        except OSError as exc:  # a reset
            log.debug("connection from %s failed: %s", conn.address, exc)
            self._close(conn)
        except Exception:  # a bug: lose this connection, not the server
            log.exception("reading a request from %s failed", conn.address)
            self._close(conn)

    def _dispatch(self, conn: _Conn, environ: dict) -> None:
        """The request head is in: answer it on a thread of its own."""
        self._selector.unregister(conn.sock)
        del self._reading[conn]
        with self._lock:
            self._answering += 1
        try:
            conn.sock.setblocking(True)
            threading.Thread(target=self._answer, args=(conn, environ),
                             name="celery-stalk-http", daemon=True).start()
        except (RuntimeError, OSError) as exc:  # the system's thread limit; a socket gone bad
            log.warning("cannot answer %s: %s", conn.address, exc)
            self._finished(conn)

    def _reap(self) -> None:
        """Close the connections whose handshake and request head are not in by their deadline."""
        now = time.monotonic()
        if now < self._next_reap:
            return
        self._next_reap = now + TICK
        late = now - self.limits.read_timeout
        while self._reading:
            conn = next(iter(self._reading))  # the oldest
            if conn.started > late:
                return
            self.stats.reject("read_timeout")
            self._close(conn)

    def _close(self, conn: _Conn) -> None:
        """Close a connection still sending its request (the loop's, or drain's after it)."""
        try:
            self._selector.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        self._reading.pop(conn, None)
        _close_socket(conn.sock)
        self._release(conn.client)

    def _release(self, client: str) -> None:
        with self._lock:
            self._per_client[client] -= 1
            if self._per_client[client] <= 0:
                del self._per_client[client]
            self._lock.notify_all()

    def _refuse(self, sock: socket.socket) -> None:
        if self.tls is None:
            sock.setblocking(False)
            try:  # take the request if it is in: closing on unread data would reset, losing the 503
                sock.recv(MAX_HEAD)
            except OSError:
                pass
            _send_now(sock, REFUSAL.decode())  # a fresh socket's send buffer takes it whole
        _close_socket(sock)

    # -- answering: a thread per request ----------------------------------------

    def _answer(self, conn: _Conn, environ: dict) -> None:
        try:
            handler = _Handler(io.BytesIO(), _DeadlineWriter(conn.sock, WRITE_TIMEOUT), io.StringIO(),
                               environ, multithread=True, multiprocess=False)
            handler.run(self.app)
        except Exception:
            log.exception("answering %s failed", conn.address)
        finally:
            self._finished(conn)

    def _finished(self, conn: _Conn) -> None:
        _close_socket(conn.sock)
        with self._lock:
            self._answering -= 1
        self._release(conn.client)
        if not self._accepting:
            try:
                self._wake_w.send(b"!")
            except OSError:  # full already: the loop is being woken anyway
                pass

    # -- lifecycle ---------------------------------------------------------------

    def shutdown(self) -> None:
        """Stop accepting; returns when the loop has stopped."""
        self._stop.set()
        self._stopped.wait()

    def drain(self, deadline: float) -> bool:
        """After shutdown(): close the connections still sending a request (there is
        nothing to finish for them) and wait until the requests being answered are,
        or ``deadline`` (monotonic)."""
        for conn in list(self._reading):
            self._close(conn)
        with self._lock:
            while self._answering:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(left)
        return True

    def server_close(self) -> None:
        self._selector.close()
        self.socket.close()
        self._wake_r.close()
        self._wake_w.close()


def _environ(base: dict, head: bytes, address: str) -> dict:
    """The WSGI environ of a request head (without its blank line), or _Rejected."""
    line, _, rest = head.partition(b"\n")
    parts = line.decode("latin-1").split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/1.") or not parts[1].startswith("/"):
        raise _Rejected("bad_request", "400 Bad Request", "not an HTTP/1 request\n")
    method, target, version = parts
    try:
        headers = http.client.parse_headers(io.BytesIO(rest + b"\r\n\r\n"))
    except http.client.HTTPException:  # over 100 headers, or a line over 64 KiB
        raise _Rejected("too_large", "431 Request Header Fields Too Large",
                        "too many headers\n") from None
    if headers.get("Transfer-Encoding") or headers.get("Content-Length", "0").strip() != "0":
        raise _Rejected("too_large", "413 Content Too Large", "no request body is accepted\n")
    path, _, query = target.partition("?")
    environ = dict(base)
    environ.update({
        "SERVER_PROTOCOL": version,
        "REQUEST_METHOD": method,
        "PATH_INFO": unquote(path, "iso-8859-1"),
        "QUERY_STRING": query,
        "REMOTE_ADDR": address,
    })
    for name, value in headers.items():
        if "_" in name:  # X_Auth would pass for X-Auth in the environ: ignore it
            continue
        key = "HTTP_" + name.replace("-", "_").upper()
        value = value.strip()
        environ[key] = f"{environ[key]},{value}" if key in environ else value
    return environ


def _send_now(sock: socket.socket, text: str) -> None:
    """Best effort, without blocking: a short answer before closing."""
    try:
        sock.send(text.encode("latin-1"))
    except OSError:
        pass


def _close_socket(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_WR)  # a FIN after the answer, not a reset
    except OSError:
        pass
    sock.close()


class _Handler(SimpleHandler):
    server_software = SERVER_SOFTWARE
    http_version = "1.0"  # one request per connection, as before
    os_environ = {}  # wsgiref would copy the process environment (the broker URL) into each request

    def log_exception(self, exc_info):
        method, path = self.environ.get("REQUEST_METHOD"), self.environ.get("PATH_INFO")
        if isinstance(exc_info[1], OSError):  # the client went away or did not read in time
            log.debug("request %s %s: %s", method, path, exc_info[1])
        else:
            log.error("request %s %s failed", method, path, exc_info=exc_info)


class _DeadlineWriter:
    """The socket as wsgiref's output, with a deadline for the whole response."""

    def __init__(self, sock: socket.socket, seconds: float):
        self.sock = sock
        self.deadline = time.monotonic() + seconds

    def write(self, data) -> None:
        view = memoryview(data)
        while view:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"response not taken within {WRITE_TIMEOUT:g} s")
            self.sock.settimeout(left)
            self.sock.sendall(view[:WRITE_CHUNK])
            view = view[WRITE_CHUNK:]

    def flush(self) -> None:
        pass
