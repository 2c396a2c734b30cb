"""The broker helpers start real, usable servers and survive restarts."""

import uuid

import kombu
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.brokers import RedisServer


def _queue_size(conn: kombu.Connection, name: str) -> int:
    _, message_count, _ = conn.default_channel.queue_declare(queue=name, passive=True)
    return message_count


def _publish_one(server, name: str) -> None:
    queue = kombu.Queue(name, durable=True)
    # Confirms make publish() return only once the broker holds the message.
    with kombu.Connection(server.url, transport_options={"confirm_publish": True}) as conn:
        conn.Producer().publish(
            {"hello": "world"}, routing_key=name, declare=[queue], delivery_mode="persistent"
        )


def test_redis_set_get(redis_server):
    client = redis.Redis.from_url(redis_server.url)
    client.set("stalk:key", "value")
    assert client.get("stalk:key") == b"value"


def test_redis_restart_keeps_port_and_drops_data(redis_server):
    port = redis_server.port
    redis.Redis.from_url(redis_server.url).set("stalk:key", "value")

    redis_server.restart()

    assert redis_server.port == port
    client = redis.Redis.from_url(redis_server.url)
    # No persistence: every restart is a clean server.
    assert client.get("stalk:key") is None
    client.set("stalk:key", "again")
    assert client.get("stalk:key") == b"again"


def test_redis_kill_then_start(redis_server):
    redis_server.kill()
    assert not redis_server.running
    redis_server.start()
    assert redis.Redis.from_url(redis_server.url).ping()


def test_redis_tls_with_password():
    with RedisServer(tls=True, password="s3cret") as server:
        assert server.url == f"rediss://:s3cret@127.0.0.1:{server.port}/0"
        client = redis.Redis.from_url(server.url, ssl_ca_certs=str(server.ca_file))
        client.set("k", "v")
        assert client.get("k") == b"v"
        # Right certificate, no password: refused.
        anonymous = redis.Redis(
            host="127.0.0.1",
            port=server.port,
            ssl=True,
            ssl_ca_certs=str(server.ca_file),
            retry=Retry(NoBackoff(), 0),
        )
        try:
            anonymous.get("k")
        except redis.AuthenticationError:
            pass
        else:
            raise AssertionError("server accepted a client without password")


def test_rabbitmq_publish_then_count(rabbitmq_server):
    name = f"stalk-smoke-{uuid.uuid4().hex}"
    _publish_one(rabbitmq_server, name)
    with kombu.Connection(rabbitmq_server.url) as conn:
        assert _queue_size(conn, name) == 1
        conn.default_channel.queue_delete(name)


def test_rabbitmq_restart_keeps_port_and_durable_queue(rabbitmq_server):
    port = rabbitmq_server.port
    name = f"stalk-smoke-{uuid.uuid4().hex}"
    _publish_one(rabbitmq_server, name)

    rabbitmq_server.restart()

    assert rabbitmq_server.port == port
    with kombu.Connection(rabbitmq_server.url) as conn:
        # Same node name and data dir, so durable state is still there.
        assert _queue_size(conn, name) == 1
        conn.default_channel.queue_delete(name)
    assert name not in rabbitmq_server.ctl("list_queues", "name")
