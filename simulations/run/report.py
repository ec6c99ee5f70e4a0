"""``bouquet-report RUN_OR_SWEEP_DIR...``: one table and one plot comparing runs or
sweep jobs.

Every argument is a run directory (it has ``summary.json``) or a sweep directory (its
job directories are read in order). Runs are labelled by the overrides that differ
between them (from Hydra's ``.hydra/overrides.yaml``; the directory name when there are
none). Writes, into ``--out`` (default: the first argument):

* ``report.md`` (or ``report.csv`` with ``--format csv``): final and best accuracy, MB
  up, down and both, rounds, wall time, sync mismatches, status;
* ``report.png``: accuracy vs round, and vs MB up + down (cumulative), one line per run.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from bouquet.simulations.run.results import METRICS_FILE
from bouquet.simulations.run.results import SUMMARY_FILE
from bouquet.simulations.run.results import read_rows


def find_runs(paths: list[Path]) -> list[Path]:
    """The run directories named by ``paths`` (a run dir, or a sweep dir's job dirs)."""
    runs: list[Path] = []
    for path in paths:
        if (path / SUMMARY_FILE).exists() or (path / METRICS_FILE).exists():
            runs.append(path)
            continue
        jobs = [
            p
            for p in path.iterdir()
            if p.is_dir()
            and ((p / SUMMARY_FILE).exists() or (p / METRICS_FILE).exists())
        ]
        if not jobs:
            raise ValueError(
                f"{path} is neither a bouquet run directory nor a sweep of them"
            )
        runs.extend(sorted(jobs, key=lambda p: (len(p.name), p.name)))
    return runs


def overrides_of(run: Path) -> list[str]:
    path = run / ".hydra" / "overrides.yaml"
    if not path.exists():
        return []
    loaded = yaml.safe_load(path.read_text()) or []
    return [str(x) for x in loaded] if isinstance(loaded, list) else []


def labels(runs: list[Path]) -> list[str]:
    """Each run's overrides that are not the same in every run (its directory name if
    none)."""
    all_overrides = [overrides_of(r) for r in runs]
    common = (
        set.intersection(*(set(o) for o in all_overrides)) if all_overrides else set()
    )
    out = []
    for run, ovr in zip(runs, all_overrides, strict=True):
        differing = [o for o in ovr if o not in common]
        out.append(" ".join(differing) or run.name)
    return out


def table_rows(runs: list[Path]) -> list[dict[str, Any]]:
    rows = []
    for run, label in zip(runs, labels(runs), strict=True):
        summary = (
            json.loads((run / SUMMARY_FILE).read_text())
            if (run / SUMMARY_FILE).exists()
            else {}
        )
        up, down = (
            summary.get("total_bytes_up", 0) or 0,
            summary.get("total_bytes_down", 0) or 0,
        )
        acc = summary.get("final_accuracy")
        best = summary.get("best_accuracy")
        rows.append(
            {
                "run": label,
                "status": summary.get("status", "running?"),
                "final acc (%)": f"{100 * acc:.2f}"
                if isinstance(acc, (int, float))
                else "",
                "best acc (%)": f"{100 * best:.2f}"
                if isinstance(best, (int, float))
                else "",
                "MB up": f"{up / 1e6:.3f}",
                "MB down": f"{down / 1e6:.3f}",
                "MB both": f"{(up + down) / 1e6:.3f}",
                "rounds": summary.get("rounds", ""),
                "wall s": summary.get("wall_s", ""),
                "sync mismatches": summary.get("sync_mismatches", ""),
                "dir": str(run),
            }
        )
    return rows


def write_table(rows: list[dict[str, Any]], out: Path, fmt: str) -> Path:
    cols = list(rows[0])
    if fmt == "csv":
        path = out / "report.csv"
        with open(path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=cols)
            writer.writeheader()
            writer.writerows(rows)
        return path
    path = out / "report.md"
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_plot(runs: list[Path], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    for run, label in zip(runs, labels(runs), strict=True):
        rows = [r for r in read_rows(run) if r.get("accuracy") is not None]
        if not rows:
            continue
        step = "round" if "round" in rows[0] else "updates"
        acc = [100 * r["accuracy"] for r in rows]
        both = (
            np.cumsum([r.get("bytes_up", 0) + r.get("bytes_down", 0) for r in rows])
            / 1e6
        )
        ax1.plot([r[step] for r in rows], acc, marker=".", label=label)
        ax2.plot(both, acc, marker=".", label=label)
    ax1.set_xlabel("round")
    ax2.set_xlabel("MB up + down (cumulative, all clients)")
    ax2.set_xscale("symlog", linthresh=0.01)
    for ax in (ax1, ax2):
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
    ax1.legend(fontsize=7, title="runs (differing overrides)", title_fontsize=7)
    fig.tight_layout()
    path = out / "report.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="bouquet-report", description=__doc__.splitlines()[0]
    )
    parser.add_argument("paths", nargs="+", type=Path, help="run or sweep directories")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where report.md/csv and report.png go (default: the first path)",
    )
    parser.add_argument("--format", choices=("md", "csv"), default="md")
    args = parser.parse_args(argv)
    try:
        runs = find_runs(args.paths)
    except (ValueError, OSError) as exc:
        sys.stderr.write(f"bouquet-report: error: {exc}\n")
        sys.exit(2)
    out = args.out or args.paths[0]
    out.mkdir(parents=True, exist_ok=True)
    table = write_table(table_rows(runs), out, args.format)
    plot = write_plot(runs, out)
    print(f"{len(runs)} runs: {table} {plot}")


if __name__ == "__main__":
    main()
