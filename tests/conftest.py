import pytest

from tests.brokers import RabbitMQServer, RedisServer


@pytest.fixture(scope="session")
def redis_server():
    """A private redis-server for the whole test session."""
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="session")
def rabbitmq_server():
    """A private RabbitMQ node for the whole test session (takes a few seconds to boot), with
    its management API (management_url) for the exporter's --rabbitmq-management-url."""
    with RabbitMQServer(management=True) as server:
        yield server


@pytest.fixture
def fleet():
    """Starts exporters and workers for a test and stops them after it, whatever happens."""
    started = []

    def add(process):
        started.append(process)
        return process.start()

    yield add
    for process in reversed(started):
        process.stop()
