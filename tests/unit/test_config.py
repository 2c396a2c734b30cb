"""The configuration: flags parsed, checked and mapped, all from the option spec (options.py)."""

from __future__ import annotations

import dataclasses

import click
import pytest
from celery_stalk.config import Config, ConfigError, redact_url
from celery_stalk.model import ModelSettings
from celery_stalk.options import OPTIONS, default


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


def test_backoff_doubles_from_half_a_second_to_a_cap_with_jitter():
    from celery_stalk.sources.supervisor import Backoff

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


def test_config_fields_model_settings_and_click_options_all_come_from_the_option_spec():
    config_fields = {f.name for f in dataclasses.fields(Config)}
    model_fields = {f.name for f in dataclasses.fields(ModelSettings)}
    for option in OPTIONS:
        if option.kind == "file":
            continue  # read by the CLI into --broker-url, --rabbitmq-management-password
        if option.model:
            assert option.field in model_fields, option.flag
            if option.default is not None:  # the model's own default is the flag's
                assert getattr(ModelSettings(), option.field) == default(option.field), option.flag
        else:
            assert option.field in config_fields, option.flag
    assert config_fields == {o.field for o in OPTIONS if not o.model and o.kind != "file"} | {"model"}

    from celery_stalk.cli import serve

    params = {p.name: p for p in serve.params if isinstance(p, click.Option)}
    assert list(params) == [o.dest for o in OPTIONS]
    for option in OPTIONS:
        assert params[option.dest].envvar == option.env_var == "CELERY_STALK_" + option.dest.upper()
        assert params[option.dest].multiple == option.repeatable


def test_every_default_parses():
    config = Config.parse(broker_url="redis://localhost:6379/0")
    assert config.model == ModelSettings()
    assert config.listen_address == ("0.0.0.0", 9808)
