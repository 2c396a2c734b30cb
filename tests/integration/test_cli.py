"""The command line as users meet it, in its own process: bad flags fail at start with one
line naming the fix; a broker that cannot be reached is served as data, the password never printed."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def run_cli(*args, env=None, timeout=30):
    return subprocess.run([sys.executable, "-m", "celery_stalk", *args], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--worker-timeout", "soon"], "--worker-timeout: 'soon' is not a positive number"),
        (["--listen-address", "9808"], "use host:port"),
        (["--runtime-buckets", "10,1"], "increasing positive seconds"),
        (["--log-format", "xml"], "--log-format: 'xml' is not one of text, json"),
        (["--broker-transport-option", "nokeyvalue"], "is not key=value"),
        (["--max-tracked-tasks", "0"], "--max-tracked-tasks"),
        (["--events-stall-timeout", "30"], "must be shorter than --worker-timeout"),
        (["--broker-ssl-option", "ca_certs=/etc/hostname"], "use rediss:// or amqps://"),
        (["--web-config-file", "/no/such/web.yml"], "cannot read it"),
        (["--no-such-flag"], "No such option"),
    ],
)
def test_bad_flag_fails_with_one_line_that_names_the_fix(args, needle):
    result = run_cli("serve", "--broker-url", "redis://localhost:6379/0", *args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("celery-stalk: error: ") and needle in lines[0]
    assert "Traceback" not in result.stderr


def test_every_problem_is_reported_at_once_and_env_vars_are_read():
    result = run_cli("serve", env={
        "CELERY_STALK_BROKER_URL": "ftp://nope",
        "CELERY_STALK_WORKER_TTL": "-1",
        "CELERY_STALK_LOG_LEVEL": "loud",
    })
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 3, result.stderr
    assert any("scheme 'ftp'" in line for line in lines)
    assert any("--worker-ttl" in line for line in lines)
    assert any("--log-level" in line for line in lines)


def test_missing_broker_names_the_flag_and_the_env_var():
    result = run_cli("serve", env={"CELERY_STALK_BROKER_URL": ""})
    assert result.returncode == 2
    assert "--broker-url" in result.stderr and "CELERY_STALK_BROKER_URL" in result.stderr


def test_taken_port_fails_with_one_clear_line():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = run_cli("serve", "--broker-url", "redis://127.0.0.1:1/0",
                         "--listen-address", f"127.0.0.1:{port}")
    assert result.returncode == 2
    assert "pick a free port with --listen-address" in result.stderr


def test_unreachable_broker_is_served_as_data_and_the_password_never_printed():
    """Nothing listens on port 1: the exporter still serves, says so in metrics, and its
    logs, landing page and metrics never show the password (the URL-encoded form either)."""
    import urllib.request

    from tests.harness import ExporterProcess, eventually

    secret = "pa55%40hunter2"
    exporter = ExporterProcess(f"redis://:{secret}@127.0.0.1:1/0", "--log-level", "debug")
    exporter.start(wait_ready=False)
    try:
        assert not exporter.ready()
        metrics = exporter.scrape()
        assert metrics.get("celery_stalk_broker_up") == 0
        assert metrics.get("celery_stalk_events_connected") == 0
        landing = urllib.request.urlopen(exporter.url + "/", timeout=5).read().decode()
        assert "redis://:***@127.0.0.1:1/0" in landing
        eventually(lambda: "reconnecting in" in exporter.output(), 10, message="reconnect logged")
    finally:
        assert exporter.stop() == 0
    output = exporter.output()
    for text in (output, landing, metrics.text):
        assert secret not in text and "pa55@hunter2" not in text and "hunter2" not in text
