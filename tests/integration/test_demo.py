"""`celery-stalk demo` as a newcomer runs it: the whole mix shows up in /metrics, it stops by
itself after --duration with exit code 0, and leaves no process behind."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.brokers import _descendants, _start_time
from tests.harness import eventually, free_port, scrape

pytestmark = pytest.mark.integration

EXCEPTIONS = {"CardDeclined", "KeyError", "TimeoutError", "SoftTimeLimitExceeded"}


@pytest.mark.parametrize("broker", ["redis-server", "filesystem"])
def test_demo_shows_the_whole_mix_stops_by_itself_and_leaves_nothing_behind(broker):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELERY_STALK_")}
    if broker == "filesystem":
        env["PATH"] = str(Path(sys.executable).parent)  # no redis-server on PATH
    log = tempfile.NamedTemporaryFile("w+", prefix="celery-stalk-demo-", suffix=".log")
    demo = subprocess.Popen(
        [sys.executable, "-m", "celery_stalk", "demo", "--duration", "20", "--port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        def whole_mix():
            m = scrape(f"http://127.0.0.1:{port}/metrics")
            assert m.sum("celery_task_succeeded_total") > 0
            assert EXCEPTIONS <= m.label_values("celery_task_exceptions_total", "exception")
            assert m.sum("celery_task_retried_total", task="shop.charge_card") > 0
            assert m.get("celery_queue_messages", queue="reports") > 0  # the backlog
            assert m.get("celery_workers") == 2
            # a slow task ran to the end
            assert m.sum("celery_task_runtime_seconds_count", task="shop.sync_inventory") > 0
            return m

        m = eventually(whole_mix, 40, message="the demo's mix in /metrics")
        # one machine, one clock: its retries are never taken for clock skew
        assert m.get("celery_stalk_queue_wait_clock_skew_total") == 0
        children = _descendants(demo.pid)
        assert len(children) >= 4  # exporter and two workers (with pool children), broker
        assert demo.wait(60) == 0
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, 9)
            demo.wait()
    output = Path(log.name).read_text()
    assert f"http://127.0.0.1:{port}/metrics" in output
    assert "failures by exception" in output and "SoftTimeLimitExceeded" in output
    expected = "embedded filesystem broker" if broker == "filesystem" else "redis-server on 127.0.0.1"
    assert expected in output
    left = [pid for pid, started in children if _start_time(pid) == started]
    assert not left, f"processes left behind: {left}\n{output[-3000:]}"


def test_demo_on_a_taken_port_fails_at_once_with_one_line_that_names_the_fix():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "celery_stalk", "demo", "--port", str(port)],
                                capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert result.stderr.strip() == f"celery-stalk: error: port {port} is taken: pick another with --port"
