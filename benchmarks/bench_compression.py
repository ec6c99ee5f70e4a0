"""Accuracy against megabytes uploaded: dense FedAvg vs top-k + EF, STC and TernGrad
(issue 15 §1).

Protocol: MNIST and Fashion-MNIST, 10 clients, Dirichlet(0.5), all clients every round,
LeNet, 30 rounds, 1 local epoch, batch 32, SGD momentum 0.9 (``client=plain`` defaults:
lr 0.01); seeds 0, 1, 2. Every cell is a real ``bouquet-sim`` run in Flower's simulation
engine; bytes are the measured ``Array.data`` bytes of every train reply
(``metrics.jsonl``).

Raw per-cell results: ``benchmarks/results/compression.jsonl`` (one line per finished
cell, never rerun). ``--report`` rebuilds the ``compression`` section of ``RESULTS.md``
and ``benchmarks/compression_curves.png`` from that file alone::

    # run what is missing
    nice -n 10 .venv/bin/python benchmarks/bench_compression.py --commit
    # tables + plot only
    .venv/bin/python benchmarks/bench_compression.py --report

The remedies (DGC momentum correction, local clipping, density warm-up, server momentum;
see :data:`REMEDY_ARMS`) are arms of their own, not in the default grid::

    nice -n 10 .venv/bin/python benchmarks/bench_compression.py --commit \\
        --datasets fashion_mnist \\
        --arms "topk 1% + EF + server momentum 0.9, server_lr 0.1" "STC 1% + warm-up 4"
    # names and overrides
    .venv/bin/python benchmarks/bench_compression.py --list-arms
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._grid import Cell  # noqa: E402
from benchmarks._grid import by_dataset_and_arm  # noqa: E402
from benchmarks._grid import cumulative_mb  # noqa: E402
from benchmarks._grid import dataset_figure  # noqa: E402
from benchmarks._grid import first_reaching  # noqa: E402
from benchmarks._grid import grid_arguments  # noqa: E402
from benchmarks._grid import load_results  # noqa: E402
from benchmarks._grid import mean_sd  # noqa: E402
from benchmarks._grid import overhead_note  # noqa: E402
from benchmarks._grid import pm  # noqa: E402
from benchmarks._grid import run_grid  # noqa: E402
from benchmarks._results import markdown_table  # noqa: E402
from benchmarks._results import not_yet_run  # noqa: E402
from benchmarks._results import write_section  # noqa: E402

SECTION = "compression"
# Arms: the five first; the literature's remedies are arms of their own
# (--arms).
ARMS: dict[str, list[str]] = {
    "dense FedAvg": ["client=plain"],
    "topk 1% + EF": ["client=topk", "client.alpha=0.01", "client.residual_decay=1.0"],
    "topk 0.1% + EF": [
        "client=topk",
        "client.alpha=0.001",
        "client.residual_decay=1.0",
    ],
    "STC 1%": ["client=stc", "client.alpha=0.01"],
    "ternary (TernGrad)": ["client=ternary"],
}
DEFAULT_ARMS = list(ARMS)
# The literature's remedies for top-k 1% + EF and STC 1% (issue 15 §1), one arm each;
# run with --arms. Formulas and our readings: docs/compression.md ("Remedies"). clip
# 2.0: LeNet's per-client update norms on Fashion-MNIST in this protocol (dense FedAvg,
# rounds 1-5, 10 clients) have medians 3.5, 2.4, 1.6, 1.5, 1.4, so 2.0 clips the early
# rounds and the largest clients. Warm-up 4 at a 1% target keeps 39.8%, 15.8%, 6.3%,
# 2.5% in rounds 1-4: about 3x the elements of plain top-1% over 30 rounds (bytes are
# measured as usual). "server_lr 0.1" variants keep the steady-state step server_lr /
# (1 - 0.9) = 1.
_MC = ["client.momentum_correction=0.9"]
_SM = ["+compression.server_momentum=0.9"]
_LR = ["+compression.server_lr=0.1"]
_DGC = [*_MC, "client.clip_norm=2.0", "client.warmup_rounds=4"]
for _name, _base in (
    ("topk 1% + EF", ARMS["topk 1% + EF"]),
    ("STC 1%", ARMS["STC 1%"]),
):
    ARMS.update(
        {
            f"{_name} + momentum corr. 0.9": [*_base, *_MC],
            f"{_name} + momentum corr. 0.9, server_lr 0.1": [*_base, *_MC, *_LR],
            f"{_name} + clip 2.0": [*_base, "client.clip_norm=2.0"],
            f"{_name} + warm-up 4": [*_base, "client.warmup_rounds=4"],
            f"{_name} + server momentum 0.9": [*_base, *_SM],
            f"{_name} + server momentum 0.9, server_lr 0.1": [*_base, *_SM, *_LR],
            f"{_name} + DGC (momentum corr. 0.9, clip 2.0, warm-up 4)": [*_base, *_DGC],
            # our hypothesis, not a published remedy: clients pick different
            # coordinates, so the mean dilutes what each sent (a coordinate sent by one
            # of 10 clients moves by a tenth of it)
            f"{_name}, server_lr 2": [*_base, "+compression.server_lr=2.0"],
        }
    )
REMEDY_ARMS = [a for a in ARMS if a not in DEFAULT_ARMS]
TARGETS = {"mnist": 0.98, "fashion_mnist": 0.85}
PROTOCOL = {
    "model": "lenet",
    "rounds": 30,
    "local_epochs": 1,
    "batch_size": 32,
    "clients": 10,
}


def cells(datasets: list[str], arms: list[str], seeds: list[int]) -> list[Cell]:
    p = PROTOCOL
    out = []
    for seed in seeds:  # seed-major: a partial grid has whole seeds of every arm
        for dataset in datasets:
            for arm in arms:
                overrides = [
                    f"dataset={dataset}",
                    f"model={p['model']}",
                    "partition=dirichlet",
                    "partition.alpha=0.5",
                    f"simulation.num_clients={p['clients']}",
                    f"simulation.num_rounds={p['rounds']}",
                    "simulation.fraction_train=1.0",
                    f"client.local_epochs={p['local_epochs']}",
                    f"client.batch_size={p['batch_size']}",
                    "client.momentum=0.9",
                    f"seed={seed}",
                    *ARMS[arm],
                ]
                out.append(Cell.of(overrides, dataset=dataset, arm=arm, seed=seed, **p))
    return out


def report() -> list[Path]:
    """Rebuild the RESULTS.md section and the plot from the raw results; return what
    changed."""
    results = load_results(SECTION)
    by, datasets = by_dataset_and_arm(SECTION, TARGETS)
    arms = [a for a in ARMS if any(k[1] == a for k in by)]
    if not datasets:
        return []
    fig, axes = dataset_figure(datasets)
    rows = []
    for ax, ds in zip(axes, datasets, strict=True):
        dense = {r["key"]["seed"]: r for r in by.get((ds, "dense FedAvg"), [])}
        target = TARGETS[ds]
        target_note = f"{target:.0%}"
        if dense and not all(
            first_reaching(r["rounds"], target)[0] for r in dense.values()
        ):
            # the fallback target: the dense arm's accuracy at round 10 (mean
            # over seeds)
            target = mean_sd(
                [
                    r["rounds"][10]["accuracy"]
                    for r in dense.values()
                    if len(r["rounds"]) > 10
                ]
            )[0]
            target_note = (
                f"{target:.4f} (dense at round 10; {TARGETS[ds]:.0%} not reached by "
                "every dense seed)"
            )
        for arm in arms:
            cells_ = sorted(by.get((ds, arm), []), key=lambda r: r["key"]["seed"])
            if not cells_:
                continue
            finals = [r["rounds"][-1]["accuracy"] for r in cells_]
            mbs = [cumulative_mb(r["rounds"])[-1] for r in cells_]
            diffs = [
                r["rounds"][-1]["accuracy"]
                - dense[r["key"]["seed"]]["rounds"][-1]["accuracy"]
                for r in cells_
                if r["key"]["seed"] in dense
            ]
            ratios = [
                cumulative_mb(dense[r["key"]["seed"]]["rounds"])[-1] / max(m, 1e-12)
                for r, m in zip(cells_, mbs, strict=True)
                if r["key"]["seed"] in dense
            ]
            reach = [first_reaching(r["rounds"], target) for r in cells_]
            reached = [x for x in reach if x[0] is not None]
            rows.append(
                {
                    "dataset": ds,
                    "arm": arm,
                    "seeds": ",".join(str(r["key"]["seed"]) for r in cells_),
                    "final acc (%)": pm(finals, 100),
                    "acc - dense (pt)": pm(diffs, 100) if diffs else "",
                    "MB up": pm(mbs, 1, 3),
                    "x fewer bytes": pm(ratios, 1, 1) if ratios else "",
                    "MB to target": pm([x[1] for x in reached], 1, 3)
                    + (
                        ""
                        if len(reached) == len(reach)
                        else f" ({len(reached)}/{len(reach)} reached)"
                    ),
                    "round reached": pm([float(x[0]) for x in reached], 1, 1)
                    if reached
                    else "not reached",
                    "failed replies": sum(
                        sum(x.get("clients_failed", 0) for x in r["rounds"])
                        for r in cells_
                    ),
                    "wall s / cell": f"{mean_sd([r['wall_s'] for r in cells_])[0]:.0f}",
                }
            )
            rows[-1]["target"] = target_note
            _plot_arm(ax, arm, cells_)
        ax.set_xscale("log")
        ax.set_xlabel("MB uploaded (cumulative, all clients)")
        ax.set_ylabel("test accuracy")
        ax.set_title(
            f"{ds}: 10 clients, Dirichlet(0.5), LeNet, 30 rounds (mean, band = "
            "min..max over seeds)",
            fontsize=8,
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    png = ROOT / "benchmarks/compression_curves.png"
    fig.savefig(png, dpi=110)
    cols = [
        "dataset",
        "arm",
        "seeds",
        "final acc (%)",
        "acc - dense (pt)",
        "MB up",
        "x fewer bytes",
        "MB to target",
        "round reached",
        "failed replies",
        "wall s / cell",
    ]
    targets = "; ".join(
        f"{r['dataset']}: {r['target']}"
        for r in {r["dataset"]: r for r in rows}.values()
    )
    missing = _missing(results)
    body = (
        "Real `bouquet-sim` runs in Flower's simulation engine: 10 clients, "
        "Dirichlet(0.5), all clients every round, "
        "LeNet, 30 rounds, 1 local epoch, batch 32, SGD lr 0.01 momentum 0.9. Mean ± "
        "sd over seeds (n=3 unless "
        "marked); `acc - dense` and `x fewer bytes` are paired by seed. Bytes are "
        "the measured `Array.data` bytes "
        f"of all train replies. Target accuracy: {targets}. Plot: "
        "`benchmarks/compression_curves.png`. "
        "Raw per-cell results: `benchmarks/results/compression.jsonl`.\n\n"
        + markdown_table(rows, cols)
    )
    body += _gap_by_round(by, datasets, arms) + overhead_note(results)
    body += not_yet_run(
        missing, "nice -n 10 .venv/bin/python benchmarks/bench_compression.py --commit"
    )
    write_section(
        SECTION,
        "Compressed uploads: accuracy vs MB uploaded (LeNet, 30 rounds, 3 seeds)",
        body,
        command="nice -n 10 .venv/bin/python benchmarks/bench_compression.py --commit "
        "(report: --report)",
    )
    return [ROOT / "benchmarks/RESULTS.md", png]


def _plot_arm(ax, arm: str, cells_: list[dict]) -> None:
    import numpy as np

    n = min(len(r["rounds"]) for r in cells_)
    mb = np.mean([cumulative_mb(r["rounds"])[:n] for r in cells_], axis=0)
    acc = np.array([[x["accuracy"] for x in r["rounds"][:n]] for r in cells_])
    keep = mb > 0  # round 0: nothing uploaded yet
    line = ax.plot(
        mb[keep],
        acc.mean(axis=0)[keep],
        marker=".",
        ms=3,
        label=f"{arm} (n={len(cells_)})",
    )[0]
    ax.fill_between(
        mb[keep],
        acc.min(axis=0)[keep],
        acc.max(axis=0)[keep],
        alpha=0.15,
        color=line.get_color(),
    )


def _accuracy_at(rec: dict, rnd: int) -> float | None:
    return next((x["accuracy"] for x in rec["rounds"] if x.get("round") == rnd), None)


def _gap_by_round(
    by: dict[tuple[str, str], list[dict]], datasets: list[str], arms: list[str]
) -> str:
    """Accuracy minus dense at rounds 10, 20, 30 (paired by seed), and the first round
    at which the same seed's dense run reached the arm's final accuracy: how far behind
    per round an arm is."""
    rows = []
    for ds in datasets:
        dense = {r["key"]["seed"]: r for r in by.get((ds, "dense FedAvg"), [])}
        for arm in arms:
            paired = [r for r in by.get((ds, arm), []) if r["key"]["seed"] in dense]
            if arm == "dense FedAvg" or not paired:
                continue
            row: dict[str, str] = {"dataset": ds, "arm": arm}
            for rnd in (10, 20, 30):
                d = [
                    a - b
                    for r in paired
                    if (a := _accuracy_at(r, rnd)) is not None
                    and (b := _accuracy_at(dense[r["key"]["seed"]], rnd)) is not None
                ]
                row[f"vs dense at round {rnd} (pt)"] = pm(d, 100) if d else ""
            caught = [
                first_reaching(
                    dense[r["key"]["seed"]]["rounds"], r["rounds"][-1]["accuracy"]
                )[0]
                for r in paired
            ]
            row["dense reached its final acc. at round"] = pm(
                [float(c) for c in caught if c is not None], 1, 1
            ) + (
                ""
                if all(c is not None for c in caught)
                else f" ({sum(c is None for c in caught)} never)"
            )
            rows.append(row)
    if not rows:
        return ""
    return (
        "\nThe gap to dense by round (paired by seed; the last column: the first "
        "round at which the same seed's "
        "dense run was as accurate as the arm's final model):\n\n"
        + markdown_table(rows, list(rows[0]))
    )


def _missing(results: list[dict]) -> list[str]:
    done = {(r["key"]["dataset"], r["key"]["arm"], r["key"]["seed"]) for r in results}
    return [
        f"{c.key_dict['dataset']}/{c.key_dict['arm']}/seed {c.key_dict['seed']}"
        for c in cells(list(TARGETS), DEFAULT_ARMS, [0, 1, 2])
        if (c.key_dict["dataset"], c.key_dict["arm"], c.key_dict["seed"]) not in done
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=list(TARGETS))
    p.add_argument("--arms", nargs="+", default=DEFAULT_ARMS, choices=list(ARMS))
    grid_arguments(p)
    p.add_argument(
        "--list-arms",
        action="store_true",
        help="print every arm and its overrides, then exit",
    )
    args = p.parse_args()
    if args.list_arms:
        for arm, overrides in ARMS.items():
            print(
                f"{arm!r}{'' if arm in DEFAULT_ARMS else ' (remedy)'}: "
                f"{' '.join(overrides)}"
            )
        return
    if not args.report:
        run_grid(
            SECTION,
            cells(args.datasets, args.arms, args.seeds),
            commit=args.commit,
            after_cell=report,
            pin=args.pin,
        )
    report()
    print(f"load average: {', '.join(f'{v:.1f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
