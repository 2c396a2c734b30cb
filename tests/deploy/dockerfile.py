"""A small Dockerfile reader for the tests: instructions by stage, continuation lines joined."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Instruction:
    keyword: str  # upper case: FROM, RUN, COPY, ...
    args: str  # the rest of the line, continuations joined


def instructions(path: Path) -> list[Instruction]:
    text = re.sub(r"\\\n", " ", path.read_text())
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, args = line.partition(" ")
            result.append(Instruction(keyword.upper(), " ".join(args.split())))
    return result


def stages(path: Path) -> list[list[Instruction]]:
    """Instructions grouped by stage, each group starting with its FROM."""
    groups: list[list[Instruction]] = []
    for instruction in instructions(path):
        if instruction.keyword == "FROM":
            groups.append([])
        if groups:
            groups[-1].append(instruction)
    return groups


def exec_form(args: str) -> list[str]:
    """The JSON array of an exec-form ENTRYPOINT/CMD (after any --options)."""
    return json.loads(args[args.index("["):])


def run_parts(args: str) -> tuple[dict[str, dict[str, str]], list[str]]:
    """A RUN's --mount options (by target) and its command, split as the shell would."""
    words = shlex.split(args)
    mounts = {}
    while words and words[0].startswith("--"):
        option = words.pop(0)
        if option.startswith("--mount="):
            fields = dict(part.split("=", 1) for part in option[len("--mount="):].split(","))
            mounts[fields["target"]] = fields
    return mounts, words
