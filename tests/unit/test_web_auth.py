"""Basic auth at a bounded cost: the per-client failure budget on an injected clock, and
the checks that never reach bcrypt (remembered, throttled, too long for bcrypt)."""

from __future__ import annotations

import base64

import bcrypt
import pytest
from celery_stalk.httpserver import client_key
from celery_stalk.webconfig import BasicAuth, FailureBudget, Throttled, hash_password
from celery_stalk.webstats import WebStats


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def header(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_budget_is_a_burst_then_one_every_60_over_n_seconds():
    clock = Clock()
    budget = FailureBudget(3, clock)
    assert [budget.take("a") for _ in range(4)] == [True, True, True, False]
    assert budget.take("b")  # per client
    clock.now += 19.9
    assert not budget.take("a")
    clock.now += 0.2  # 20 s: one attempt back
    assert budget.take("a") and not budget.take("a")
    assert budget.retry_after() == 20
    clock.now += 3600  # never more than the burst
    assert [budget.take("a") for _ in range(4)] == [True, True, True, False]


def test_a_right_password_costs_no_attempt():
    budget = FailureBudget(1, Clock())
    assert budget.take("a")
    budget.refund("a")
    assert budget.take("a") and not budget.take("a")


def test_forgetting_clients_past_the_bound_only_gives_budgets_back():
    budget = FailureBudget(1, Clock())
    budget.MAX_CLIENTS = 2
    for client in ("a", "b", "c"):
        assert budget.take(client)
    assert len(budget._buckets) == 2
    assert budget.take("a")  # forgotten: its full budget again
    assert not budget.take("c")


@pytest.fixture
def auth():
    users = {"prom": bcrypt.hashpw(b"right", bcrypt.gensalt(rounds=4))}
    return BasicAuth(users, max_concurrent=1, max_failures=2, stats=WebStats())


def test_wrong_passwords_are_throttled_per_client_and_counted(auth):
    assert not auth.check(header("prom", "w1"), "10.0.0.1")
    assert not auth.check(header("nobody", "w2"), "10.0.0.1")  # a wrong user costs the same
    with pytest.raises(Throttled) as info:
        auth.check(header("prom", "right"), "10.0.0.1")  # not remembered yet: refused unchecked
    assert info.value.retry_after == 30
    assert auth.check(header("prom", "right"), "10.0.0.2")  # another client
    assert auth.check(header("prom", "right"), "10.0.0.1")  # remembered now: never throttled
    assert auth.stats.snapshot()[1:] == (2, {"client_failures": 1, "busy": 0})


def test_a_password_longer_than_bcrypt_takes_is_wrong_not_an_error(auth):
    assert not auth.check(header("prom", "x" * 73), "10.0.0.1")
    assert not auth.check(header("prom", "é" * 40), "10.0.0.1")  # 80 bytes
    assert auth.stats.snapshot()[1] == 2
    with pytest.raises(ValueError, match="73 bytes and bcrypt takes at most 72: choose a shorter one"):
        hash_password("x" * 73)
    assert bcrypt.checkpw(b"x" * 72, hash_password("x" * 72, rounds=4).encode())


def test_malformed_headers_are_refused_without_spending_the_budget(auth):
    for bad in (None, "", "Bearer x", "Basic !!!", "Basic " + base64.b64encode(b"nocolon").decode()):
        assert not auth.check(bad, "10.0.0.1")
    assert auth.stats.snapshot()[1] == 0
    assert not auth.check(header("prom", "w"), "10.0.0.1")  # budget intact: checked


@pytest.mark.parametrize("address, key", [
    ("192.0.2.7", "192.0.2.7"),
    ("::ffff:192.0.2.7", "192.0.2.7"),  # an IPv4 client of a dual-stack socket
    ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
    ("2001:db8:1:2:bbbb::9", "2001:db8:1:2::/64"),  # the same host's /64
    ("fe80::1%eth0", "fe80::/64"),
])
def test_clients_are_ipv4_addresses_or_ipv6_slash_64s(address, key):
    assert client_key(address) == key
