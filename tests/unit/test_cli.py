"""The command line as users meet it: bad flags fail at start with one line naming the fix."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from celery_stalk.config import Config, ConfigError, redact_url


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


def test_config_parses_repeatable_queues_and_json_transport_options():
    config = Config.parse(
        broker_url="redis://localhost:6379/0",
        queue=("a,b", "c", "a"),
        broker_transport_option=("priority_steps=[0,5]", "sep=:", 'global_keyprefix="x:"'),
    )
    assert config.queues == ("a", "b", "c")
    assert config.transport_options == {"priority_steps": [0, 5], "sep": ":", "global_keyprefix": "x:"}
    assert config.transport == "redis"


def test_config_error_lists_every_problem():
    with pytest.raises(ConfigError) as info:
        Config.parse(broker_url=None, worker_timeout="0", wait_buckets="a,b")
    assert len(info.value.problems) == 3


@pytest.mark.parametrize(
    "url, expected",
    [
        ("redis://:hunter2@redis:6379/0", "redis://:***@redis:6379/0"),
        ("amqp://app:hunter2@mq:5672/vhost", "amqp://app:***@mq:5672/vhost"),
        ("rediss://default:hunter2@r:6380/0?ssl_cert_reqs=required",
         "rediss://default:***@r:6380/0?ssl_cert_reqs=required"),
        ("redis://r:6379/0?password=hunter2", "redis://r:6379/0?password=***"),
        ("amqp://a:hunter2@m1//;amqp://a:hunter2@m2//", "amqp://a:***@m1//;amqp://a:***@m2//"),
        ("redis://localhost:6379/0", "redis://localhost:6379/0"),
    ],
)
def test_redact_url(url, expected):
    assert redact_url(url) == expected


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


def test_backoff_doubles_from_half_a_second_to_a_cap_with_jitter():
    from celery_stalk.events import Backoff

    for jitter, factor in ((0.0, 0.5), (1.0, 1.0)):
        backoff = Backoff(rng=lambda: jitter)
        delays = [backoff.next_delay() for _ in range(8)]
        assert delays == [factor * d for d in (0.5, 1, 2, 4, 8, 10, 10, 10)]
        backoff.reset()
        assert backoff.next_delay() == factor * 0.5


def test_broker_tls_defaults_verify_and_options_map_to_each_transport():
    import ssl

    redis = Config.parse(broker_url="rediss://r:6380/0")
    assert redis.kombu_ssl == {"ssl_cert_reqs": "required"}  # kombu alone would not verify
    redis = Config.parse(broker_url="rediss://r:6380/0",
                         broker_ssl_option=("ca_certs=/etc/hostname", "cert_reqs=CERT_NONE"))
    assert redis.kombu_ssl == {"ssl_ca_certs": "/etc/hostname", "ssl_cert_reqs": "none"}
    amqp = Config.parse(broker_url="amqps://u:p@mq//", broker_ssl_option=("ca_certs=/etc/hostname",))
    assert amqp.kombu_ssl == {"ca_certs": "/etc/hostname", "cert_reqs": ssl.CERT_REQUIRED,
                              "server_hostname": None}
    assert Config.parse(broker_url="amqp://mq//").kombu_ssl is False


def test_stall_timeout_defaults_to_half_the_worker_timeout_at_most_10s():
    assert Config.parse(broker_url="redis://r/0").events_stall_timeout == 10
    assert Config.parse(broker_url="redis://r/0", worker_timeout="5").events_stall_timeout == 2.5
    assert Config.parse(broker_url="redis://r/0", events_stall_timeout="3").events_stall_timeout == 3
