"""--rabbitmq-management-*: the flags' checks, the credentials kept secret, and one queue of
the API's list read (the API itself is exercised in tests/integration)."""

from __future__ import annotations

import pytest
from celery_stalk.brokers.management import parse_queue, vhost_of
from celery_stalk.config import Config, ConfigError

AMQP = "amqp://app:brokerpass@rabbit:5672/prod"


def problems(**raw) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        Config.parse(**raw)
    return caught.value.problems


def test_user_and_password_default_to_the_broker_urls_and_the_vhost_is_its():
    settings = Config.parse(broker_url=AMQP,
                            rabbitmq_management_url="http://rabbit:15672").rabbitmq_management
    assert (settings.user, settings.password, settings.vhost) == ("app", "brokerpass", "prod")
    assert settings.interval == 15 and settings.timeout == 5
    assert Config.parse(broker_url="amqp://rabbit//").rabbitmq_management is None


def test_credentials_in_the_url_move_out_of_it_and_are_redacted_from_logs():
    config = Config.parse(broker_url=AMQP,
                          rabbitmq_management_url="https://ops:s3cr%40t@rabbit:15671/")
    settings = config.rabbitmq_management
    assert settings.url == "https://rabbit:15671/"
    assert (settings.user, settings.password) == ("ops", "s3cr@t")
    assert "s3cr@t" in config.secrets and "brokerpass" in config.secrets


def test_a_given_password_wins_and_is_a_secret():
    config = Config.parse(broker_url=AMQP, rabbitmq_management_url="http://rabbit:15672",
                          rabbitmq_management_user="monitor",
                          rabbitmq_management_password="m0n!tor")
    assert (config.rabbitmq_management.user, config.rabbitmq_management.password) == (
        "monitor", "m0n!tor")
    assert "m0n!tor" in config.secrets


def test_bad_management_flags_fail_with_one_line_each():
    assert problems(broker_url="redis://r:6379/0",
                    rabbitmq_management_url="http://rabbit:15672") == [
        "--rabbitmq-management-url: the broker is not RabbitMQ: drop the flag, or give an "
        "amqp:// --broker-url"]
    assert "is not an http(s) URL" in problems(broker_url=AMQP,
                                               rabbitmq_management_url="rabbit:15672")[0]
    assert problems(broker_url=AMQP, rabbitmq_management_url="http://rabbit:15672",
                    rabbitmq_management_ca_file="/etc/hostname") == [
        "--rabbitmq-management-ca-file: the management URL is not https://"]
    assert "is not a readable file" in problems(
        broker_url=AMQP, rabbitmq_management_url="https://rabbit:15671",
        rabbitmq_management_ca_file="/no/such/ca.pem")[0]
    assert problems(broker_url=AMQP, rabbitmq_management_password="x")[0].startswith(
        "--rabbitmq-management-password: used only with --rabbitmq-management-url")


@pytest.mark.parametrize("url, vhost", [
    ("amqp://guest:guest@h:5672//", "/"), ("amqp://h:5672", "/"), ("amqp://h/", "/"),
    ("amqp://h/prod", "prod"), ("amqp://h/%2Fteam", "/team"),
])
def test_vhost_as_kombu_reads_it(url, vhost):
    assert vhost_of(url) == vhost


def test_one_queue_of_the_api_list():
    name, depth = parse_queue({"name": "work", "messages_ready": 7, "messages_unacknowledged": 2,
                               "consumers": 3, "consumer_utilisation": 0.5,
                               "head_message_timestamp": 900}, now=1000.0)
    assert name == "work"
    assert (depth.messages, depth.unacked, depth.consumers) == (7, 2, 3)
    assert (depth.consumer_utilisation, depth.oldest_age) == (0.5, 100.0)
    # Fields the broker leaves out (no stats yet, no consumers, no timestamp): absent, not 0.
    _, bare = parse_queue({"name": "new"}, now=1000.0)
    assert (bare.messages, bare.unacked, bare.consumers, bare.consumer_utilisation,
            bare.oldest_age) == (0, None, None, None, None)
    # An emptied queue keeps no age of a head it no longer has.
    _, empty = parse_queue({"name": "e", "messages_ready": 0, "head_message_timestamp": 1},
                           now=1000.0)
    assert empty.oldest_age is None
    assert parse_queue({"name": "celeryev.abc"}, 0) is None
    assert parse_queue({"name": "w1@host.celery.pidbox"}, 0) is None
    assert parse_queue({"name": 5}, 0) is None
