"""Every flag of ``celery-stalk serve``, declared once.

The click options (cli.py, celery_command.py), the CELERY_STALK_* environment
variables, the fields of Config (config.py), the defaults of ModelSettings and
the README's flag table are all made from OPTIONS. A default is written here
and nowhere else, as the user would type it, and goes through the same parser
as a typed value.

Plain data: no click, no I/O, so the pure model can read its defaults here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

ENV_PREFIX = "CELERY_STALK"
DEFAULT_PORT = 9808
DEFAULT_BUCKETS = "0.01,0.05,0.1,0.25,0.5,1,2.5,5,10,30,60,120,300,600,1800,3600"
WORKFLOW_BUCKETS = "0.1,0.5,1,2.5,5,10,30,60,120,300,600,1800,3600,7200,21600,86400"


@dataclass(frozen=True)
class Option:
    flag: str  # without the leading dashes
    help: str
    # How config.Parser reads the raw value: the name of one of its methods.
    kind: str
    default: str | None = None  # as typed on the command line; None: not set
    repeatable: bool = False
    # Extra argument for the parser (the choices of a choice, a count's minimum).
    arg: object = None
    # Where the parsed value goes: a ModelSettings field (model=True) or a
    # Config field, named ``name`` or else after the flag.
    model: bool = False
    name: str | None = None

    @property
    def dest(self) -> str:
        """The keyword of Config.parse and of the click command: the flag's name."""
        return self.flag.replace("-", "_")

    @property
    def field(self) -> str:
        return self.name or self.dest

    @property
    def env_var(self) -> str:
        return f"{ENV_PREFIX}_{self.dest.upper()}"


OPTIONS: tuple[Option, ...] = (
    Option("broker-url", "Celery broker URL (redis://, rediss://, amqp://, amqps://).", "broker_url"),
    Option("broker-url-file", "Read the broker URL from this file (keeps the password out of the "
           "process list and the environment).", "file"),
    Option("listen-address", "host:port to serve /metrics on.", "address", f"0.0.0.0:{DEFAULT_PORT}"),
    Option("queue", "Queue always reported, even with no workers or events (repeatable, or "
           "comma-separated).", "names", repeatable=True, name="queues"),
    Option("broker-transport-option", "key=value (JSON value) passed to kombu and honoured by the "
           "queue reader: priority_steps, sep, global_keyprefix (repeatable).", "transport_options",
           repeatable=True, name="transport_options"),
    Option("task-route", "task=queue: the queue label of tasks whose task-sent event was not seen; "
           "task may be a glob with * as in Celery's task_routes (repeatable, or comma-separated).",
           "routes", repeatable=True, name="task_routes"),
    Option("broker-ssl-option", "key=value for TLS to the broker (rediss://, amqps://), used by the "
           "event consumer and the queue reader: ca_certs, certfile, keyfile (PEM files), cert_reqs "
           "(required, the default; optional; none) (repeatable).", "broker_ssl", repeatable=True,
           name="broker_ssl"),
    Option("worker-timeout", "Seconds without a heartbeat before a worker is reported down. Each "
           "worker gets at least 2.5 of its own heartbeat intervals (5 s at Celery's default 2 s), "
           "so a value below that applies only to workers that heartbeat faster.", "seconds", "20",
           model=True),
    Option("worker-ttl", "Seconds after which a down worker's series are forgotten; fleet totals "
           "are kept.", "seconds", "900", model=True),
    Option("max-tracked-tasks", "Tasks in flight kept to join events on the task id.", "count",
           "100000", arg=2, model=True),
    Option("runtime-buckets", "Comma-separated histogram bounds (seconds) for "
           "celery_task_runtime_seconds.", "buckets", DEFAULT_BUCKETS, model=True),
    Option("wait-buckets", "Comma-separated histogram bounds (seconds) for "
           "celery_task_queue_wait_seconds.", "buckets", DEFAULT_BUCKETS, model=True),
    Option("max-task-names", "Distinct task names before new ones are reported as \"other\".",
           "count", "1000", model=True),
    Option("max-queues", "Distinct queues before new ones are reported as \"other\".", "count",
           "500", model=True),
    Option("max-exceptions", "Distinct exception types before new ones are reported as \"other\".",
           "count", "500", model=True),
    Option("label-ttl", "Seconds a task name, queue or exception type must have been idle before "
           "it may be forgotten (its series dropped) to make room for a new one once its cap "
           "(--max-task-names, --max-queues, --max-exceptions) is full.", "seconds", "86400",
           model=True),
    Option("max-workers", "Distinct workers tracked at once; past it, a new worker takes the "
           "place of the one down longest, else of the one heard from least recently.", "count",
           "2000", model=True),
    Option("workflow-settle", "Seconds none of a workflow's tasks (those sharing a root_id) must be "
           "in flight before it counts as finished: a chain's next step or a chord's callback can "
           "arrive after the task that sent it finished.", "seconds", "30", model=True),
    Option("max-workflows", "Open workflows followed at once; past it the oldest is dropped and "
           "counted in celery_stalk_workflows_evicted_total.", "count", "10000", model=True),
    Option("workflow-buckets", "Comma-separated histogram bounds (seconds) for "
           "celery_workflow_duration_seconds.", "buckets", WORKFLOW_BUCKETS, model=True),
    Option("beat-grace", "Seconds past its due time after which a periodic task that was not "
           "sent counts as a missed run.", "seconds", "60", model=True),
    Option("max-beat-entries", "Beat entries with series of their own; the others are summed "
           "under entry=\"other\".", "count", "1000", model=True),
    Option("redbeat-key-prefix", "Read the beat schedule from RedBeat's keys in Redis under this "
           "prefix (RedBeat's default is redbeat:), without the app. celery -A proj stalk sets it "
           "when the app's beat_scheduler is RedBeat.", "text"),
    Option("redbeat-url", "Redis URL of RedBeat's keys (its redbeat_redis_url); default: the "
           "broker URL.", "text"),
    Option("beat-refresh-interval", "Seconds between reads of RedBeat's schedule.", "seconds", "30"),
    Option("events-stall-timeout", "Seconds without any event, while workers are up, after which the "
           "event consumer takes its subscription for silently lost (half-open connection, broker "
           "failover) and reconnects. Must be shorter than --worker-timeout; default: half of it, "
           "at most 10.", "seconds"),
    Option("queue-read-timeout", "Seconds a queue depth read may take before the scrape reports "
           "celery_stalk_broker_up 0.", "seconds", "2"),
    Option("queue-discovery-interval", "Seconds between scans for queues the broker knows "
           "(Redis bindings).", "seconds", "60"),
    Option("inspect-interval", "Seconds between Celery inspect stats broadcasts, which give each "
           "worker's pool size (celery_worker_concurrency) and prefetch count; 0: never ask. Run "
           "on a loop of their own: scrapes serve the last answer.", "interval", "60"),
    Option("inspect-timeout", "Seconds an inspect stats broadcast waits for the workers' replies "
           "(a worker slower than that is missing from that round).", "seconds", "5"),
    Option("rabbitmq-management-url", "Base URL of RabbitMQ's management API (http://host:15672 "
           "or https://): report every queue of the broker URL's vhost, with unacknowledged "
           "messages and consumer utilisation, from one poll on a loop of its own instead of a "
           "passive declare per queue. RabbitMQ brokers only.", "text"),
    Option("rabbitmq-management-user", "User for the management API; default: the broker URL's.",
           "text"),
    Option("rabbitmq-management-password", "Password for the management API; default: the broker "
           "URL's. Set it through the environment variable or "
           "--rabbitmq-management-password-file, not on the command line.", "text"),
    Option("rabbitmq-management-password-file", "Read the management API's password from this "
           "file.", "file"),
    Option("rabbitmq-management-ca-file", "PEM file of the CA that signed the management API's "
           "certificate (https://); default: the system's CAs.", "text"),
    Option("rabbitmq-management-interval", "Seconds between polls of the management API.",
           "seconds", "15"),
    Option("rabbitmq-management-timeout", "Seconds one request to the management API may take "
           "before the poll counts as failed.", "seconds", "5"),
    Option("task-metrics-source", "events: count task metrics from Celery task events; workers: "
           "the workers serve them (celery_stalk.worker.install), so task events are not counted "
           "here and nothing is counted twice; queue depth and the worker view stay.", "choice",
           "events", arg=("events", "workers")),
    Option("enable-events", "Every this many seconds, broadcast enable_events to the workers "
           "(Celery remote control, over --broker-url), turning their task events on. A stopgap "
           "for workers started without -E: it lasts until a worker restarts, and cannot turn on "
           "the producers' task-sent events. Default: off.", "seconds"),
    Option("web-config-file", "YAML file that turns on TLS and basic auth for the HTTP endpoints "
           "(the Prometheus exporter-toolkit format: tls_server_config, basic_auth_users).",
           "web_config", name="web"),
    # What a client may cost the HTTP server (httpserver.py, webconfig.BasicAuth).
    Option("web-max-connections", "HTTP connections open at once; past it new ones wait in the "
           "listen backlog, and one still sending its request after 0.25 s is closed to make room.",
           "count", "256"),
    Option("web-max-client-connections", "HTTP connections open at once from one client address "
           "(IPv6: one /64); past it new ones are refused (503).", "count", "16"),
    Option("web-read-timeout", "Seconds a client has for the TLS handshake and its whole request "
           "head (at most 16 KiB) before the connection is closed.", "seconds", "5"),
    Option("web-auth-max-concurrent", "Basic auth password checks (bcrypt) run at once; others "
           "wait up to 2 s, then get 429.", "count", "2"),
    Option("web-auth-max-failures", "Wrong basic auth passwords a client address may send per "
           "minute; past it, 429 without checking.", "count", "10"),
    Option("log-level", "debug, info, warning or error.", "choice", "info",
           arg=("debug", "info", "warning", "error")),
    Option("log-format", "text or json.", "choice", "text", arg=("text", "json")),
)

BY_DEST = {option.dest: option for option in OPTIONS}


# Values of the simple kinds. Each raises ValueError on a bad value; config.Parser
# turns that into a line that names the fix.


def seconds(text: str) -> float:
    value = float(text)
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(text)
    return value


def count(text: str, minimum: int = 1) -> int:
    value = int(text)
    if value < minimum:
        raise ValueError(text)
    return value


def buckets(text: str) -> tuple[float, ...]:
    values = tuple(float(part) for part in text.split(",") if part.strip())
    ok = (
        values
        and all(v > 0 and math.isfinite(v) for v in values)
        and all(a < b for a, b in zip(values, values[1:]))
    )
    if not ok:
        raise ValueError(text)
    return values


def interval(text: str) -> float:
    """Seconds between runs of something that can be turned off: 0 is off."""
    value = float(text)
    if not (value >= 0 and math.isfinite(value)):
        raise ValueError(text)
    return value


SIMPLE_KINDS = {"seconds": seconds, "count": count, "buckets": buckets, "interval": interval}


def default(dest: str):
    """The parsed default of a simple option (for ModelSettings)."""
    option = BY_DEST[dest]
    parse = SIMPLE_KINDS[option.kind]
    if option.kind == "count" and option.arg is not None:
        return parse(option.default, option.arg)
    return parse(option.default)


def flags_markdown() -> str:
    """The README's flag table."""
    rows = ["| flag | env var | default | meaning |", "| --- | --- | --- | --- |"]
    for option in OPTIONS:
        shown = f"`{option.default}`" if option.default else "—"
        rows.append(f"| `--{option.flag}` | `{option.env_var}` | {shown} | {option.help} |")
    return "\n".join(rows)
