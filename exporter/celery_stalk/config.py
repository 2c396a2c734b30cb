"""Validated, frozen configuration, and the redaction of broker secrets.

``Config.parse`` takes the raw strings the CLI (or env vars) gave and either
returns a Config or raises ConfigError listing every problem at once, each as
one line that names the fix.
"""

from __future__ import annotations

import json
import math
import os
import ssl
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote, urlsplit

from . import webconfig
from .model import ModelSettings

DEFAULT_PORT = 9808
DEFAULT_STALL_TIMEOUT = 10.0
# filesystem: kombu's single-machine transport, used by celery-stalk demo
SUPPORTED_SCHEMES = ("redis", "rediss", "amqp", "amqps", "pyamqp", "filesystem")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
REDACTED = "***"
TLS_SCHEMES = ("rediss", "amqps")
# --broker-ssl-option keys, named as in Celery's broker_use_ssl.
BROKER_SSL_FILES = ("ca_certs", "certfile", "keyfile")
CERT_REQS = {"required": ssl.CERT_REQUIRED, "optional": ssl.CERT_OPTIONAL, "none": ssl.CERT_NONE}


class ConfigError(ValueError):
    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Config:
    broker_url: str
    listen_host: str = "0.0.0.0"
    listen_port: int = DEFAULT_PORT
    queues: tuple[str, ...] = ()
    transport_options: dict = field(default_factory=dict)
    task_routes: tuple[tuple[str, str], ...] = ()  # (task name or glob, queue)
    broker_ssl: dict = field(default_factory=dict)  # --broker-ssl-option, checked
    model: ModelSettings = field(default_factory=ModelSettings)
    events_stall_timeout: float = 10.0
    queue_read_timeout: float = 2.0
    queue_discovery_interval: float = 60.0
    web: webconfig.WebConfig = field(default_factory=webconfig.WebConfig)
    log_level: str = "info"
    log_format: str = "text"

    @property
    def transport(self) -> str:
        scheme = urlsplit(self.broker_url).scheme
        if scheme.startswith("redis"):
            return "redis"
        return "filesystem" if scheme == "filesystem" else "amqp"

    @property
    def uses_tls(self) -> bool:
        return urlsplit(self.broker_url).scheme in TLS_SCHEMES

    @property
    def kombu_ssl(self) -> dict | bool:
        """kombu's ``Connection(ssl=...)``: False for a plain URL, else the
        options in the transport's own key names, verifying the broker's
        certificate unless told otherwise (kombu alone would not verify
        rediss:// at all)."""
        if not self.uses_tls:
            return False
        files = {key: value for key, value in self.broker_ssl.items() if key in BROKER_SSL_FILES}
        reqs = self.broker_ssl.get("cert_reqs", "required")
        if self.transport == "redis":  # redis-py's names, also taken by the queue reader
            return {**{f"ssl_{key}": value for key, value in files.items()}, "ssl_cert_reqs": reqs}
        options = {**files, "cert_reqs": CERT_REQS[reqs]}
        if reqs == "required":
            options["server_hostname"] = None  # kombu fills in the broker host: names are checked
        return options

    @property
    def redacted_broker_url(self) -> str:
        return redact_url(self.broker_url)

    @property
    def secrets(self) -> tuple[str, ...]:
        """Strings that must never be printed: every password in the broker URL."""
        return url_secrets(self.broker_url)

    @classmethod
    def parse(
        cls,
        # Keyword names are the CLI flags' (--broker-url -> broker_url).
        *,
        broker_url: str | None,
        listen_address: str = f"0.0.0.0:{DEFAULT_PORT}",
        queue: tuple[str, ...] = (),
        broker_transport_option: tuple[str, ...] = (),
        task_route: tuple[str, ...] = (),
        broker_ssl_option: tuple[str, ...] = (),
        worker_timeout: str = "20",
        worker_ttl: str = "900",
        max_tracked_tasks: str = "100000",
        runtime_buckets: str | None = None,
        wait_buckets: str | None = None,
        max_task_names: str = "1000",
        max_queues: str = "500",
        max_exceptions: str = "500",
        max_workers: str = "2000",
        events_stall_timeout: str | None = None,
        queue_read_timeout: str = "2",
        queue_discovery_interval: str = "60",
        web_config_file: str | None = None,
        log_level: str = "info",
        log_format: str = "text",
    ) -> Config:
        problems: list[str] = []
        p = _Parser(problems)

        if not broker_url:
            problems.append(
                "no broker: pass --broker-url redis://host:6379/0 (or amqp://...) "
                "or set CELERY_STALK_BROKER_URL"
            )
        else:
            for url in broker_url.split(";"):
                scheme = urlsplit(url.strip()).scheme
                if scheme not in SUPPORTED_SCHEMES:
                    problems.append(
                        f"--broker-url: scheme {scheme or '(none)'!r} is not supported: "
                        f"use one of {', '.join(s + '://' for s in SUPPORTED_SCHEMES)}"
                    )
                    break

        host, port = p.address(listen_address)
        defaults = ModelSettings()
        model = ModelSettings(
            worker_timeout=p.positive("--worker-timeout", worker_timeout),
            worker_ttl=p.positive("--worker-ttl", worker_ttl),
            max_tracked_tasks=p.count("--max-tracked-tasks", max_tracked_tasks, minimum=2),
            runtime_buckets=p.buckets("--runtime-buckets", runtime_buckets, defaults.runtime_buckets),
            wait_buckets=p.buckets("--wait-buckets", wait_buckets, defaults.wait_buckets),
            max_task_names=p.count("--max-task-names", max_task_names),
            max_queues=p.count("--max-queues", max_queues),
            max_exceptions=p.count("--max-exceptions", max_exceptions),
            max_workers=p.count("--max-workers", max_workers),
        )
        if events_stall_timeout:
            stall_timeout = p.positive("--events-stall-timeout", events_stall_timeout)
        else:  # well before a silent fleet would be reported lost
            stall_timeout = min(DEFAULT_STALL_TIMEOUT, model.worker_timeout / 2)
        worker_timeout_ok = not any(x.startswith("--worker-timeout") for x in problems)
        if stall_timeout >= model.worker_timeout and worker_timeout_ok:
            problems.append(
                f"--events-stall-timeout: {events_stall_timeout} must be shorter than --worker-timeout "
                f"({model.worker_timeout:g}), or a lost subscription would report every worker lost first"
            )
        broker_ssl = p.broker_ssl(broker_ssl_option)
        if broker_ssl and broker_url and urlsplit(broker_url.strip()).scheme not in TLS_SCHEMES:
            problems.append(
                "--broker-ssl-option: the broker URL is not a TLS one: use rediss:// or amqps://"
            )
        config = cls(
            broker_url=(broker_url or "").strip(),
            listen_host=host,
            listen_port=port,
            queues=p.queues(queue),
            transport_options=p.transport_options(broker_transport_option),
            task_routes=p.routes(task_route),
            broker_ssl=broker_ssl,
            model=model,
            events_stall_timeout=stall_timeout,
            queue_read_timeout=p.positive("--queue-read-timeout", queue_read_timeout),
            queue_discovery_interval=p.positive("--queue-discovery-interval", queue_discovery_interval),
            web=p.web_config(web_config_file),
            log_level=p.choice("--log-level", log_level.lower(), LOG_LEVELS),
            log_format=p.choice("--log-format", log_format.lower(), LOG_FORMATS),
        )
        if problems:
            raise ConfigError(problems)
        return config


class _Parser:
    """Parses one flag at a time, collecting problems instead of stopping at the first."""

    def __init__(self, problems: list[str]):
        self.problems = problems

    def _fail(self, message: str):
        self.problems.append(message)

    def positive(self, flag: str, raw: str) -> float:
        try:
            value = float(raw)
        except (TypeError, ValueError):
            value = math.nan
        if not (value > 0 and math.isfinite(value)):
            self._fail(f"{flag}: {raw!r} is not a positive number of seconds, e.g. {flag} 30")
            return 1.0
        return value

    def count(self, flag: str, raw: str, minimum: int = 1) -> int:
        try:
            value = int(raw)
        except (TypeError, ValueError):
            value = minimum - 1
        if value < minimum:
            self._fail(f"{flag}: {raw!r} is not a whole number >= {minimum}, e.g. {flag} 1000")
            return minimum
        return value

    def choice(self, flag: str, raw: str, choices: tuple[str, ...]) -> str:
        if raw not in choices:
            self._fail(f"{flag}: {raw!r} is not one of {', '.join(choices)}")
            return choices[0]
        return raw

    def address(self, raw: str) -> tuple[str, int]:
        fix = "use host:port, e.g. --listen-address 0.0.0.0:9808 or [::]:9808"
        host, sep, port_text = (raw or "").rpartition(":")
        if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
            self._fail(f"--listen-address: {raw!r} is not a valid address: {fix}")
            return "0.0.0.0", DEFAULT_PORT
        host = host.strip("[]") or "0.0.0.0"
        return host, int(port_text)

    def buckets(self, flag: str, raw: str | None, default: tuple[float, ...]) -> tuple[float, ...]:
        if raw is None or raw == "":
            return default
        try:
            values = tuple(float(part) for part in raw.split(",") if part.strip())
        except ValueError:
            values = ()
        ok = (
            values
            and all(v > 0 and math.isfinite(v) for v in values)
            and all(a < b for a, b in zip(values, values[1:]))
        )
        if not ok:
            self._fail(
                f"{flag}: {raw!r} must be comma-separated increasing positive seconds, "
                f"e.g. {flag} 0.1,1,10,60,600,3600"
            )
            return default
        return values

    def queues(self, raw: tuple[str, ...]) -> tuple[str, ...]:
        names = []
        for item in raw:
            for name in item.split(","):
                name = name.strip()
                if name and name not in names:
                    names.append(name)
        return tuple(names)

    def routes(self, raw: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
        routes = []
        for item in raw:
            for route in item.split(","):
                pattern, sep, queue = (part.strip() for part in route.partition("="))
                if not sep or not pattern or not queue:
                    self._fail(
                        f"--task-route: {route.strip()!r} is not task=queue, "
                        "e.g. --task-route 'proj.reports.*=reports'"
                    )
                    continue
                routes.append((pattern, queue))
        return tuple(routes)

    def transport_options(self, raw: tuple[str, ...]) -> dict:
        options = {}
        for item in raw:
            key, sep, value = item.partition("=")
            key = key.strip()
            if not sep or not key:
                self._fail(
                    f"--broker-transport-option: {item!r} is not key=value, "
                    'e.g. --broker-transport-option priority_steps=[0,3,6,9]'
                )
                continue
            try:
                options[key] = json.loads(value)
            except ValueError:
                options[key] = value  # a bare string such as sep=: needs no quotes
        return options


    def broker_ssl(self, raw: tuple[str, ...]) -> dict:
        options = {}
        for item in raw:
            key, sep, value = (part.strip() for part in item.partition("="))
            if not sep or not value or key not in BROKER_SSL_FILES + ("cert_reqs",):
                self._fail(
                    f"--broker-ssl-option: {item!r} is not key=value with a key of "
                    f"{', '.join(BROKER_SSL_FILES)}, cert_reqs, e.g. --broker-ssl-option ca_certs=/etc/ssl/broker-ca.pem"
                )
            elif key == "cert_reqs":
                value = value.lower().removeprefix("cert_")
                if value not in CERT_REQS:
                    self._fail(f"--broker-ssl-option: cert_reqs={value!r} is not one of {', '.join(CERT_REQS)}")
                options[key] = value
            elif not os.access(value, os.R_OK):
                self._fail(f"--broker-ssl-option: {key}={value!r} is not a readable file: check the path")
            else:
                options[key] = value
        return options

    def web_config(self, path: str | None) -> webconfig.WebConfig:
        if not path:
            return webconfig.WebConfig()
        try:
            return webconfig.load(path)
        except webconfig.WebConfigError as exc:
            self.problems.extend(exc.problems)
            return webconfig.WebConfig()


def _split_netloc_password(netloc: str) -> str | None:
    userinfo, at, _ = netloc.rpartition("@")
    if not at:
        return None
    _, colon, password = userinfo.partition(":")
    return password if colon and password else None


def url_secrets(url: str) -> tuple[str, ...]:
    secrets = []
    for part in url.split(";"):
        parts = urlsplit(part.strip())
        password = _split_netloc_password(parts.netloc)
        if password:
            secrets += [password, unquote(password)]
        for key, value in parse_qsl(parts.query):
            if key.lower() == "password" and value:
                secrets.append(value)
    # Longest first so a secret that contains another is scrubbed whole.
    return tuple(sorted(set(secrets), key=len, reverse=True))


def redact_url(url: str) -> str:
    """The URL with every password replaced by ***, safe for logs and labels."""
    redacted = []
    for part in url.split(";"):
        parts = urlsplit(part.strip())
        netloc = parts.netloc
        if _split_netloc_password(netloc):
            userinfo, _, hostport = netloc.rpartition("@")
            netloc = f"{userinfo.partition(':')[0]}:{REDACTED}@{hostport}"
        query = "&".join(
            f"{key}={REDACTED if key.lower() == 'password' else value}"
            for key, value in parse_qsl(parts.query, keep_blank_values=True)
        )
        redacted.append(parts._replace(netloc=netloc, query=query).geturl())
    return ";".join(redacted)


def redact(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    return text
