"""Hydra callbacks: the multirun summary table."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from omegaconf import OmegaConf

logger = logging.getLogger(__name__)

MULTIRUN_SUMMARY = "multirun_summary.csv"


def collect_multirun(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per job directory of a sweep: its overrides and its ``summary.json``."""
    rows = []
    for job_dir in sorted(
        (p for p in sweep_dir.iterdir() if p.is_dir()),
        key=lambda p: (len(p.name), p.name),
    ):
        overrides_file = job_dir / ".hydra" / "overrides.yaml"
        if not overrides_file.exists():
            continue
        overrides = OmegaConf.to_container(OmegaConf.load(overrides_file))
        row: dict[str, Any] = {
            "job": job_dir.name,
            "overrides": " ".join(
                map(str, overrides if isinstance(overrides, list) else [])
            ),
        }
        summary_file = job_dir / "summary.json"
        if summary_file.exists():
            row.update(json.loads(summary_file.read_text()))
        else:
            row["status"] = "missing"
        rows.append(row)
    return rows


def write_multirun_summary(sweep_dir: Path) -> Path:
    rows = collect_multirun(sweep_dir)
    fields: list[str] = []
    for row in rows:
        fields.extend(k for k in row if k not in fields)
    out = sweep_dir / MULTIRUN_SUMMARY
    with open(out, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return out


class MultirunSummary(Callback):
    """Write ``multirun_summary.csv`` (one row per job) in the sweep dir at the end of a
    sweep."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        out = write_multirun_summary(Path(config.hydra.sweep.dir))
        logger.info("multirun summary: %s", out)
