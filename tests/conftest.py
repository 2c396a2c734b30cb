import pytest

from tests.brokers import RabbitMQServer, RedisServer


@pytest.fixture(scope="session")
def redis_server():
    """A private redis-server for the whole test session."""
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="session")
def rabbitmq_server():
    """A private RabbitMQ node for the whole test session (takes a few seconds to boot)."""
    with RabbitMQServer() as server:
        yield server
