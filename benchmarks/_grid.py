"""Resumable benchmark grids whose raw per-cell results live in ``benchmarks/results/``.

A grid is a list of :class:`Cell` s; each cell is one real ``bouquet-sim`` run. When a
cell finishes, one JSON line (the cell's key, its overrides, every round of
``metrics.jsonl``, its ``summary.json`` and wall time) is appended to
``benchmarks/results/<section>.jsonl``, and, with ``commit=True``, that file alone is
committed (``git commit --only``), so a session that ends mid-grid loses no finished
cell. A cell whose key is already in the file is never rerun. Reports (``RESULTS.md``
sections, plots) are built from these files only.

``pin`` (a commit) runs every cell against that commit's code, checked out once into a
detached worktree under ``$TMPDIR`` and put first on ``PYTHONPATH``, so edits in the
working tree cannot leak into a running grid; each raw line records the commit its cell
ran.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

import tomllib

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "results"


@dataclass(frozen=True)
class Cell:
    """One run of a grid: ``key`` identifies it (dataset, arm, seed, ...), ``overrides``
    are the
    ``bouquet-sim`` arguments."""

    key: tuple[tuple[str, Any], ...]
    overrides: tuple[str, ...] = field(default=())
    #: ``None``: a ``bouquet-sim`` run; else a script under ``benchmarks/`` run with
    #: ``overrides`` as its arguments, which writes ``metrics.jsonl`` and
    #: ``summary.json`` into ``--run-dir``
    script: str | None = None
    #: JSON files of the run directory kept in the raw record
    #: (``record["files"][name]``)
    keep: tuple[str, ...] = ()

    @classmethod
    def of(
        cls,
        overrides: Iterable[str],
        *,
        script: str | None = None,
        keep: Iterable[str] = (),
        **key: Any,
    ) -> Cell:
        return cls(tuple(sorted(key.items())), tuple(overrides), script, tuple(keep))

    @property
    def key_dict(self) -> dict[str, Any]:
        return dict(self.key)

    def label(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.key)


def results_path(section: str) -> Path:
    return RESULTS_DIR / f"{section}.jsonl"


def load_results(section: str) -> list[dict[str, Any]]:
    """Every finished cell of ``section`` (one dict per cell, in the order they
    finished)."""
    path = results_path(section)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def done_keys(section: str) -> set[str]:
    return {json.dumps(r["key"], sort_keys=True) for r in load_results(section)}


def _append(section: str, record: dict[str, Any]) -> None:
    path = results_path(section)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        fh.write(json.dumps(record, sort_keys=True) + "\n")
        fcntl.flock(fh, fcntl.LOCK_UN)


def _commit(paths: list[Path], message: str) -> None:
    """Commit only ``paths`` (other staged work is left alone); a busy index is retried
    once,
    then left for the next cell's commit."""
    rel = [str(p.relative_to(ROOT)) for p in paths if p.exists()]
    for attempt in range(2):
        subprocess.run(["git", "-C", str(ROOT), "add", "--", *rel], capture_output=True)
        res = subprocess.run(
            [
                "git",
                "-C",
                str(ROOT),
                "commit",
                "-q",
                "--only",
                "-m",
                message,
                "--",
                *rel,
            ],
            capture_output=True,
            text=True,
        )
        if res.returncode == 0 or "nothing" in (res.stdout + res.stderr):
            return
        time.sleep(5 * (attempt + 1))
    print(f"  (commit of {rel} deferred: {res.stderr.strip()[:200]})", flush=True)


PACKAGES = ("codecs", "strategies", "clients", "models", "data", "simulations", "conf")


def pinned_tree(commit: str) -> tuple[str, Path]:
    """(full sha, import root) of ``commit`` checked out in a detached worktree, laid
    out as the ``bouquet`` package (the project maps top-level folders into
    ``bouquet.*``)."""
    sha = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", commit],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    tree = Path(tempfile.gettempdir()) / f"bouquet-pinned-{sha[:12]}"
    if not (tree / "bouquet").exists():
        subprocess.run(
            [
                "git",
                "-C",
                str(ROOT),
                "worktree",
                "add",
                "--detach",
                "--force",
                str(tree),
                sha,
            ],
            capture_output=True,
            check=True,
        )
    pkg = tree / ".pkg" / "bouquet"
    if not pkg.exists():
        pkg.mkdir(parents=True)
        for entry in (tree / "bouquet").iterdir():
            (pkg / entry.name).symlink_to(entry)
        for name in PACKAGES:
            (pkg / name).symlink_to(tree / name)
    return sha, tree / ".pkg"


def sim_command(tree: Path | None) -> list[str]:
    """``bouquet-sim`` of the checkout, or of a pinned ``tree``: its own pyproject's
    entry point
    (the module behind the command moved between commits)."""
    if tree is None:
        return [str(ROOT / ".venv/bin/bouquet-sim")]
    entry = tomllib.loads((tree / "pyproject.toml").read_text())["project"]["scripts"][
        "bouquet-sim"
    ]
    module, func = entry.split(":")
    return [
        sys.executable,
        "-c",
        f"import sys; sys.argv[0] = 'bouquet-sim'; from {module} import {func}; "
        f"{func}()",
    ]


def run_cell(
    section: str, cell: Cell, *, timeout_s: float = 3 * 3600, pin: str | None = None
) -> dict[str, Any]:
    """Run one cell with ``bouquet-sim`` in a scratch run directory and append its raw
    record."""
    env = {
        **os.environ,
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    if pin is not None:
        commit, root = pinned_tree(pin)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(root), *filter(None, [os.environ.get("PYTHONPATH")])]
        )
    else:
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
        ).stdout.strip()
    with tempfile.TemporaryDirectory(prefix=f"bouquet-{section}-") as tmp:
        run_dir = Path(tmp) / "run"
        if cell.script is None:
            cmd = [
                *sim_command(None if pin is None else pinned_tree(pin)[1].parent),
                *cell.overrides,
                f"hydra.run.dir={run_dir}",
                "simulation.checkpoint_every=0",
            ]
        else:
            tree = ROOT if pin is None else pinned_tree(pin)[1].parent
            cmd = [
                sys.executable,
                str(tree / "benchmarks" / cell.script),
                f"--run-dir={run_dir}",
                *cell.overrides,
            ]
        t0 = time.time()
        # cwd outside the checkout: Ray workers put the driver's cwd on sys.path
        res = subprocess.run(
            cmd, env=env, capture_output=True, text=True, timeout=timeout_s, cwd=tmp
        )
        wall = time.time() - t0
        if res.returncode != 0:
            raise RuntimeError(
                f"{section} {cell.label()} failed (exit "
                f"{res.returncode}):\n{res.stderr[-3000:]}"
            )
        metrics = run_dir / "metrics.jsonl"  # a search run has none
        rounds = (
            [
                json.loads(line)
                for line in metrics.read_text().splitlines()
                if line.strip()
            ]
            if metrics.exists()
            else []
        )
        summary = json.loads((run_dir / "summary.json").read_text())
        files = {name: json.loads((run_dir / name).read_text()) for name in cell.keep}
    record = {
        "key": cell.key_dict,
        "overrides": list(cell.overrides),
        "rounds": rounds,
        "summary": summary,
        "commit": commit,
        **({"files": files} if files else {}),
        "wall_s": round(wall, 1),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "loadavg": [round(v, 2) for v in os.getloadavg()],
        "cpus": os.cpu_count(),
    }
    _append(section, record)
    return record


PAUSE_FILE = RESULTS_DIR / ".pause"


def wait_while_paused() -> None:
    """Hold the next cell while ``benchmarks/results/.pause`` exists (a speed benchmark
    wants
    the machine to itself; the running cell is never interrupted)."""
    announced = False
    while PAUSE_FILE.exists():
        if not announced:
            print(f"  paused ({PAUSE_FILE} exists)", flush=True)
            announced = True
        time.sleep(5)


def run_grid(
    section: str,
    cells: list[Cell],
    *,
    commit: bool = False,
    after_cell: Any = None,
    pin: str | None = None,
) -> None:
    """Run every cell of ``cells`` not yet in ``results/<section>.jsonl``, one at a
    time."""
    todo = [
        c
        for c in cells
        if json.dumps(c.key_dict, sort_keys=True) not in done_keys(section)
    ]
    print(
        f"{section}: {len(cells) - len(todo)} of {len(cells)} cells done, "
        f"{len(todo)} to run",
        flush=True,
    )
    for i, cell in enumerate(todo, 1):
        wait_while_paused()
        print(f"[{i}/{len(todo)}] {section} {cell.label()}", flush=True)
        rec = run_cell(section, cell, pin=pin)
        last = rec["rounds"][-1] if rec["rounds"] else {}
        print(
            f"  done in {rec['wall_s']:.0f} s, final accuracy {last.get('accuracy')}",
            flush=True,
        )
        touched = [results_path(section)]
        if after_cell is not None:
            touched += list(after_cell() or [])
        if commit:
            _commit(touched, f"benchmarks: {section} cell {cell.label()}")


# --------------------------------------------------------------------------- statistics
def mean_sd(values: list[float]) -> tuple[float, float]:
    vals = [
        v
        for v in values
        if v is not None and not (isinstance(v, float) and math.isnan(v))
    ]
    if not vals:
        return math.nan, math.nan
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def pm(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    """``mean +- sd (n)`` of ``values`` times ``scale``."""
    m, s = mean_sd(values)
    if math.isnan(m):
        return ""
    n = len([v for v in values if v is not None])
    return f"{m * scale:.{digits}f} ± {s * scale:.{digits}f}" + (
        "" if n == 3 else f" (n={n})"
    )


def overhead_note(results: list[dict[str, Any]]) -> str:
    """A sentence on the share of each cell's wall time spent outside its rounds
    (process and Ray start-up, data loading, shutdown), from the cells whose run summary
    records its round time."""
    shares = [
        1 - r["summary"]["wall_s"] / r["wall_s"]
        for r in results
        if (r.get("summary") or {}).get("wall_s") and r.get("wall_s")
    ]
    if not shares:
        return ""
    n = len(shares)
    return (
        "\nPer-cell overhead outside the rounds (process and Ray start-up, data "
        "loading, shutdown), measured in "
        f"{n} cell{'s' if n != 1 else ''}: {100 * mean_sd(shares)[0]:.1f}% of a "
        "cell's wall time on average (min "
        f"{100 * min(shares):.1f}%, max {100 * max(shares):.1f}%); the cells ran one "
        "at a time beside other work "
        "on the same 2 cores, so their wall times vary.\n"
    )


def cumulative_mb(rounds: list[dict[str, Any]]) -> list[float]:
    total, out = 0, []
    for r in rounds:
        total += r.get("bytes_up", 0)
        out.append(total / 1e6)
    return out


def first_reaching(
    rounds: list[dict[str, Any]], target: float
) -> tuple[int | None, float | None]:
    """(round, cumulative MB uploaded) at which accuracy first reaches ``target``."""
    for r, mb in zip(rounds, cumulative_mb(rounds), strict=True):
        if r.get("accuracy") is not None and r["accuracy"] >= target:
            return int(r["round"]), mb
    return None, None


def grid_arguments(parser: Any, seeds: list[int] | None = None) -> None:
    """The options every grid benchmark takes: ``--seeds``, ``--commit``, ``--report``,
    ``--pin``."""
    parser.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        default=seeds if seeds is not None else [0, 1, 2],
    )
    parser.add_argument(
        "--commit",
        action="store_true",
        help="git-commit the raw results after every cell",
    )
    parser.add_argument(
        "--report",
        action="store_true",
        help="only rebuild the RESULTS.md section (and plots)",
    )
    parser.add_argument(
        "--pin",
        default=None,
        help="run the cells against this commit's code (a detached worktree)",
    )


#: Issue 15's LeNet protocol: 10 clients, all every round, 30 rounds, 1 local epoch,
#: batch 32, SGD lr 0.01 m 0.9
LENET_PROTOCOL = {
    "model": "lenet",
    "rounds": 30,
    "local_epochs": 1,
    "batch_size": 32,
    "clients": 10,
}


def lenet_overrides(dataset: str, seed: int) -> list[str]:
    """``bouquet-sim`` overrides of :data:`LENET_PROTOCOL` for ``dataset`` and ``seed``
    (``client=plain``)."""
    p = LENET_PROTOCOL
    return [
        f"dataset={dataset}",
        f"model={p['model']}",
        f"simulation.num_clients={p['clients']}",
        f"simulation.num_rounds={p['rounds']}",
        "simulation.fraction_train=1.0",
        "client=plain",
        f"client.local_epochs={p['local_epochs']}",
        f"client.batch_size={p['batch_size']}",
        "client.lr=0.01",
        "client.momentum=0.9",
        f"seed={seed}",
    ]


def python() -> str:
    return sys.executable


def by_dataset_and_arm(
    section: str, datasets: Iterable[str]
) -> tuple[dict[tuple[str, str], list[dict[str, Any]]], list[str]]:
    """The raw cells of ``section`` grouped by (dataset, arm), and the ``datasets`` that
    have cells."""
    by: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in load_results(section):
        by.setdefault((r["key"]["dataset"], r["key"]["arm"]), []).append(r)
    return by, [d for d in datasets if any(k[0] == d for k in by)]


def dataset_figure(datasets: list[str]) -> tuple[Any, Any]:
    """(figure, one axis per dataset) for a report's plot (matplotlib, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        1, len(datasets), figsize=(6.5 * len(datasets), 4.8), squeeze=False
    )
    return fig, axes[0]
