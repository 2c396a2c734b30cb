"""Command line: flags and CELERY_STALK_* env vars (declared in options.py) in, a Config out.
No logic here."""

from __future__ import annotations

import sys

import click

from . import __version__
from .config import Config, ConfigError
from .options import DEFAULT_PORT, OPTIONS


def serve_options(command):
    """The serve flags (options.py), each with its env var; shared with ``celery stalk``.

    Values stay strings: Config.parse checks them all at once and names the fix
    for each bad one.
    """
    for option in reversed(OPTIONS):
        command = click.option(
            f"--{option.flag}",
            envvar=option.env_var,
            default=() if option.repeatable else option.default,
            multiple=option.repeatable,
            show_envvar=True,
            show_default=bool(option.default),
            help=option.help,
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


def run_with(raw: dict, **run_options) -> None:
    """Parse the raw flag values into a Config and run the exporter (app.run, with
    ``run_options``: the app's beat schedule); exits."""
    config = parse_config(raw)

    from .app import run  # imported late: --help and bad flags stay fast

    sys.exit(run(config, **run_options))


def parse_config(raw: dict) -> Config:
    """The raw flag values as a Config; exits 2 naming every bad one."""
    problems = []
    # Secrets kept out of the process list: each file flag read into its value's flag.
    for file_flag, dest in (("broker_url_file", "broker_url"),
                            ("rabbitmq_management_password_file", "rabbitmq_management_password")):
        path = raw.pop(file_flag, None)
        if path:
            try:
                with open(path, encoding="utf-8") as handle:
                    raw[dest] = handle.read().strip()
            except OSError as exc:
                problems.append(f"--{file_flag.replace('_', '-')}: cannot read {path!r}: "
                                f"{exc.strerror}")
    try:
        config = Config.parse(**raw)
    except ConfigError as exc:
        problems += exc.problems
    if problems:
        for problem in problems:
            click.echo(f"celery-stalk: error: {problem}", err=True)
        sys.exit(2)
    return config


def doctor_options(command):
    """``doctor``'s own flags, besides the serve flags it shares (``celery stalk doctor`` too)."""
    command = click.option("--format", "output", type=click.Choice(["text", "json"]),
                           default="text", show_default=True,
                           help="text for a terminal, json for scripts.")(command)
    return click.option("--listen", "listen", type=click.FloatRange(1, 600), default=15.0,
                        show_default=True, help="Seconds to listen to the event stream.")(command)


@main.command()
@doctor_options
@serve_options
def doctor(listen, output, **raw):
    """Listen to the broker for a while and print a checklist of what is wrong and how to
    fix it: broker, event stream, each worker (task events, heartbeat, clock), task-sent
    events, queues. Exit status 0: all well; 1: something to fix; 2: broker unreachable."""
    run_doctor_with(raw, listen, output)


def run_doctor_with(raw: dict, listen: float, output: str) -> None:
    config = parse_config(raw)
    from .doctor import run_doctor

    sys.exit(run_doctor(config, listen, output))


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

    try:
        click.echo(bcrypt_hash(password))
    except ValueError as exc:  # longer than bcrypt takes
        raise click.UsageError(str(exc)) from None


@main.command()
@click.option("--flags", is_flag=True, help="Print the flag table instead.")
@click.option("--worker", is_flag=True, help="Print the instrumented workers' own metrics instead.")
def catalog(flags, worker):
    """Print the metric catalog (or the flag table) as Markdown, as in the README."""
    from .collectors.catalog import catalog_markdown
    from .options import flags_markdown

    if worker:
        from .worker.catalog import WORKER_CATALOG

        click.echo(catalog_markdown(WORKER_CATALOG))
        return
    click.echo(flags_markdown() if flags else catalog_markdown())


from .mixin.command import mixin  # noqa: E402  (its own module: rules and dashboards)

main.add_command(mixin)

if __name__ == "__main__":
    main()
