"""``celery -A proj stalk``: the exporter configured from the user's own Celery app.

Celery's CLI loads commands from the ``celery.commands`` entry point group and
hands them the loaded app as ``ctx.obj.app``. This command takes the broker
URL, broker transport options, queues, static task routes and the beat
schedule (beat_schedule, or RedBeat's keys when beat runs RedBeat) from it, so
a project with an app needs no flags. A flag or CELERY_STALK_* env var given
explicitly still wins over what the app says.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import click
from celery.bin.base import CLIContext
from click.core import ParameterSource

from .cli import doctor_options, run_doctor_with, run_with, serve_options
from .schedules import entries_from_app, redbeat_from_app


def broker_url(app) -> str:
    """The URL the app's consumers read from, failover alternatives included."""
    url = app.conf.broker_read_url  # honours CELERY_BROKER_URL and `celery -b`
    if isinstance(url, (list, tuple)):
        return ";".join(url)
    if url:
        return url
    return app.connection_for_read().as_uri(include_password=True)  # Celery's default broker


def transport_options(app) -> tuple[str, ...]:
    """broker_transport_options as key=JSON flag values; values JSON cannot carry are left out."""
    options = []
    for key, value in (app.conf.broker_transport_options or {}).items():
        try:
            options.append(f"{key}={json.dumps(value)}")
        except (TypeError, ValueError):
            click.echo(f"celery stalk: broker_transport_options[{key!r}] is not plain data; "
                       "left out", err=True)
    return tuple(options)


def queues(app) -> tuple[str, ...]:
    """The app's declared queues (task_queues, or else task_default_queue)."""
    return tuple(app.amqp.queues)


def task_routes(app) -> tuple[str, ...]:
    """Static routes from task_routes as task=queue flag values.

    Dicts (or lists of pairs) mapping a task name or glob to a queue name or
    to {"queue": ...} are followed. Router functions and regex keys decide per
    call and cannot be followed statically: their tasks fall back to the other
    ways of finding the queue (see README, "Which queue").
    """
    setting = app.conf.task_routes
    if setting is None:
        return ()
    routers = setting if isinstance(setting, (list, tuple)) else (setting,)
    routes, skipped = [], 0
    for router in routers:
        if isinstance(router, Mapping):
            pairs = list(router.items())
        elif isinstance(router, (list, tuple)):
            pairs = [pair for pair in router if isinstance(pair, (list, tuple)) and len(pair) == 2]
            skipped += len(router) - len(pairs)
        else:  # a router function or the dotted path of one
            skipped += 1
            continue
        for pattern, route in pairs:
            queue = _queue_name(route)
            if isinstance(pattern, str) and queue:
                routes.append(f"{pattern}={queue}")
            else:
                skipped += 1
    if skipped:
        click.echo(f"celery stalk: {skipped} task route(s) are router functions, regexes or have "
                   "no queue: not followed", err=True)
    return tuple(routes)


def _queue_name(route) -> str | None:
    if isinstance(route, Mapping):
        route = route.get("queue")
    name = getattr(route, "name", route)  # a kombu Queue or its name
    return name if isinstance(name, str) and name else None


FROM_APP = {
    "broker_url": broker_url,
    "broker_transport_option": transport_options,
    "queue": queues,
    "task_route": task_routes,
}


@click.group(invoke_without_command=True)
@serve_options
@click.pass_context
def stalk(ctx: click.Context, **raw):
    """Run celery-stalk with this app's broker, transport options, queues and routes
    (``stalk doctor``: check the setup instead).

    A flag or CELERY_STALK_* env var given explicitly overrides what the app says.
    """
    if ctx.invoked_subcommand is not None:
        return
    app = ctx.obj.app
    from_app(ctx, app, raw)
    run_with(raw, **beat_schedule(ctx, app, raw))


@stalk.command()
@doctor_options
@serve_options
@click.pass_context
def doctor(ctx: click.Context, listen, output, **raw):
    """Listen to the broker for a while and print a checklist of what is wrong and how to
    fix it, with this app's broker, queues and routes. Exit status 0: all well; 1:
    something to fix; 2: broker unreachable."""
    from_app(ctx, ctx.find_object(CLIContext).app, raw)
    run_doctor_with(raw, listen, output)


def from_app(ctx: click.Context, app, raw: dict) -> None:
    """Fill in ``raw`` what the app says, where no flag or env var was given."""
    given_file = ctx.get_parameter_source("broker_url_file") is not ParameterSource.DEFAULT
    for name, read in FROM_APP.items():
        if ctx.get_parameter_source(name) is not ParameterSource.DEFAULT:
            continue  # a flag or env var given explicitly wins
        if name == "broker_url" and given_file:
            continue
        raw[name] = read(app)


def beat_schedule(ctx: click.Context, app, raw: dict) -> dict:
    """The app's schedule for app.run: RedBeat's keys when its beat runs RedBeat
    (its settings as RedBeat reads them, unless given as flags), else beat_schedule."""
    options: dict[str, object] = {"beat_timezone": str(app.timezone)}
    redbeat = redbeat_from_app(app)
    if redbeat is not None:
        for name, value in zip(("redbeat_key_prefix", "redbeat_url"), redbeat):
            if ctx.get_parameter_source(name) is ParameterSource.DEFAULT:
                raw[name] = ";".join(value) if isinstance(value, (list, tuple)) else value
    if not raw.get("redbeat_key_prefix"):
        options["beat_entries"] = entries_from_app(app)
    return options
