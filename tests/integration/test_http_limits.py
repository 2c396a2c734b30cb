"""Hostile clients on real sockets: slow and oversized requests, floods of connections,
password guessing. Each attack is bounded in count and time, runs against 127.0.0.0/8
only (attackers bind their own loopback addresses, 127.0.x.y, so per-address limits
are exercised as from other hosts), and asserts the bound it must hold (threads, RSS,
CPU seconds of the exporter process) and that a normal scrape is served meanwhile."""

from __future__ import annotations

import base64
import http.client
import os
import selectors
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import bcrypt
import pytest

from tests.harness import ExporterProcess, Metrics, scrape
from tests.tls import make_ca, make_cert

pytestmark = pytest.mark.integration

SLOW_HEAD = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "  # never finished


# -- the exporter process, seen from outside -------------------------------------

def threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Watch:
    """Samples the exporter's threads and RSS on a thread of its own while an attack runs."""

    def __init__(self, pid: int):
        self.pid = pid
        self.base_threads, self.base_rss = threads(pid), rss_mb(pid)
        self.max_threads, self.max_rss = self.base_threads, self.base_rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(0.05):
            self.max_threads = max(self.max_threads, threads(self.pid))
            self.max_rss = max(self.max_rss, rss_mb(self.pid))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


@contextmanager
def exporter(redis_server, *args, tls_context=None):
    process = ExporterProcess(redis_server.url, *args, tls_context=tls_context)
    process.start(wait_ready=False)
    try:
        yield process
    finally:
        process.stop()


def get(url: str, headers=None, context=None, timeout: float = 10) -> tuple[int, float, bytes]:
    """Status, seconds taken and body of one request from 127.0.0.1."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, headers=headers or {})
    started = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            return response.status, time.monotonic() - started, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, time.monotonic() - started, exc.read()


def attacker(address: str, port: int) -> socket.socket:
    """A connection from ``address`` (a loopback address of its own) that sent half a request."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(address, 0))
    sock.sendall(SLOW_HEAD)
    return sock


def ended(sock: socket.socket, timeout: float) -> bytes | None:
    """What the server sent before closing ``sock`` within ``timeout``; None if still open."""
    sock.settimeout(timeout)
    data = b""
    try:
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                return data
            data += chunk
    except (ConnectionResetError, BrokenPipeError):
        return data
    except socket.timeout:
        return None


def scrapes_meanwhile(url: str, stop: threading.Event, results: list, context=None, headers=None):
    """Prometheus' part: a scrape every 0.2 s until ``stop``."""
    while not stop.wait(0.2):
        try:
            results.append(get(url, headers=headers, context=context)[:2])
        except OSError as exc:
            results.append((repr(exc), 99.0))


# -- 3. connections and requests, bounded before any handler runs -----------------

def test_a_thousand_slow_connections_from_one_address_are_refused_fast(redis_server):
    with exporter(redis_server, "--web-max-client-connections", "8") as ex:
        pid, url = ex.proc.pid, ex.url
        with Watch(pid) as watch:
            held, refused, started = [], 0, time.monotonic()
            for _ in range(1000):
                held.append(attacker("127.0.0.2", ex.port))
            opened = time.monotonic() - started
            # Past 8, each is answered 503 and closed at once; the first 8 wait for their deadline.
            for sock in held[8:]:
                answer = ended(sock, 2.0)
                assert answer is not None, "an excess connection was left open"
                assert answer == b"" or answer.startswith(b"HTTP/1.0 503 "), answer[:100]
                refused += 1
            asked = time.monotonic()  # one more, timed: refused fast
            extra = attacker("127.0.0.2", ex.port)
            assert ended(extra, 2.0) is not None and time.monotonic() - asked < 0.5
            extra.close()
            answered = [get(url + "/metrics") for _ in range(5)]
            assert all(ended(sock, 0.01) is None for sock in held[:8])  # still within 5 s
        assert refused == 992
        assert opened < 10, f"opening 1,000 connections took {opened:.1f} s"
        assert all(status == 200 and took < 2 for status, took, _ in answered), answered
        assert watch.max_threads <= watch.base_threads + 5, (watch.base_threads, watch.max_threads)
        assert watch.max_rss - watch.base_rss < 20, (watch.base_rss, watch.max_rss)
        # the 8 admitted are cut at --web-read-timeout (5 s), and it is all counted
        assert all(ended(sock, 7.0) is not None for sock in held[:8])
        for sock in held:
            sock.close()
        m = scrape(url + "/metrics")
        assert m.get("celery_stalk_http_rejected_total", reason="client_connection_limit") == 993
        assert m.get("celery_stalk_http_rejected_total", reason="read_timeout") == 8


def test_slowloris_from_many_addresses_cannot_keep_a_scrape_out(redis_server):
    """600 connections from 300 addresses (each under the per-address limit; 600 against
    --web-max-connections 256), each sending half a request and a byte a second after, and
    reconnecting at once when cut, for 8 s: the global limit holds, and every scrape gets in,
    because a connection still sending its request after 0.25 s is closed to make room."""
    with exporter(redis_server) as ex:
        stop, results, reconnects, open_seen = threading.Event(), [], [0], []

        def address(i: int) -> str:
            return f"127.1.{i % 300 // 250}.{i % 300 % 250 + 1}"

        def slowloris():
            selector = selectors.DefaultSelector()
            for i in range(600):
                selector.register(attacker(address(i), ex.port), selectors.EVENT_READ, i)
            deadline, next_byte = time.monotonic() + 8, time.monotonic() + 1
            while time.monotonic() < deadline and reconnects[0] < 20_000:
                for key, _ in selector.select(0.05):  # readable: the server answered or cut it
                    selector.unregister(key.fileobj)
                    key.fileobj.close()
                    selector.register(attacker(address(key.data), ex.port), selectors.EVENT_READ, key.data)
                    reconnects[0] += 1
                if time.monotonic() >= next_byte:
                    next_byte += 1
                    for key in list(selector.get_map().values()):
                        try:
                            key.fileobj.send(b"a")
                        except OSError:
                            pass  # cut: seen as readable next
            for key in list(selector.get_map().values()):
                key.fileobj.close()

        def scrapes():
            while not stop.wait(0.2):
                status, took, body = get(ex.url + "/metrics")
                results.append((status, took))
                if status == 200:
                    open_seen.append(int(float(body.split(b"\ncelery_stalk_http_connections ")[1].split()[0])))

        with Watch(ex.proc.pid) as watch:
            attack, prometheus = threading.Thread(target=slowloris), threading.Thread(target=scrapes)
            attack.start()
            time.sleep(0.5)  # the attack is on
            prometheus.start()
            attack.join(60)
            stop.set()
            prometheus.join(30)
        assert reconnects[0] > 300, f"too little pressure to prove anything: {reconnects[0]} reconnects"
        assert len(results) >= 8, results
        failed = [r for r in results if r[0] != 200 or r[1] >= 2]
        assert not failed, f"{len(failed)} of {len(results)} scrapes failed or were slow: {failed[:5]}"
        assert max(open_seen) <= 256 and max(open_seen) > 200, open_seen
        # threads: the loop holds the slow ones; only requests being answered have a thread
        assert watch.max_threads <= watch.base_threads + 8, (watch.base_threads, watch.max_threads)
        assert watch.max_rss - watch.base_rss < 30, (watch.base_rss, watch.max_rss)
        m = ex.scrape()
        assert m.get("celery_stalk_http_rejected_total", reason="evicted_slow") > 300


def test_oversized_and_trickled_request_heads_are_cut(redis_server):
    """50 clients pushing 120 KB of headers each (6 MB in all), and 20 that trickle a byte
    every 0.2 s: the first are answered 431 past 16 KiB, the others cut at the deadline."""
    with exporter(redis_server, "--web-read-timeout", "2") as ex:
        stop, results = threading.Event(), []
        prometheus = threading.Thread(target=scrapes_meanwhile, args=(ex.url + "/metrics", stop, results))
        with Watch(ex.proc.pid) as watch:
            prometheus.start()

            def push(i: int, answers: list):
                sock = attacker(f"127.0.2.{i + 1}", ex.port)
                try:
                    for _ in range(30):
                        sock.sendall(b"X-Big: " + b"a" * 4000 + b"\r\n")
                except OSError:
                    pass  # cut while sending: fine
                answers.append(ended(sock, 3.0))
                sock.close()

            answers: list = []
            pushers = [threading.Thread(target=push, args=(i, answers)) for i in range(50)]
            trickling = [attacker(f"127.0.3.{i + 1}", ex.port) for i in range(20)]
            started = time.monotonic()
            for t in pushers:
                t.start()
            cut_at = {}
            while len(cut_at) < 20 and time.monotonic() - started < 6:
                for i, sock in enumerate(trickling):
                    if i in cut_at:
                        continue
                    try:
                        sock.send(b"a")
                    except OSError:
                        cut_at[i] = time.monotonic() - started
                time.sleep(0.2)
            for t in pushers:
                t.join(10)
            stop.set()
            prometheus.join(10)
        assert len(answers) == 50 and all(a is not None for a in answers), answers
        assert sum(a.startswith(b"HTTP/1.0 431 ") for a in answers) >= 40, [a[:40] for a in answers]
        assert len(cut_at) == 20 and max(cut_at.values()) < 4.5, cut_at  # 2 s deadline + slack
        assert watch.max_rss - watch.base_rss < 20, (watch.base_rss, watch.max_rss)
        assert results and all(status == 200 and took < 2 for status, took in results), results
        m = ex.scrape()
        assert m.get("celery_stalk_http_rejected_total", reason="too_large") == 50
        assert m.get("celery_stalk_http_rejected_total", reason="read_timeout") == 20


# -- 5. a burst of connections waits in the backlog, none is reset ----------------

def test_a_burst_of_a_thousand_connections_is_answered_not_reset(redis_server):
    """1,000 connections at once from 100 addresses, against --web-max-connections 64:
    the rest wait in the backlog and every one is answered, none reset or delayed by a
    dropped SYN."""
    with exporter(redis_server, "--web-max-connections", "64") as ex:
        listen = subprocess.run(["ss", "-Hltn", f"sport = :{ex.port}"], capture_output=True,
                                text=True, check=True).stdout.split()
        assert listen[2] == "1024", listen  # Send-Q of a listening socket: its backlog

        selector, socks, connect_errors = selectors.DefaultSelector(), {}, []
        request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        started = time.monotonic()
        for i in range(1000):  # 100 addresses, 10 each: under the per-address limit
            sock = socket.socket()
            sock.bind((f"127.0.4.{i % 100 + 1}", 0))
            sock.setblocking(False)
            try:
                sock.connect(("127.0.0.1", ex.port))
            except BlockingIOError:
                pass
            selector.register(sock, selectors.EVENT_WRITE)
            socks[sock] = [b"", None]  # answer so far, when connected
        answers = {}
        while selector.get_map() and time.monotonic() - started < 20:
            for key, mask in selector.select(1):
                sock = key.fileobj
                if mask & selectors.EVENT_WRITE:
                    error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if error:
                        connect_errors.append(os.strerror(error))
                        selector.unregister(sock)
                        continue
                    socks[sock][1] = time.monotonic() - started
                    sock.send(request)
                    selector.modify(sock, selectors.EVENT_READ)
                    continue
                try:
                    chunk = sock.recv(4096)
                except ConnectionResetError:
                    chunk = b""
                socks[sock][0] += chunk
                if not chunk:
                    answers[sock] = socks[sock][0]
                    selector.unregister(sock)
        took = time.monotonic() - started
        for sock in socks:
            sock.close()
        assert not connect_errors, connect_errors[:5]
        connect_times = sorted(when for _, when in socks.values() if when is not None)
        assert len(connect_times) == 1000
        assert connect_times[-1] < 0.9, "a SYN was dropped and retried (1 s): backlog too short"
        statuses = [a.split(b" ", 2)[1] if a.startswith(b"HTTP/1.0 ") else a[:20] for a in answers.values()]
        assert len(answers) == 1000, f"{1000 - len(answers)} connections got no end in 20 s"
        assert statuses.count(b"200") == 1000, Counter(statuses)  # waited their turn, none refused
        assert took < 10
        status, _, _ = get(ex.url + "/metrics")
        assert status == 200


# -- TLS: a client that never finishes its handshake holds no one up ----------------

@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca = make_ca(d, "server-ca")
    return {"dir": d, "ca": ca[0], "server": make_cert(d, "server", ca)}


def test_silent_tls_clients_do_not_stall_other_handshakes(redis_server, pki, tmp_path):
    cert, key = pki["server"]
    config = tmp_path / "web.yml"
    config.write_text(f"tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n")
    context = ssl.create_default_context(cafile=str(pki["ca"]))
    with exporter(redis_server, "--web-config-file", str(config), "--web-read-timeout", "2",
                  tls_context=context) as ex:
        silent = [socket.create_connection(("127.0.0.1", ex.port), source_address=(f"127.0.5.{i + 1}", 0))
                  for i in range(10)]
        half = []  # sent a ClientHello, then nothing
        for i in range(10):
            raw = socket.create_connection(("127.0.0.1", ex.port), source_address=(f"127.0.6.{i + 1}", 0))
            tls = context.wrap_socket(raw, server_hostname="127.0.0.1", do_handshake_on_connect=False)
            tls.setblocking(False)
            try:
                tls.do_handshake()
            except ssl.SSLWantReadError:
                pass
            half.append(tls)
        answered = [get(ex.url + "/metrics", context=context) for _ in range(5)]
        assert all(status == 200 and took < 2 for status, took, _ in answered), answered
        for sock in silent:
            assert ended(sock, 4.0) is not None, "a silent connection outlived the 2 s deadline"
        m = ex.scrape()
        assert m.get("celery_stalk_http_rejected_total", reason="read_timeout") == 20
        for sock in silent + half:
            sock.close()


# -- 4. password guessing costs bounded CPU; good credentials stay fast -----------

def basic(user: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def together(client, count: int) -> None:
    """``client(0)`` to ``client(count - 1)`` at once, each on a thread; returns when all are done."""
    workers = [threading.Thread(target=client, args=(i,)) for i in range(count)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)


def bcrypt_cost_seconds(hashed: bytes) -> float:
    started = time.process_time()
    for _ in range(3):
        bcrypt.checkpw(b"wrong", hashed)
    return (time.process_time() - started) / 3


def test_wrong_passwords_cost_bounded_cpu_and_the_right_one_stays_fast(redis_server, tmp_path):
    hashed = bcrypt.hashpw(b"right horse", bcrypt.gensalt(rounds=12))
    cost = bcrypt_cost_seconds(hashed)
    config = tmp_path / "web.yml"
    config.write_text(f"basic_auth_users:\n  prometheus: '{hashed.decode()}'\n")
    with exporter(redis_server, "--web-config-file", str(config), "--web-auth-max-failures", "2",
                  "--web-auth-max-concurrent", "1") as ex:
        pid, metrics = ex.proc.pid, ex.url + "/metrics"
        good = basic("prometheus", "right horse")
        assert get(metrics, good)[0] == 200  # verified once: remembered from now on

        # 8 clients, 40 wrong passwords each, as fast as they are answered
        statuses: list = []

        def guess(i: int):
            conn_source = (f"127.0.7.{i + 1}", 0)
            for n in range(40):
                conn = http.client.HTTPConnection("127.0.0.1", ex.port, timeout=30, source_address=conn_source)
                conn.request("GET", "/metrics", headers=basic("prometheus", f"guess-{i}-{n}"))
                statuses.append(conn.getresponse().status)
                conn.close()

        stop, results = threading.Event(), []
        prometheus = threading.Thread(target=scrapes_meanwhile, args=(metrics, stop, results),
                                      kwargs={"headers": good})
        cpu_before = cpu_seconds(pid)
        prometheus.start()
        together(guess, 8)
        cpu = cpu_seconds(pid) - cpu_before
        stop.set()
        prometheus.join(10)
        # 2 checks per client, the 38 others refused without bcrypt
        assert statuses.count(401) == 16 and statuses.count(429) == 304, sorted(set(statuses))
        assert cpu < 16 * cost * 1.5 + 2, f"{cpu:.1f} CPU-s for 16 checks of {cost:.2f} s"
        assert results and all(status == 200 and took < 1 for status, took in results), results

        # at most 1 check at a time: 12 new clients at once wait their turn or get 429 (busy)
        burst: list = []

        def one(i: int):
            conn = http.client.HTTPConnection("127.0.0.1", ex.port, timeout=30,
                                              source_address=(f"127.0.8.{i + 1}", 0))
            conn.request("GET", "/metrics", headers=basic("nobody", "x"))
            burst.append(conn.getresponse().status)
            conn.close()

        cpu_before, started = cpu_seconds(pid), time.monotonic()
        together(one, 12)
        cpu, wall = cpu_seconds(pid) - cpu_before, time.monotonic() - started
        assert sorted(set(burst)) == [401, 429] and len(burst) == 12, burst
        assert cpu / wall < 1.3, f"{cpu:.1f} CPU-s in {wall:.1f} s: more than one check at a time"

        status, _, body = get(metrics, good)
        assert status == 200
        text = body.decode()
        failures = 16 + burst.count(401)
        assert f"celery_stalk_http_auth_failures_total {failures}.0" in text
        m = Metrics(text)
        throttled = (m.get("celery_stalk_http_auth_throttled_total", reason="client_failures")
                     + m.get("celery_stalk_http_auth_throttled_total", reason="busy"))
        assert throttled == 304 + burst.count(429)  # (a guesser may also have met a busy check)
        assert m.get("celery_stalk_http_auth_throttled_total", reason="busy") >= burst.count(429)


def test_a_password_over_72_bytes_is_refused_in_one_line_and_at_check_time_a_401(redis_server, tmp_path):
    result = subprocess.run([sys.executable, "-m", "celery_stalk", "hash-password"],
                            input="x" * 73 + "\n", capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "73 bytes" in lines[0] and "at most 72" in lines[0], result.stderr

    hashed = bcrypt.hashpw(b"short", bcrypt.gensalt(rounds=4)).decode()
    config = tmp_path / "web.yml"
    config.write_text(f"basic_auth_users:\n  prometheus: '{hashed}'\n")
    with exporter(redis_server, "--web-config-file", str(config)) as ex:
        for password in ("y" * 100, "é" * 40):  # 100 bytes; 80 bytes in UTF-8
            status, _, body = get(ex.url + "/metrics", basic("prometheus", password))
            assert status == 401 and body == b"unauthorized\n"
        assert get(ex.url + "/metrics", basic("prometheus", "short"))[0] == 200
        assert "Traceback" not in ex.output()


# -- methods ----------------------------------------------------------------------

def raw_request(port: int, text: str) -> tuple[str, dict, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(text.encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status, *lines = head.decode().split("\r\n")
    return status, dict(line.split(": ", 1) for line in lines), body


def test_head_answers_like_get_without_a_body_and_trace_gets_405(redis_server, tmp_path):
    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode()
    config = tmp_path / "web.yml"
    config.write_text(f"basic_auth_users:\n  prom: '{hashed}'\n")
    with exporter(redis_server, "--web-config-file", str(config)) as ex:
        auth = basic("prom", "pw")["Authorization"]
        status, get_headers, get_body = raw_request(
            ex.port, f"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n\r\n")
        assert status == "HTTP/1.0 200 OK" and int(get_headers["Content-Length"]) == len(get_body)
        status, headers, body = raw_request(
            ex.port, f"HEAD /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n\r\n")
        assert status == "HTTP/1.0 200 OK" and body == b""
        assert headers["Content-Type"] == get_headers["Content-Type"]
        assert abs(int(headers["Content-Length"]) - len(get_body)) < 200  # durations differ a little
        status, _, body = raw_request(ex.port, "HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == "HTTP/1.0 200 OK" and body == b""
        for method in ("TRACE", "POST", "PUT", "DELETE", "PROPFIND"):
            status, headers, _ = raw_request(ex.port, f"{method} /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            assert status == "HTTP/1.0 405 Method Not Allowed", (method, status)
            assert headers["Allow"] == "GET, HEAD, OPTIONS"
        assert "Traceback" not in ex.output()
