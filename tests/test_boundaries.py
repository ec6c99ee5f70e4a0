"""The package boundaries of DESIGN.md, checked on every import statement (top level or
not):
which bouquet packages each folder may import, no torch in codecs/strategies/data, Hydra
and omegaconf only in simulations/, nothing imports simulations/."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# bouquet/*.py (keys, the staleness window maths, curves) and bouquet.conf: every
# package may use them
ALLOWED = {
    "codecs": {"codecs"},
    "strategies": {"codecs", "strategies"},
    "clients": {"codecs", "models", "data", "clients"},
    "models": {"models"},
    "data": {"data"},
    "simulations": {"codecs", "strategies", "clients", "models", "data", "simulations"},
}
NO_TORCH = {"codecs", "strategies", "data"}


def _imports(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append(node.module)
        elif isinstance(node, ast.Import):
            out.extend(a.name for a in node.names)
    return out


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_what_design_allows(package: str) -> None:
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for mod in _imports(path):
            top = mod.split(".")[0]
            # bouquet.<package>... or one of the shared modules of bouquet/
            if top == "bouquet":
                inner = mod.split(".")[1] if "." in mod else ""
                if inner in ALLOWED and inner not in ALLOWED[package]:
                    bad.append(f"{path.relative_to(ROOT)}: {mod}")
            elif (top == "torch" or top == "torchvision") and package in NO_TORCH:
                bad.append(f"{path.relative_to(ROOT)}: {mod}")
            elif top in ("hydra", "omegaconf") and package != "simulations":
                bad.append(f"{path.relative_to(ROOT)}: {mod}")
    assert not bad, "imports DESIGN.md does not allow:\n" + "\n".join(bad)
