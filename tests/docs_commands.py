"""The commands and Python snippets documented in README.md and docs/ (shared by the
docs tests)."""

from __future__ import annotations

import re
import shlex

from conftest import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def commands() -> list[tuple[str, str]]:
    """(file, command) for every ``bouquet-sim`` line in a fenced code block of the
    docs."""
    out = []
    for path in DOCS:
        in_block = False
        text = path.read_text()
        lines = text.replace("\\\n", " ").splitlines()
        for line in lines:
            if line.startswith("```"):
                in_block = not in_block
                continue
            cmd = line.split("#", 1)[0].strip()
            # <placeholders> aside
            if in_block and cmd.startswith("bouquet-sim ") and "<" not in cmd:
                out.append((path.name, cmd))
    return out


def overrides_of(cmd: str) -> list[str]:
    """The Hydra overrides of a command; a sweep (``a,b``) takes its first value."""
    out = []
    for arg in shlex.split(cmd)[1:]:
        if arg.startswith("-") or arg.startswith("hydra."):
            continue
        key, _, value = arg.partition("=")
        if "," in value and not value.startswith("["):
            value = value.split(",")[0]
        out.append(f"{key}={value}")
    return out


def snippets() -> list[tuple[str, str]]:
    """(file, code) of every fenced ``python`` block of the docs."""
    out = []
    for path in DOCS:
        for block in re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S):
            out.append((path.name, block))
    return out
