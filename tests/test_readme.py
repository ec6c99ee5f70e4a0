"""The README's commands work: every ``bouquet-sim`` command composes and validates against the
config, and the quick-start example learns (issue 18: "every README example works and learns").
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
from conftest import ROOT, run_bouquet_sim
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from bouquet.simulations.validate import validate_config

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def commands() -> list[tuple[str, str]]:
    """(file, command) for every ``bouquet-sim`` line in a fenced code block of the docs."""
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
            if in_block and cmd.startswith("bouquet-sim ") and "<" not in cmd:  # <placeholders> aside
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


def test_the_docs_have_commands():
    assert len(commands()) >= 10


@pytest.mark.parametrize("where,cmd", commands(), ids=[f"{w}:{c[12:60]}" for w, c in commands()])
def test_every_documented_command_composes_and_validates(where, cmd):
    if re.search(r"client\.alpha=2\b", cmd):  # the documented refusal example
        with pytest.raises(ValueError, match="client.alpha"):
            _validate(overrides_of(cmd))
        return
    _validate(overrides_of(cmd))


def _validate(overrides: list[str]) -> None:
    with initialize_config_module("bouquet.conf", version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    validate_config(OmegaConf.to_container(cfg, resolve=True))


@pytest.mark.e2e
def test_quick_start_example_learns(tmp_path: Path):
    """README's first example: digits, 3 clients, 2 rounds, well above chance (> 60%)."""
    first = next(c for _, c in commands() if "dataset=digits" in c)
    proc = run_bouquet_sim(shlex.split(first)[1:], tmp_path / "run")
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["final_accuracy"] > 0.6, summary


def snippets() -> list[tuple[str, str]]:
    """(file, code) of every fenced ``python`` block of the docs."""
    out = []
    for path in DOCS:
        for block in re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S):
            out.append((path.name, block))
    return out


@pytest.mark.parametrize("where,code", snippets(), ids=[f"{w}:{i}" for i, (w, _) in enumerate(snippets())])
def test_every_python_snippet_imports(where, code):
    """The import lines of every documented snippet run (the rest needs the user's data)."""
    imports = [line for line in code.splitlines() if re.match(r"^(from \S+ import .+|import \S+)$", line.strip())
               and not line.startswith(" ")]
    assert imports, f"{where}: a python snippet without imports"
    exec(compile("\n".join(imports), f"<{where}>", "exec"), {})
