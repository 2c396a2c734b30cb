#!/usr/bin/env bash
# Creates the benchmarks' two venvs (both gitignored):
#   bench/.venv        celery-stalk from this checkout (editable) + py-spy, pyinstrument
#   bench/.venv-peers  the exporters it is compared with (Flower, celery-exporter)
# The peers live apart so their pins never touch the project's dependencies.
set -euo pipefail
cd "$(dirname "$0")"
command -v redis-server >/dev/null || { echo "redis-server missing: run ./scripts/test once (it installs it)"; exit 1; }
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e .. -r requirements.txt
[ -x .venv-peers/bin/python ] || python3 -m venv .venv-peers
.venv-peers/bin/python -m pip install -q --disable-pip-version-check -r requirements-peers.txt
echo "ready: bench/.venv and bench/.venv-peers"
