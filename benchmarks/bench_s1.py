"""S1 as its source writes it against dense FedSGD and bouquet's default (issue 22).

MNIST, MLP, 10 clients, Dirichlet(0.5), seeds 0, 1, 2. Arms:

* ``s1_source`` (the arm's key in the raw results): ``experiment=sparse_source`` (one
  SGD step per member per iteration, top-1% of the gradient without error feedback,
  KL-correlation weights, ``gamma`` = 0.1), 300 iterations;
* ``FedSGD (dense)``: the same with ``client.alpha=1.0 strategy=fedavg`` (dense
  gradients);
* ``bouquet default``: 1 local epoch, SGD momentum 0.9, lr 0.01, top-1% with error
  feedback, KL weights, 30 rounds (the same bytes per round as ``s1_source``).

Every cell is a real ``bouquet-sim`` run; raw per-cell results in
``benchmarks/results/s1.jsonl``; ``--report`` rebuilds the ``s1`` section of
``RESULTS.md`` and ``benchmarks/s1_curves.png``::

    nice -n 10 .venv/bin/python benchmarks/bench_s1.py --commit
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._grid import Cell  # noqa: E402
from benchmarks._grid import cumulative_mb  # noqa: E402
from benchmarks._grid import load_results  # noqa: E402
from benchmarks._grid import pm  # noqa: E402
from benchmarks._grid import run_grid  # noqa: E402
from benchmarks._results import markdown_table  # noqa: E402
from benchmarks._results import write_section  # noqa: E402

SECTION = "s1"
COMMON = [
    "experiment=sparse_source",
    "dataset=mnist",
    "model=mlp",
    "simulation.num_clients=10",
]
ARMS: dict[str, list[str]] = {
    # the raw results' key (the preset was experiment=s1_source)
    "s1_source": ["simulation.num_rounds=300"],
    "FedSGD (dense)": [
        "simulation.num_rounds=300",
        "client.alpha=1.0",
        "strategy=fedavg",
    ],
    "bouquet default": [
        "simulation.num_rounds=30",
        "client.local_steps=null",
        "client.momentum=0.9",
        "client.lr=0.01",
        "client.residual_decay=1.0",
        "compression.gamma=0.01",
    ],
}


def cells(seeds: list[int]) -> list[Cell]:
    return [
        Cell.of([*COMMON, *ARMS[arm], f"seed={seed}"], arm=arm, seed=seed)
        for seed in seeds
        for arm in ARMS
    ]


def _acc_at(rounds: list[dict], budget_mb: float) -> float | None:
    """Accuracy after the last round whose cumulative upload is within ``budget_mb``."""
    best = None
    for r, mb in zip(rounds, cumulative_mb(rounds), strict=True):
        if mb <= budget_mb + 1e-9:
            best = r["accuracy"]
    return best


def report() -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    by: dict[str, list[dict]] = defaultdict(list)
    for r in load_results(SECTION):
        by[r["key"]["arm"]].append(r)
    if not by:
        return []
    default_mb = [cumulative_mb(r["rounds"])[-1] for r in by.get("bouquet default", [])]
    budget = float(np.mean(default_mb)) if default_mb else None
    rows = []
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for arm in ARMS:
        cells_ = sorted(by.get(arm, []), key=lambda r: r["key"]["seed"])
        if not cells_:
            continue
        rows.append(
            {
                "arm": arm,
                "seeds": ",".join(str(r["key"]["seed"]) for r in cells_),
                "rounds": len(cells_[0]["rounds"]) - 1,
                "final acc (%)": pm([r["rounds"][-1]["accuracy"] for r in cells_], 100),
                "MB up": pm([cumulative_mb(r["rounds"])[-1] for r in cells_], 1, 2),
                "acc at the default arm's MB (%)": ""
                if budget is None
                else pm([_acc_at(r["rounds"], budget) for r in cells_], 100),
                "wall s / cell": f"{np.mean([r['wall_s'] for r in cells_]):.0f}",
            }
        )
        n = min(len(r["rounds"]) for r in cells_)
        mb = np.mean([cumulative_mb(r["rounds"])[:n] for r in cells_], axis=0)
        acc = np.array([[x["accuracy"] for x in r["rounds"][:n]] for r in cells_])
        keep = mb > 0
        line = ax.plot(
            mb[keep], acc.mean(axis=0)[keep], label=f"{arm} (n={len(cells_)})"
        )[0]
        ax.fill_between(
            mb[keep],
            acc.min(axis=0)[keep],
            acc.max(axis=0)[keep],
            alpha=0.15,
            color=line.get_color(),
        )
    ax.set_xscale("log")
    ax.set_xlabel("MB uploaded (cumulative, all clients)")
    ax.set_ylabel("test accuracy")
    ax.set_title(
        "S1 source form vs FedSGD vs bouquet default: MNIST, MLP, 10 clients, "
        "Dirichlet(0.5)",
        fontsize=8,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    png = ROOT / "benchmarks/s1_curves.png"
    fig.savefig(png, dpi=110)
    cols = [
        "arm",
        "seeds",
        "rounds",
        "final acc (%)",
        "MB up",
        "acc at the default arm's MB (%)",
        "wall s / cell",
    ]
    body = (
        "Real `bouquet-sim` runs (`experiment=sparse_source`, MNIST, MLP, 10 "
        "clients, Dirichlet(0.5)); mean ± sd over "
        "seeds; bytes are the measured payload bytes. `acc at the default arm's MB`: "
        "accuracy after the last round "
        "whose cumulative upload fits the bouquet-default arm's total (equal "
        "uploaded bytes). Plot: "
        "`benchmarks/s1_curves.png`; raw: `benchmarks/results/s1.jsonl`.\n\n"
        + markdown_table(rows, cols)
    )
    write_section(
        SECTION,
        "S1 in its source's form: per-iteration sparse gradients (issue 22)",
        body,
        command="nice -n 10 .venv/bin/python benchmarks/bench_s1.py --commit",
    )
    return [ROOT / "benchmarks/RESULTS.md", png]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--commit", action="store_true")
    p.add_argument("--report", action="store_true")
    p.add_argument("--pin", default=None)
    args = p.parse_args()
    if not args.report:
        run_grid(
            SECTION,
            cells(args.seeds),
            commit=args.commit,
            after_cell=report,
            pin=args.pin,
        )
    report()


if __name__ == "__main__":
    main()
