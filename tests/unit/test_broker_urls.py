"""Broker URLs that kombu would accept and then use to talk to something else fail at start,
with one line that names the fix and never the password."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def serve(broker_url: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "celery_stalk", "serve", "--broker-url", broker_url],
        capture_output=True, text=True, timeout=30,
        env={k: v for k, v in os.environ.items() if not k.startswith("CELERY_STALK_")},
    )


@pytest.mark.parametrize(
    "url, needle",
    [
        ("redis://:s3cret@localhost:6379/abc",
         "database 'abc' in redis://:***@localhost:6379/abc is not a number: "
         "name it by number, as in redis://host:6379/0"),
        ("redis://:s3cret@localhost:abc/0",
         "port 'abc' in redis://:***@localhost:abc/0 is not a port number (1-65535): "
         "write host:port, as in redis://host:6379/0"),
        ("amqp://guest:s3cret@localhost:5x72//",
         "port '5x72' in amqp://guest:***@localhost:5x72// is not a port number"),
        ("redis://:s3cret@a:6379/0;amqp://guest:s3cret@b:5672//",
         "the failover URLs mix redis:// and amqp://: every URL of a failover list must use "
         "the same scheme"),
        ("redis://a:6379/0;rediss://b:6380/0",
         "the failover URLs mix redis:// and rediss://"),
        ("redis://a:6379/1;redis://b:6379/2",
         "the failover URLs name different databases (1, 2): the workers use one; "
         "name it in every URL"),
        ("redis://a:6379;redis://b:6379/3",
         "the failover URLs name different databases (0, 3)"),
    ],
)
def test_bad_broker_url_fails_at_start_with_one_line_naming_the_fix(url, needle):
    result = serve(url)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("celery-stalk: error: --broker-url: ") and needle in lines[0]
    assert "s3cret" not in result.stderr


@pytest.mark.parametrize(
    "url",
    [
        "redis://localhost:6379/0",
        "redis://localhost",  # database 0
        "redis://a:6379/2;redis://b:6379/2",
        "redis://a:6379;redis://b:6379/0",  # both database 0
        "rediss://localhost:6380/0",
        "amqp://guest:guest@a:5672//;amqp://guest:guest@b:5672//",
    ],
)
def test_good_broker_urls_pass(url):
    from celery_stalk.config import broker_url_problems

    assert broker_url_problems(url) == []
