"""End-to-end runs split out of tests/docs/test_readme.py (they start bouquet-sim /
Ray)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
from conftest import run_bouquet_sim
from docs_commands import commands


@pytest.mark.e2e
def test_quick_start_example_learns(tmp_path: Path):
    """README's first example: digits, 3 clients, 2 rounds, well above chance (>
    60%)."""
    first = next(c for _, c in commands() if "dataset=digits" in c)
    proc = run_bouquet_sim(shlex.split(first)[1:], tmp_path / "run")
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["final_accuracy"] > 0.6, summary
