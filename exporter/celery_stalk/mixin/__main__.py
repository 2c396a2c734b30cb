"""python -m celery_stalk.mixin [--check]: regenerate the committed alerts/ and dashboards/
of a source checkout from the default settings (or only report the files that drifted)."""

from __future__ import annotations

import sys
from pathlib import Path

from . import render, write

# exporter/celery_stalk/mixin/__main__.py -> the checkout's root
CHECKOUT = Path(__file__).resolve().parents[3]


def main(argv: list[str]) -> int:
    unknown = [arg for arg in argv if arg != "--check"]
    if unknown:
        print(f"python -m celery_stalk.mixin: error: unknown argument {unknown[0]!r}: the only "
              "one is --check (for your own settings use celery-stalk mixin --out DIR)",
              file=sys.stderr)
        return 2
    if not (CHECKOUT / "pyproject.toml").is_file() or not (CHECKOUT / "alerts").is_dir():
        print("python -m celery_stalk.mixin: error: not run from a source checkout of "
              "celery-stalk: use celery-stalk mixin --out DIR", file=sys.stderr)
        return 2
    check = "--check" in argv
    stale = write(render(), CHECKOUT, check=check)
    for path in stale:
        print(f"{'stale' if check else 'wrote'} {path}")
    return 1 if check and stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
