"""Command line: flags and CELERY_STALK_* env vars in, a Config out. No logic here."""

from __future__ import annotations

import sys

import click

from . import __version__
from .config import DEFAULT_PORT, ConfigError, Config

ENV_PREFIX = "CELERY_STALK"

# (flag, help, default, repeatable). Values stay strings: Config.parse checks
# them all at once and names the fix for each bad one.
SERVE_OPTIONS = [
    ("broker-url", "Celery broker URL (redis://, rediss://, amqp://, amqps://).", None, False),
    ("broker-url-file", "Read the broker URL from this file (keeps the password out of the "
     "process list and the environment).", None, False),
    ("listen-address", "host:port to serve /metrics on.", f"0.0.0.0:{DEFAULT_PORT}", False),
    ("queue", "Queue always reported, even with no workers or events (repeatable, or "
     "comma-separated).", None, True),
    ("broker-transport-option", "key=value (JSON value) passed to kombu and honoured by the "
     "queue reader: priority_steps, sep, global_keyprefix (repeatable).", None, True),
    ("task-route", "task=queue: the queue label of tasks whose task-sent event was not seen; "
     "task may be a glob with * as in Celery's task_routes (repeatable, or comma-separated).",
     None, True),
    ("broker-ssl-option", "key=value for TLS to the broker (rediss://, amqps://), used by the "
     "event consumer and the queue reader: ca_certs, certfile, keyfile (PEM files), cert_reqs "
     "(required, the default; optional; none) (repeatable).", None, True),
    ("worker-timeout", "Seconds without a heartbeat before a worker is reported down "
     "(at least 2.5 of the worker's heartbeat intervals).", "20", False),
    ("worker-ttl", "Seconds after which a down worker's series are forgotten; fleet totals "
     "are kept.", "900", False),
    ("max-tracked-tasks", "Tasks in flight kept to join events on the task id.", "100000", False),
    ("runtime-buckets", "Comma-separated histogram bounds (seconds) for "
     "celery_task_runtime_seconds.", "", False),
    ("wait-buckets", "Comma-separated histogram bounds (seconds) for "
     "celery_task_queue_wait_seconds.", "", False),
    ("max-task-names", "Distinct task names before new ones are reported as \"other\".", "1000", False),
    ("max-queues", "Distinct queues before new ones are reported as \"other\".", "500", False),
    ("max-exceptions", "Distinct exception types before new ones are reported as \"other\".",
     "500", False),
    ("max-workers", "Distinct workers tracked at once.", "2000", False),
    ("events-stall-timeout", "Seconds without any event, while workers are up, after which the "
     "event consumer takes its subscription for silently lost (half-open connection, broker "
     "failover) and reconnects. Must be shorter than --worker-timeout; default: half of it, "
     "at most 10.", None, False),
    ("queue-read-timeout", "Seconds a queue depth read may take before the scrape reports "
     "celery_stalk_broker_up 0.", "2", False),
    ("queue-discovery-interval", "Seconds between scans for queues the broker knows "
     "(Redis bindings).", "60", False),
    ("web-config-file", "YAML file that turns on TLS and basic auth for the HTTP endpoints "
     "(the Prometheus exporter-toolkit format: tls_server_config, basic_auth_users).", None, False),
    ("log-level", "debug, info, warning or error.", "info", False),
    ("log-format", "text or json.", "text", False),
]


def env_var(flag: str) -> str:
    return f"{ENV_PREFIX}_{flag.upper().replace('-', '_')}"


def serve_options(command):
    """The serve flags, each with its env var; shared with ``celery stalk``."""
    for flag, help_text, default, repeatable in reversed(SERVE_OPTIONS):
        command = click.option(
            f"--{flag}",
            envvar=env_var(flag),
            default=() if repeatable else default,
            multiple=repeatable,
            show_envvar=True,
            show_default=bool(default),
            help=help_text,
        )(command)
    return command


class OneLineErrors(click.Group):
    """Usage errors as one line that names the fix, not a usage dump."""

    def main(self, *args, **kwargs):
        kwargs["standalone_mode"] = False
        try:
            return super().main(*args, **kwargs)
        except click.exceptions.Abort:
            sys.exit(130)
        except click.ClickException as exc:
            hint = "" if "--help" in exc.format_message() else " (see celery-stalk serve --help)"
            click.echo(f"celery-stalk: error: {exc.format_message()}{hint}", err=True)
            sys.exit(exc.exit_code)


@click.group(cls=OneLineErrors)
@click.version_option(__version__, prog_name="celery-stalk")
def main():
    """Prometheus exporter for Celery: task, queue and worker metrics from events and the broker."""


@main.command()
@serve_options
def serve(**raw):
    """Consume Celery events and serve Prometheus metrics."""
    run_with(raw)


def run_with(raw: dict) -> None:
    """Parse the raw flag values into a Config and run the exporter; exits."""
    problems = []
    url_file = raw.pop("broker_url_file")
    if url_file:
        try:
            with open(url_file, encoding="utf-8") as handle:
                raw["broker_url"] = handle.read().strip()
        except OSError as exc:
            problems.append(f"--broker-url-file: cannot read {url_file!r}: {exc.strerror}")
    try:
        config = Config.parse(**raw)
    except ConfigError as exc:
        problems += exc.problems
    if problems:
        for problem in problems:
            click.echo(f"celery-stalk: error: {problem}", err=True)
        sys.exit(2)

    from .app import run  # imported late: --help and bad flags stay fast

    sys.exit(run(config))


@main.command()
@click.option("--port", type=click.IntRange(1, 65535), default=DEFAULT_PORT, show_default=True,
              help="Port of the exporter's /metrics, on 127.0.0.1.")
@click.option("--duration", type=click.FloatRange(0, min_open=True), default=None,
              help="Stop after this many seconds of traffic (default: run until Ctrl-C).")
def demo(port, duration):
    """Run a sample Celery workload with the exporter and show a live summary.

    Needs nothing installed: it starts redis-server if one is on PATH, else uses
    kombu's filesystem transport in a temp dir.
    """
    from .demo.run import run_demo

    sys.exit(run_demo(port, duration))


@main.command("hash-password")
def hash_password():
    """Read a password (prompted, or from stdin) and print its bcrypt hash for basic_auth_users."""
    if sys.stdin.isatty():
        password = click.prompt("password", hide_input=True, confirmation_prompt=True)
    else:
        password = sys.stdin.readline().rstrip("\n")
    if not password:
        raise click.UsageError("empty password: type one, or pipe it in")
    from .webconfig import hash_password as bcrypt_hash

    click.echo(bcrypt_hash(password))


def flags_markdown() -> str:
    """The README's flag table, generated from SERVE_OPTIONS."""
    rows = ["| flag | env var | default | meaning |", "| --- | --- | --- | --- |"]
    for flag, help_text, default, repeatable in SERVE_OPTIONS:
        shown = f"`{default}`" if default else "—"
        more = " Repeatable." if repeatable and "repeatable" not in help_text else ""
        rows.append(f"| `--{flag}` | `{env_var(flag)}` | {shown} | {help_text}{more} |")
    return "\n".join(rows)


@main.command()
@click.option("--flags", is_flag=True, help="Print the flag table instead.")
def catalog(flags):
    """Print the metric catalog (or the flag table) as Markdown, as in the README."""
    from .collectors import catalog_markdown

    click.echo(flags_markdown() if flags else catalog_markdown())


from .mixin.command import mixin  # noqa: E402  (its own module: rules and dashboards)

main.add_command(mixin)

if __name__ == "__main__":
    main()
