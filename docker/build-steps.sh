#!/bin/sh
# The image's install steps, kept in one place so the Dockerfile and the tests run the same
# commands: tests/deploy/test_dockerfile.py runs them into a fresh venv (no Docker engine needed).
#
#   build-steps.sh wheels SOURCE_DIR WHEEL_DIR   build wheels of celery-stalk and every dependency
#   build-steps.sh install WHEEL_DIR             install celery-stalk from those wheels only, then
#                                                remove pip: nothing installs anything at run time
#
# Runs the first `python` on PATH: the image's, or the test's venv.
set -eu
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore

case "${1:-}" in
  wheels)
    python -m pip wheel --wheel-dir "$3" "$2"
    ;;
  install)
    python -m pip install --no-index --find-links "$2" celery-stalk
    python -m pip uninstall --yes pip
    ;;
  *)
    echo "usage: $0 wheels SOURCE_DIR WHEEL_DIR | install WHEEL_DIR" >&2
    exit 2
    ;;
esac
