"""The instrumented worker's edges: its /metrics behind TLS and basic auth (the exporter's web
config), bad options failing at start with one line, and a broken instrumentation that must
never break a task."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import redis

from tests.celery_app import make_app
from tests.harness import ROOT, eventually
from tests.instrumented import InstrumentedWorker
from tests.integration.test_security import client_context, get, hashed, pki, web_config  # noqa: F401

pytestmark = pytest.mark.integration

HOST = socket.gethostname()
NO_BROKER = "redis://127.0.0.1:1/0"


def test_worker_metrics_honour_tls_and_basic_auth_probes_stay_open(tmp_path, pki, fleet):  # noqa: F811
    cert, key = pki["server"]
    config = web_config(tmp_path, f"tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n"
                                  f"basic_auth_users:\n  prom: '{hashed('pw')}'\n")
    context = client_context(pki)
    # no broker needed: the worker serves /metrics while it retries the connection
    worker = fleet(InstrumentedWorker(NO_BROKER, f"tls@{HOST}", pool="solo",
                                      extra=("--stalk-web-config-file", config)))
    url = f"https://127.0.0.1:{worker.port}"
    eventually(lambda: get(url + "/healthz", context=context)[0] == 200, 30,
               message=f"the worker serves https\n{worker.output()}")
    status, _, body = get(url + "/metrics", "prom", "pw", context)
    assert status == 200 and "celery_worker_pool_size" in body
    assert get(url + "/metrics", "prom", "wrong", context)[0] == 401
    assert get(url + "/metrics", context=context)[0] == 401
    assert get(url + "/readyz", context=context)[0] == 200
    with pytest.raises(OSError):  # plain HTTP on the TLS port gets nothing
        get(f"http://127.0.0.1:{worker.port}/metrics", "prom", "pw")


def start_worker(*options: str) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "celery", "-A", "tests.instrumented_app", "worker", "-P", "solo",
            "-l", "WARNING", *options]
    env = {**os.environ, "STALK_TEST_BROKER": NO_BROKER, "PYTHONPATH": str(ROOT)}
    return subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)


def errors_of(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("celery-stalk: error:")]


def test_a_bad_web_config_stops_the_worker_at_start_with_one_line_naming_the_fix(tmp_path):
    config = web_config(tmp_path, "basic_auth_users:\n  prom: hunter2-plain\n")
    result = start_worker("--stalk-port", "0", "--stalk-web-config-file", config)
    assert result.returncode == 2
    lines = errors_of(result)
    assert len(lines) == 1, result.stderr
    assert "--stalk-web-config-file" in lines[0] and "celery-stalk hash-password" in lines[0]


def test_a_taken_port_stops_the_worker_at_start_with_one_line_naming_the_fix():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = start_worker("--stalk-port", str(port), "--stalk-host", "127.0.0.1")
    assert result.returncode == 2
    assert errors_of(result) == [
        f"celery-stalk: error: --stalk-port: cannot listen on 127.0.0.1:{port} "
        "(Address already in use): pick a free port with --stalk-port"]


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_a_broken_instrumentation_never_breaks_a_task(redis_server, fleet, pool):
    url = redis_server.fresh_url()
    worker = InstrumentedWorker(url, f"broken-{pool}@{HOST}", pool=pool)
    worker.env["STALK_TEST_BREAK_COUNTING"] = "1"
    fleet(worker)
    worker.wait_serving()
    client = redis.Redis.from_url(url)
    keys = [f"ran-{pool}-{i}" for i in range(10)]
    client.delete(*keys)
    producer = make_app(url)
    for key in keys:
        producer.send_task("tests.note", args=(key,), queue="work")
    eventually(lambda: all(client.get(key) == b"ran" for key in keys), 60,
               message=f"every task ran\n{worker.output()[-3000:]}")
    m = eventually(lambda: (m := worker.scrape()).get(
        "celery_stalk_instrumentation_errors_total", where="request") == 20 and m, 30,
        message="a start and a success failed to count, for each task")
    # what did not fail is still counted
    assert m.get("celery_task_received_total", task="tests.note", queue="work",
                 worker=worker.nodename) == 10
    assert m.get("celery_stalk_collector_success", collector="tasks") == 1
    log = worker.output()
    assert log.count("celery-stalk instrumentation error in request") == 1  # once, not per task
    assert "RuntimeError: injected fault" in log


def test_a_worker_without_events_heartbeats_or_gossip_still_counts_every_outcome(redis_server, fleet):
    """Celery reports a finished task to the request only while the worker's event
    dispatcher is on; the instrumentation keeps it on (for the worker group alone)."""
    url = redis_server.fresh_url()
    worker = fleet(InstrumentedWorker(url, f"silent@{HOST}", pool="solo",
                                      extra=("--without-heartbeat",)))
    worker.wait_serving()
    producer = make_app(url)
    for i in range(5):
        producer.send_task("tests.add", args=(i, i), queue="work")
    producer.send_task("tests.fail_key", queue="work")
    m = eventually(lambda: (m := worker.scrape()).get(
        "celery_task_succeeded_total", task="tests.add", queue="work", worker=worker.nodename) == 5 and m, 60,
        message=f"successes counted\n{worker.output()[-2000:]}")
    assert m.get("celery_task_runtime_seconds_count", task="tests.add", queue="work",
                 worker=worker.nodename) == 5
    eventually(lambda: worker.scrape().get("celery_task_exceptions_total", task="tests.fail_key",
                                           queue="work", exception="KeyError",
                                           worker=worker.nodename) == 1, 30)
