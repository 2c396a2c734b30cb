"""Validated, frozen configuration, and the redaction of broker secrets.

``Config.parse`` takes the raw strings the CLI (or env vars) gave for the
flags declared in options.py and either returns a Config or raises
ConfigError listing every problem at once, each as one line that names the fix.
"""

from __future__ import annotations

import json
import os
import ssl
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote, urlsplit

from . import options, webconfig
from .model import ModelSettings
from .options import BY_DEST, DEFAULT_PORT, OPTIONS

DEFAULT_STALL_TIMEOUT = 10.0
# filesystem: kombu's single-machine transport, used by celery-stalk demo
SUPPORTED_SCHEMES = ("redis", "rediss", "amqp", "amqps", "pyamqp", "filesystem")
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
    """Every serve flag, parsed: one field per option of options.py (its ``field``),
    the model's options gathered in ``model``."""

    broker_url: str
    listen_address: tuple[str, int]
    queues: tuple[str, ...]
    transport_options: dict
    task_routes: tuple[tuple[str, str], ...]  # (task name or glob, queue)
    broker_ssl: dict  # checked
    model: ModelSettings
    redbeat_key_prefix: str | None
    redbeat_url: str | None
    beat_refresh_interval: float
    events_stall_timeout: float
    queue_read_timeout: float
    queue_discovery_interval: float
    inspect_interval: float  # 0: off
    inspect_timeout: float
    rabbitmq_management_url: str | None  # without credentials (moved to user, password)
    rabbitmq_management_user: str | None
    rabbitmq_management_password: str | None  # the CLI reads the file flag into it
    rabbitmq_management_ca_file: str | None
    rabbitmq_management_interval: float
    rabbitmq_management_timeout: float
    task_metrics_source: str  # events | workers
    enable_events: float | None  # seconds between enable_events broadcasts; None: never
    web: webconfig.WebConfig
    web_max_connections: int
    web_max_client_connections: int
    web_read_timeout: float
    web_auth_max_concurrent: int
    web_auth_max_failures: int
    log_level: str
    log_format: str

    @property
    def listen_host(self) -> str:
        return self.listen_address[0]

    @property
    def listen_port(self) -> int:
        return self.listen_address[1]

    @property
    def web_limits(self) -> webconfig.WebLimits:
        return webconfig.WebLimits(self.web_max_connections, self.web_max_client_connections,
                                   self.web_read_timeout, self.web_auth_max_concurrent,
                                   self.web_auth_max_failures)

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
        """Strings that must never be printed: every password in the broker and RedBeat URLs,
        and the management API's."""
        found = url_secrets(";".join(filter(None, (self.broker_url, self.redbeat_url))))
        if self.rabbitmq_management_password:
            found = tuple(sorted({*found, self.rabbitmq_management_password}, key=len,
                                 reverse=True))
        return found

    @property
    def rabbitmq_management(self):
        """The management API's settings (brokers/management.py), or None without the URL.
        User and password default to the broker URL's."""
        if not self.rabbitmq_management_url:
            return None
        from .brokers.management import ManagementSettings, vhost_of

        broker = urlsplit(self.broker_url.split(";")[0].strip())
        return ManagementSettings(
            url=self.rabbitmq_management_url,
            vhost=vhost_of(self.broker_url),
            user=self.rabbitmq_management_user or unquote(broker.username or "guest"),
            password=(self.rabbitmq_management_password
                      if self.rabbitmq_management_password is not None
                      else unquote(broker.password or "guest")),
            ca_file=self.rabbitmq_management_ca_file,
            timeout=self.rabbitmq_management_timeout,
            interval=self.rabbitmq_management_interval,
        )

    @classmethod
    def parse(cls, **raw) -> Config:
        """Raw flag values (keyword names are the flags': --broker-url -> broker_url;
        strings, tuples of strings for repeatable flags) into a Config. A flag not
        given takes its default. Raises ConfigError listing every problem at once."""
        unknown = set(raw) - set(BY_DEST)
        if unknown:
            raise TypeError(f"unknown options: {', '.join(sorted(unknown))}")
        problems: list[str] = []
        parser = Parser(problems)
        values = {}
        for option in OPTIONS:
            given = raw.get(option.dest)
            if given is None or given == "":
                given = () if option.repeatable else option.default
            values[option.field] = getattr(parser, option.kind)(option, given)
        values.pop("broker_url_file")  # read by the CLI into broker_url
        values.pop("rabbitmq_management_password_file")  # and into rabbitmq_management_password
        model = ModelSettings(**{o.field: values.pop(o.field) for o in OPTIONS if o.model})
        parser.cross_checks(values, model)
        if problems:
            raise ConfigError(problems)
        return cls(model=model, **values)


class Parser:
    """Parses one flag at a time, collecting problems instead of stopping at the first.

    One method per option kind (options.Option.kind); each takes the option and
    its raw value (None when not given and without a default) and returns the
    parsed value, or a harmless stand-in after noting the problem.
    """

    def __init__(self, problems: list[str]):
        self.problems = problems

    def _fail(self, message: str):
        self.problems.append(message)

    def broker_url(self, option, raw: str | None) -> str:
        if not raw:
            self._fail(
                "no broker: pass --broker-url redis://host:6379/0 (or amqp://...) "
                "or set CELERY_STALK_BROKER_URL"
            )
            return ""
        self.problems.extend(broker_url_problems(raw))
        return raw.strip()

    def file(self, option, raw: str | None) -> str | None:
        return raw

    def text(self, option, raw: str | None) -> str | None:
        return raw.strip() or None if raw is not None else None

    def seconds(self, option, raw: str | None) -> float | None:
        if raw is None:
            return None
        try:
            return options.seconds(raw)
        except (TypeError, ValueError):
            flag = f"--{option.flag}"
            self._fail(f"{flag}: {raw!r} is not a positive number of seconds, e.g. {flag} 30")
            return 1.0

    def interval(self, option, raw: str) -> float:
        try:
            return options.interval(raw)
        except (TypeError, ValueError):
            flag = f"--{option.flag}"
            self._fail(f"{flag}: {raw!r} is not a number of seconds >= 0 (0: off), e.g. {flag} 60")
            return 0.0

    def count(self, option, raw: str) -> int:
        minimum = option.arg or 1
        try:
            return options.count(raw, minimum)
        except (TypeError, ValueError):
            flag = f"--{option.flag}"
            self._fail(f"{flag}: {raw!r} is not a whole number >= {minimum}, e.g. {flag} 1000")
            return minimum

    def choice(self, option, raw: str) -> str:
        value = raw.lower()
        if value not in option.arg:
            self._fail(f"--{option.flag}: {raw!r} is not one of {', '.join(option.arg)}")
            return option.arg[0]
        return value

    def address(self, option, raw: str) -> tuple[str, int]:
        fix = "use host:port, e.g. --listen-address 0.0.0.0:9808 or [::]:9808"
        host, sep, port_text = (raw or "").rpartition(":")
        if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
            self._fail(f"--listen-address: {raw!r} is not a valid address: {fix}")
            return "0.0.0.0", DEFAULT_PORT
        host = host.strip("[]") or "0.0.0.0"
        return host, int(port_text)

    def buckets(self, option, raw: str) -> tuple[float, ...]:
        try:
            return options.buckets(raw)
        except ValueError:
            flag = f"--{option.flag}"
            self._fail(
                f"{flag}: {raw!r} must be comma-separated increasing positive seconds, "
                f"e.g. {flag} 0.1,1,10,60,600,3600"
            )
            return options.buckets(option.default)

    def names(self, option, raw: tuple[str, ...]) -> tuple[str, ...]:
        names: list[str] = []
        for item in raw:
            for name in item.split(","):
                name = name.strip()
                if name and name not in names:
                    names.append(name)
        return tuple(names)

    def routes(self, option, raw: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
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

    def transport_options(self, option, raw: tuple[str, ...]) -> dict:
        parsed = {}
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
                parsed[key] = json.loads(value)
            except ValueError:
                parsed[key] = value  # a bare string such as sep=: needs no quotes
        return parsed

    def broker_ssl(self, option, raw: tuple[str, ...]) -> dict:
        parsed = {}
        for item in raw:
            key, sep, value = (part.strip() for part in item.partition("="))
            if not sep or not value or key not in BROKER_SSL_FILES + ("cert_reqs",):
                self._fail(
                    f"--broker-ssl-option: {item!r} is not key=value with a key of "
                    f"{', '.join(BROKER_SSL_FILES)}, cert_reqs, "
                    "e.g. --broker-ssl-option ca_certs=/etc/ssl/broker-ca.pem"
                )
            elif key == "cert_reqs":
                value = value.lower().removeprefix("cert_")
                if value not in CERT_REQS:
                    self._fail(f"--broker-ssl-option: cert_reqs={value!r} is not one of "
                               f"{', '.join(CERT_REQS)}")
                parsed[key] = value
            elif not os.access(value, os.R_OK):
                self._fail(f"--broker-ssl-option: {key}={value!r} is not a readable file: check the path")
            else:
                parsed[key] = value
        return parsed

    def web_config(self, option, path: str | None) -> webconfig.WebConfig:
        if not path:
            return webconfig.WebConfig()
        try:
            return webconfig.load(path)
        except webconfig.WebConfigError as exc:
            self.problems.extend(exc.problems)
            return webconfig.WebConfig()

    def cross_checks(self, values: dict, model: ModelSettings) -> None:
        """What no single flag can tell: flags that must agree with each other."""
        given_stall = values["events_stall_timeout"]
        if given_stall is None:  # well before a silent fleet would be reported lost
            values["events_stall_timeout"] = min(DEFAULT_STALL_TIMEOUT, model.worker_timeout / 2)
        worker_timeout_ok = not any(p.startswith("--worker-timeout") for p in self.problems)
        if values["events_stall_timeout"] >= model.worker_timeout and worker_timeout_ok:
            self._fail(
                f"--events-stall-timeout: {given_stall:g} must be shorter than --worker-timeout "
                f"({model.worker_timeout:g}), or a lost subscription would report every worker lost first"
            )
        url = values["broker_url"]
        self._redbeat(values)
        self._rabbitmq_management(values)
        if values["broker_ssl"] and url and urlsplit(url).scheme not in TLS_SCHEMES:
            self._fail(
                "--broker-ssl-option: the broker URL is not a TLS one: use rediss:// or amqps://"
            )

    def _rabbitmq_management(self, values: dict) -> None:
        """The management API: a RabbitMQ broker, an http(s) URL, a readable CA file.
        Credentials written into the URL move to the user and password."""
        url = values["rabbitmq_management_url"]
        ca_file = values["rabbitmq_management_ca_file"]
        if not url:
            given = [flag for flag, value in (("user", values["rabbitmq_management_user"]),
                                               ("password", values["rabbitmq_management_password"]),
                                               ("ca-file", ca_file)) if value]
            if given:
                self._fail(f"--rabbitmq-management-{given[0]}: used only with "
                           "--rabbitmq-management-url: add --rabbitmq-management-url "
                           "http://rabbitmq:15672")
            return
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            self._fail(f"--rabbitmq-management-url: {redact_url(url)!r} is not an http(s) URL: "
                       "use http://rabbitmq:15672 (or https://)")
            return
        broker = (values["broker_url"] or "").split(";")[0].strip()
        if broker and urlsplit(broker).scheme not in ("amqp", "amqps", "pyamqp"):
            self._fail("--rabbitmq-management-url: the broker is not RabbitMQ: drop the flag, "
                       "or give an amqp:// --broker-url")
        if parts.username is not None:  # kept out of the URL, which may be logged
            values["rabbitmq_management_user"] = (values["rabbitmq_management_user"]
                                                  or unquote(parts.username))
            if parts.password is not None and values["rabbitmq_management_password"] is None:
                values["rabbitmq_management_password"] = unquote(parts.password)
            hostport = parts.netloc.rpartition("@")[2]
            values["rabbitmq_management_url"] = parts._replace(netloc=hostport).geturl()
        if ca_file and parts.scheme != "https":
            self._fail("--rabbitmq-management-ca-file: the management URL is not https://")
        elif ca_file and not os.access(ca_file, os.R_OK):
            self._fail(f"--rabbitmq-management-ca-file: {ca_file!r} is not a readable file: "
                       "check the path")

    def _redbeat(self, values: dict) -> None:
        """RedBeat's keys are in Redis: its URL, from the flag or else the broker's."""
        prefix, url = values["redbeat_key_prefix"], values["redbeat_url"]
        if url and not prefix:
            self._fail("--redbeat-url: RedBeat is read only with --redbeat-key-prefix: "
                       "add --redbeat-key-prefix redbeat: (RedBeat's default)")
            return
        if not prefix:
            return
        if not url:
            broker = (values["broker_url"] or "").split(";")[0].strip()
            if urlsplit(broker).scheme not in ("redis", "rediss"):
                self._fail("--redbeat-key-prefix: the broker is not Redis: name RedBeat's Redis "
                           "with --redbeat-url redis://host:6379/0")
                return
            values["redbeat_url"] = broker
        elif urlsplit(url).scheme not in ("redis", "rediss"):
            self._fail(f"--redbeat-url: {redact_url(url)!r} is not a Redis URL: "
                       "use redis://host:6379/0 or rediss://")


def broker_url_problems(broker_url: str) -> list[str]:
    """Why a --broker-url (one URL, or a failover list separated by ;) would not reach the
    broker meant, one line each that names the fix; empty when it is fine.

    kombu takes some URLs without a word and then talks to something else: a database
    that is not a number becomes database 0, a failover list is consumed with the first
    URL's transport and database whatever the others say. The URL in a message has its
    password redacted.
    """
    urls = [url.strip() for url in broker_url.split(";") if url.strip()]
    problems: list[str] = []
    schemes: list[str] = []
    databases: list[str] = []
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in SUPPORTED_SCHEMES:
            return [
                f"--broker-url: scheme {parts.scheme or '(none)'!r} is not supported: "
                f"use one of {', '.join(s + '://' for s in SUPPORTED_SCHEMES)}"
            ]
        schemes.append(parts.scheme)
        if parts.scheme == "filesystem":
            continue
        try:
            _ = parts.port  # raises on a port that is not a number, or out of range
        except ValueError:
            port = parts.netloc.rpartition("@")[2].rpartition(":")[2]
            example = "host:6379/0" if parts.scheme.startswith("redis") else "host:5672//"
            problems.append(
                f"--broker-url: port {port!r} in {redact_url(url)} is not a port number "
                f"(1-65535): write host:port, as in {parts.scheme}://{example}"
            )
        if parts.scheme.startswith("redis"):
            database = parts.path.strip("/") or "0"
            if not (database.isascii() and database.isdigit()):
                problems.append(
                    f"--broker-url: database {database!r} in {redact_url(url)} is not a "
                    f"number: name it by number, as in {parts.scheme}://host:6379/0"
                )
            databases.append(database)
    if len(set(schemes)) > 1:
        mixed = " and ".join(dict.fromkeys(scheme + "://" for scheme in schemes))
        problems.append(
            f"--broker-url: the failover URLs mix {mixed}: every URL of a failover list "
            "must use the same scheme"
        )
    elif len(set(databases)) > 1:
        problems.append(
            f"--broker-url: the failover URLs name different databases "
            f"({', '.join(dict.fromkeys(databases))}): the workers use one; name it in every URL"
        )
    return problems


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
