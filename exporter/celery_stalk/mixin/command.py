"""``celery-stalk mixin``: the alert rules, runbook and dashboards for your own selector and
thresholds, without forking. Every setting of mixin/config.py is a flag, and can come from a
YAML file; flags win over the file, the file over the defaults."""

from __future__ import annotations

import sys
from dataclasses import fields
from pathlib import Path

import click

from .config import DEFAULT, ConfigError, overrides

HELP = {
    "selector": "Label matchers that select the exporters' series in every rule, "
                "e.g. 'job=\"celery\"'.",
    "replica_labels": "Comma-separated target labels that tell the exporters of an HA pair "
                      "apart; rules aggregate them away and match `up` on them.",
    "runbook_url": "Where the alerts' runbook_url points (the generated runbook.md, hosted).",
}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _shown(value) -> str:
    return ",".join(value) if isinstance(value, tuple) else str(value)


def settings_options(command):
    """One flag per setting, unset unless given so the file and the defaults show through."""
    for f in reversed(fields(DEFAULT)):
        default = _shown(getattr(DEFAULT, f.name))
        text = HELP.get(f.name, "See exporter/celery_stalk/mixin/config.py and the runbook.")
        command = click.option(_flag(f.name), f.name, default=None, metavar="VALUE",
                               help=f"{text} [default: {default}]")(command)
    return command


@click.command("mixin")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Directory to write alerts/ and dashboards/ into (created if missing).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
              help="YAML file of settings: a mapping of the flag names (with - or _) to values.")
@click.option("--check", is_flag=True,
              help="Write nothing: list the files under --out that differ, exit 1 if any do.")
@click.option("--compat", default="", metavar="NAMES",
              help="Also write compatibility recording rules that publish another exporter's "
                   "metric names from ours (alerts/compat/), comma-separated: celery-exporter, "
                   "flower. See docs/migrating.md.")
@settings_options
def mixin(out: Path, config_file: Path | None, check: bool, compat: str, **settings):
    """Write the Prometheus rules, runbook and Grafana dashboards for your settings."""
    from .compat import COMPAT

    values: dict = {}
    names = tuple(name.strip() for name in compat.split(",") if name.strip())
    unknown = [name for name in names if name not in COMPAT]
    if unknown:
        click.echo(f"celery-stalk: error: --compat: {', '.join(map(repr, unknown))} unknown: "
                   f"choose from {', '.join(COMPAT)}", err=True)
        sys.exit(2)
    try:
        if config_file is not None:
            values.update(_read_settings(config_file))
        values.update({name: value for name, value in settings.items() if value is not None})
        config = overrides(DEFAULT, values)
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(f"celery-stalk: error: {problem}", err=True)
        sys.exit(2)

    from . import render, write  # imported late: --help and bad flags stay fast

    stale = write(render(config, compat=names), out, check=check)
    for path in stale:
        click.echo(f"{'differs' if check else 'wrote'} {out / path}")
    if check and stale:
        sys.exit(1)


def _read_settings(path: Path) -> dict:
    import yaml

    try:
        loaded = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError([f"--config: cannot read {str(path)!r}: {exc.strerror}"]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError([f"--config: {str(path)!r} is not valid YAML{where}"]) from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError([f"--config: {str(path)!r} must be a mapping of setting names to "
                           "values"])
    return loaded
