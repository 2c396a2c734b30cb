"""Let no one in: basic auth and TLS (and mTLS) from a web config file, broker TLS,
and no broker password anywhere in what a run prints or serves."""

from __future__ import annotations

import base64
import http.client
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import bcrypt
import pytest

from tests.brokers import RedisServer
from tests.celery_app import make_app
from tests.harness import ExporterProcess, WorkerProcess, eventually, wait_worker_up
from tests.tls import make_ca, make_cert

pytestmark = pytest.mark.integration

HOST = socket.gethostname()
NO_BROKER = "redis://127.0.0.1:1/0"  # nothing listens: the HTTP side works regardless


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca = make_ca(d, "server-ca")
    client_ca = make_ca(d, "client-ca")
    stranger_ca = make_ca(d, "stranger-ca")
    return {
        "dir": d,
        "ca": ca[0],
        "server": make_cert(d, "server", ca),
        "server2": make_cert(d, "server2", ca),
        "client_ca": client_ca[0],
        "client": make_cert(d, "client", client_ca, client=True),
        "stranger": make_cert(d, "stranger", stranger_ca, client=True),
    }


@contextmanager
def running(exporter: ExporterProcess):
    """The exporter serving, ready or not (no broker in these tests)."""
    exporter.start(wait_ready=False)
    try:
        yield exporter
    finally:
        exporter.stop()


def web_config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "web.yml"
    path.write_text(text)
    return str(path)


def client_context(pki, cert=None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki["ca"]))
    if cert:
        context.load_cert_chain(str(cert[0]), str(cert[1]))
    return context


def get(url: str, user=None, password=None, context=None) -> tuple[int, dict, str]:
    request = urllib.request.Request(url)
    if user is not None:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read().decode()


def hashed(password: str) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()


def test_basic_auth_wrong_password_401_right_one_200_probes_stay_open(tmp_path):
    config = web_config(tmp_path, f"basic_auth_users:\n  prometheus: '{hashed('s3cret pass')}'\n")
    with running(ExporterProcess(NO_BROKER, "--web-config-file", config)) as exporter:
        url = exporter.url
        status, headers, _ = get(url + "/metrics")
        assert status == 401 and headers["WWW-Authenticate"].startswith("Basic ")
        assert get(url + "/metrics", "prometheus", "wrong")[0] == 401
        assert get(url + "/metrics", "nobody", "s3cret pass")[0] == 401
        assert get(url + "/metrics", "prometheus", "")[0] == 401
        status, _, body = get(url + "/metrics", "prometheus", "s3cret pass")
        assert status == 200 and "celery_stalk_broker_up 0.0" in body
        assert get(url + "/", "prometheus", "wrong")[0] == 401  # the landing page too
        assert get(url + "/", "prometheus", "s3cret pass")[0] == 200
        # probes need no credentials and learn nothing but up/down
        assert get(url + "/healthz")[0] == 200
        status, _, body = get(url + "/readyz")
        assert status == 503 and body == "not ready: not connected to the broker\n"


def test_tls_serves_https_and_plain_http_to_the_tls_port_fails(tmp_path, pki):
    cert, key = pki["server"]
    config = web_config(tmp_path, f"tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n"
                                  f"basic_auth_users:\n  prom: '{hashed('pw')}'\n")
    context = client_context(pki)
    exporter = ExporterProcess(NO_BROKER, "--web-config-file", config, tls_context=context)
    with running(exporter):
        assert exporter.url.startswith("https://")
        assert get(exporter.url + "/metrics", "prom", "pw", context)[0] == 200
        assert get(exporter.url + "/metrics", "prom", "nope", context)[0] == 401
        plain = f"http://127.0.0.1:{exporter.port}/metrics"
        with pytest.raises((urllib.error.URLError, http.client.HTTPException, ConnectionError)):
            get(plain, "prom", "pw")
        # a client that does not trust the certificate refuses it
        with pytest.raises(urllib.error.URLError) as info:
            get(exporter.url + "/healthz", context=ssl.create_default_context())
        assert isinstance(info.value.reason, ssl.SSLCertVerificationError)
        # still serving after all that
        assert get(exporter.url + "/healthz", context=context)[0] == 200

        # a renewed certificate, written in place, is served without a restart
        def served_cert() -> bytes:
            with socket.create_connection(("127.0.0.1", exporter.port)) as raw:
                with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                    return tls.getpeercert(binary_form=True)

        first = served_cert()
        time.sleep(1.1)  # mtimes must differ
        shutil.copy(pki["server2"][0], cert)
        shutil.copy(pki["server2"][1], key)
        eventually(lambda: served_cert() != first, 10, message="new certificate served")
        assert "reloaded the TLS certificate" in exporter.output()


def test_mtls_requires_a_client_certificate_from_the_client_ca(tmp_path, pki):
    cert, key = pki["server"]
    config = web_config(tmp_path, f"""
tls_server_config:
  cert_file: {cert}
  key_file: {key}
  client_ca_file: {pki['client_ca']}
  client_auth_type: RequireAndVerifyClientCert
""")
    good = client_context(pki, pki["client"])
    exporter = ExporterProcess(NO_BROKER, "--web-config-file", config, tls_context=good)
    with running(exporter):
        assert get(exporter.url + "/metrics", context=good)[0] == 200
        for context in (client_context(pki), client_context(pki, pki["stranger"])):
            with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
                get(exporter.url + "/metrics", context=context)


@pytest.mark.parametrize(
    "text, needle",
    [
        (None, "cannot read it"),
        ("basic_auth_users: [oops", "not valid YAML at line 1: fix the syntax"),
        ("basic_auth_users:\n  prom: hunter2-plain\n", "basic_auth_users.prom: not a bcrypt hash"),
        ("tls_server_config:\n  cert_file: /nope.crt\n", "set both cert_file and key_file"),
        ("tls_server_config:\n  cert_file: /nope.crt\n  key_file: {key}\n", "cert_file: cannot read /nope.crt"),
        ("http_server_config:\n  http2: true\n", "'http_server_config' is not supported by celery-stalk: remove it"),
        ("tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n  client_ca_file: {ca}\n",
         "add client_auth_type: RequireAndVerifyClientCert"),
        ("tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n  client_auth_type: RequireAnyClientCert\n",
         "'RequireAnyClientCert' is not supported"),
        ("tls_server_config:\n  cert_file: {cert}\n  key_file: {otherkey}\n", "not a matching PEM certificate"),
    ],
)
def test_bad_web_config_fails_at_start_with_one_line_naming_the_fix(tmp_path, pki, text, needle):
    if text is None:
        path = str(tmp_path / "missing.yml")
    else:
        path = web_config(tmp_path, text.format(cert=pki["server"][0], key=pki["server"][1],
                                                otherkey=pki["client"][1], ca=pki["client_ca"]))
    result = subprocess.run([sys.executable, "-m", "celery_stalk", "serve", "--broker-url", NO_BROKER,
                             "--web-config-file", path], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("celery-stalk: error: --web-config-file") and needle in lines[0], lines
    assert "hunter2" not in result.stderr  # a plain-text password is never echoed


def test_hash_password_prints_a_bcrypt_hash_the_exporter_accepts():
    result = subprocess.run([sys.executable, "-m", "celery_stalk", "hash-password"],
                            input="correct horse\n", capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert bcrypt.checkpw(b"correct horse", result.stdout.strip().encode())


# -- the broker side -------------------------------------------------------------

SECRET = "Pa55:w/rd@hunter2#x"  # every character a URL must escape


def assert_secret_absent(*texts: str) -> None:
    for form in (SECRET, quote(SECRET, safe=""), "hunter2"):
        for text in texts:
            assert form not in text, f"{form!r} leaked in: ...{text[max(0, text.find(form) - 200):][:400]}"


def test_broker_password_never_printed_or_served(fleet):
    """A real Redis with requirepass, a real worker, debug logs in both formats, an
    outage and a wrong password: all output and every page, grepped for the password."""
    with RedisServer(password=SECRET) as server:
        url = server.url
        assert quote(SECRET, safe="") in url
        texts = []
        for log_format in ("text", "json"):
            exporter = fleet(ExporterProcess(url, "--log-level", "debug", "--log-format", log_format,
                                             "--queue", "work"))
            worker = fleet(WorkerProcess(url, f"secret-{log_format}@{HOST}", concurrency=1))
            wait_worker_up(exporter, worker.nodename, 60)
            make_app(url).send_task("tests.add", args=(1, 2))
            eventually(lambda: exporter.scrape().sum("celery_task_succeeded_total") == 1, 30)
            server.stop()  # errors get logged, with whatever the libraries put in them
            eventually(lambda: not exporter.ready(), 20)
            texts.append(exporter.scrape().text)
            server.start()
            eventually(exporter.ready, 30)
            for path in ("/", "/metrics", "/readyz", "/healthz"):
                texts.append(urllib.request.urlopen(exporter.url + path, timeout=10).read().decode())
            worker.stop()
            assert exporter.stop() == 0
            texts.append(exporter.output())
            assert "reconnecting in" in exporter.output()  # the errors were logged
        # the wrong password: an authentication error, logged
        wrong = url.replace(quote(SECRET, safe=""), quote(SECRET[::-1], safe=""))
        with running(ExporterProcess(wrong, "--log-level", "debug")) as exporter:
            eventually(lambda: "AuthenticationError" in exporter.output(), 20)
            texts.append(urllib.request.urlopen(exporter.url + "/", timeout=10).read().decode())
            assert exporter.stop() == 0
            texts.append(exporter.output())
    assert any('"level": "debug"' in t for t in texts)  # the json run logged too
    assert_secret_absent(*texts)
    for text in texts:
        assert SECRET[::-1] not in text and quote(SECRET[::-1], safe="") not in text


def test_broker_tls_with_ssl_options_for_consumer_and_queue_reader(fleet):
    with RedisServer(tls=True, password=SECRET) as server:
        url = server.url
        assert url.startswith("rediss://")
        # the worker and producer trust the test CA through the URL (kombu's ssl_* query)
        worker_url = f"{url}?ssl_cert_reqs=required&ssl_ca_certs={server.ca_file}"

        # by default the broker's certificate is verified: an unknown CA is refused
        with running(ExporterProcess(url, "--log-level", "debug")) as untrusting:
            eventually(lambda: "certificate verify failed" in untrusting.output().lower(), 20,
                       message="unverified certificate refused")
            assert untrusting.scrape().get("celery_stalk_broker_up") == 0
            texts = [untrusting.output()]

        exporter = fleet(ExporterProcess(url, "--broker-ssl-option", f"ca_certs={server.ca_file}",
                                         "--broker-ssl-option", "cert_reqs=required", "--queue", "work"))
        worker = fleet(WorkerProcess(worker_url, f"tls@{HOST}", concurrency=1))
        wait_worker_up(exporter, worker.nodename, 60)
        producer = make_app(worker_url)
        for i in range(3):
            producer.send_task("tests.add", args=(i, i))
        eventually(lambda: exporter.scrape().sum("celery_task_succeeded_total") == 3, 60)
        m = exporter.scrape()
        assert m.get("celery_stalk_broker_up") == 1  # the queue reader speaks TLS too
        assert m.get("celery_queue_messages", queue="work") == 0
        assert m.get("celery_stalk_events_connected") == 1
        texts += [exporter.output(), m.text]
    assert_secret_absent(*texts)


def test_broker_ssl_option_mistakes_fail_at_start():
    def run(*args):
        return subprocess.run([sys.executable, "-m", "celery_stalk", "serve", *args],
                              capture_output=True, text=True, timeout=30)

    result = run("--broker-url", "redis://r:6379/0", "--broker-ssl-option", "ca_certs=/etc/hostname")
    assert result.returncode == 2 and "use rediss:// or amqps://" in result.stderr
    result = run("--broker-url", "rediss://r:6379/0", "--broker-ssl-option", "ca_certs=/no/such.pem")
    assert result.returncode == 2 and "ca_certs='/no/such.pem' is not a readable file" in result.stderr
    result = run("--broker-url", "amqps://r//", "--broker-ssl-option", "verify=yes")
    assert result.returncode == 2 and "cert_reqs" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_the_exporter_writes_no_file(tmp_path):
    """It must run on a read-only root filesystem: every file opened for writing,
    every directory made or file removed is reported by an audit hook."""
    hook = tmp_path / "hook.py"
    hook.write_text(
        "import sys, os\n"
        "WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC\n"
        "def audit(event, args):\n"
        "    if event == 'open' and args[0] not in (None, '/dev/null') and not isinstance(args[0], int):\n"
        "        mode, flags = args[1] or '', args[2] or 0\n"
        "        if any(c in str(mode) for c in 'wax+') or flags & WRITE:\n"
        "            sys.__stderr__.write(f'WROTE {args[0]!r} {mode!r}\\n')\n"
        "    elif event in ('os.mkdir', 'os.remove', 'os.rename', 'os.unlink', 'tempfile.mkstemp',\n"
        "                   'tempfile.mkdtemp', 'os.truncate', 'os.symlink', 'os.link'):\n"
        "        sys.__stderr__.write(f'WROTE {event} {args!r}\\n')\n"
        "sys.addaudithook(audit)\n"
        "from celery_stalk.cli import main\n"
        "sys.argv[0] = 'celery-stalk'\n"
        "main()\n"
    )
    with RedisServer() as server:
        exporter = ExporterProcess(server.url, "--log-level", "debug",
                                   env={"PYTHONDONTWRITEBYTECODE": "1"})
        exporter.args[1:3] = [str(hook)]  # python HOOK serve ... instead of python -m celery_stalk
        with exporter:
            worker = WorkerProcess(server.url, f"ro@{HOST}", concurrency=1).start()
            try:
                wait_worker_up(exporter, worker.nodename, 60)
                make_app(server.url).send_task("tests.add", args=(1, 1))
                eventually(lambda: exporter.scrape().sum("celery_task_succeeded_total") == 1, 30)
                for path in ("/", "/readyz", "/healthz"):
                    urllib.request.urlopen(exporter.url + path, timeout=10).read()
            finally:
                worker.stop()
            assert exporter.stop() == 0
            output = exporter.output()
    assert "consuming events" in output  # the hook ran the real thing
    assert "WROTE" not in output, [line for line in output.splitlines() if "WROTE" in line]
