"""The Dockerfile, without a Docker engine (none runs here): hadolint lints it, its rules are
checked, and its install steps are run for real into a fresh venv, re-rooted into a temp dir."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.dockerfile import exec_form, instructions, run_parts, stages
from tests.harness import ROOT, ExporterProcess

DOCKERFILE = ROOT / "Dockerfile"
HADOLINT = Path(sys.executable).parent / "hadolint"


def test_hadolint_finds_nothing():
    result = subprocess.run([str(HADOLINT), str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_hadolint_would_catch_a_bad_dockerfile(tmp_path):
    """The lint above can fail: a Dockerfile with unpinned base and apt-get gets findings."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN apt-get install curl\n")
    result = subprocess.run([str(HADOLINT), str(bad)], capture_output=True, text=True)
    assert result.returncode != 0 and "DL3006" in result.stdout


def final_stage():
    return {i.keyword: i.args for i in stages(DOCKERFILE)[-1]}


def test_image_rules_multi_stage_slim_non_root_read_only_friendly():
    all_stages = stages(DOCKERFILE)
    assert len(all_stages) >= 2, "build the wheel in one stage, install it in another"
    assert all("-slim" in stage[0].args for stage in all_stages)
    final = final_stage()
    user = final["USER"].split(":")
    assert all(part.isdigit() and int(part) != 0 for part in user), "numeric, non-root USER"
    assert "PYTHONDONTWRITEBYTECODE=1" in final["ENV"]
    assert final["EXPOSE"] == "9808"
    assert exec_form(final["ENTRYPOINT"]) == ["celery-stalk", "serve"]
    assert "/healthz" in final["HEALTHCHECK"]
    # the final stage takes nothing from the build context but the wheels (mounted, not copied)
    assert not any(i.keyword in ("COPY", "ADD") for i in stages(DOCKERFILE)[-1])


def test_dockerignore_lets_in_everything_the_build_copies():
    allowed = {line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.startswith("!")}
    for instruction in instructions(DOCKERFILE):
        if instruction.keyword == "COPY" and "--from" not in instruction.args:
            for source in instruction.args.split()[:-1]:
                top = source.rstrip("/").split("/")[0]
                assert top in allowed, f"{source} is copied but .dockerignore leaves it out"


def rerooted(word: str, root: Path, mounts: dict) -> str:
    """An absolute image path as a path under ``root``; a RUN mount's target as its source."""
    if not word.startswith("/"):
        return word
    for target, fields in mounts.items():
        if word == target or word.startswith(target.rstrip("/") + "/"):
            word = fields.get("source", "/") + word[len(target.rstrip("/")):]
            break
    return str(root / word.lstrip("/"))


def run_image_steps(root: Path, env: dict) -> list[list[str]]:
    """Every stage's COPY and build-steps.sh RUN, in order, into ``root``; the commands run."""
    ran = []
    for stage in stages(DOCKERFILE):
        workdir = "/"
        for instruction in stage[1:]:
            if instruction.keyword == "WORKDIR":
                workdir = instruction.args
            elif instruction.keyword == "COPY":
                *sources, dest = instruction.args.split()
                assert dest.endswith("/"), "COPY into a directory: this reader knows only that form"
                target = root / workdir.lstrip("/") / dest
                target.mkdir(parents=True, exist_ok=True)
                for source in sources:
                    origin = ROOT / source
                    if origin.is_dir():  # Docker copies a directory's contents
                        shutil.copytree(origin, target, dirs_exist_ok=True,
                                        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
                    else:
                        shutil.copy(origin, target / origin.name)
            elif instruction.keyword == "RUN":
                mounts, command = run_parts(instruction.args)
                assert any("build-steps.sh" in word for word in command), (
                    f"keep install steps in docker/build-steps.sh, which this test runs: {command}")
                command = [rerooted(word, root, mounts) for word in command]
                cwd = root / workdir.lstrip("/")
                cwd.mkdir(parents=True, exist_ok=True)
                subprocess.run(command, cwd=cwd, env=env, check=True, capture_output=True, text=True)
                ran.append(command)
    return ran


@pytest.fixture(scope="module")
def image_venv(tmp_path_factory):
    """A fresh venv (standing in for the image's Python) with the Dockerfile's steps run into it."""
    base = tmp_path_factory.mktemp("image")
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = {**os.environ, "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    env.pop("PYTHONPATH", None)
    env.pop("VIRTUAL_ENV", None)
    ran = run_image_steps(base / "root", env)
    assert [command[2] for command in ran] == ["wheels", "install"], ran
    return venv


def test_install_steps_give_a_working_celery_stalk(image_venv):
    result = subprocess.run([str(image_venv / "bin" / "celery-stalk"), "--version"],
                            capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "celery-stalk, version 0.1.0"
    assert not (image_venv / "bin" / "pip").exists(), "pip is removed from the image"
    # the installed copy, not this worktree's
    where = subprocess.run([str(image_venv / "bin" / "python"), "-c",
                            "import celery_stalk; print(celery_stalk.__file__)"],
                           capture_output=True, text=True, check=True, cwd="/")
    assert str(image_venv) in where.stdout


def test_healthcheck_passes_on_a_live_exporter_writes_nothing_and_fails_when_it_is_gone(image_venv):
    final = final_stage()
    healthcheck = exec_form(final["HEALTHCHECK"])
    assert healthcheck[0] == "python"
    healthcheck[0] = str(image_venv / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "CELERY_STALK_"))}
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # as the image's ENV

    def files():
        return sorted(str(p) for p in image_venv.rglob("*"))

    before = files()
    exporter = ExporterProcess("redis://127.0.0.1:1/0")
    exporter.args[0] = str(image_venv / "bin" / "python")  # the installed copy, as in the image
    exporter.env = env
    env["CELERY_STALK_LISTEN_ADDRESS"] = f"127.0.0.1:{exporter.port}"
    exporter.start(wait_ready=False)  # nothing listens on port 1: healthy, not ready
    try:
        passed = subprocess.run(healthcheck, env=env, capture_output=True, text=True, timeout=10)
        assert passed.returncode == 0, passed.stderr
        assert exporter.scrape().get("celery_stalk_broker_up") == 0
    finally:
        assert exporter.stop() == 0
    failed = subprocess.run(healthcheck, env=env, capture_output=True, text=True, timeout=10)
    assert failed.returncode != 0
    assert files() == before, "the installed exporter wrote files at run time"
