"""Early exits that save compute: accuracy and cost per exit, searched vs baseline
network (issue 16).

Protocol: MNIST and Fashion-MNIST, 10 clients, Dirichlet(0.5), all clients every round,
20 rounds, ``client.local_steps=50`` batches of 32 per round (the early-exit ResNets
cost ~5-15x LeNet per sample; a full local epoch would make a cell ~20 min on 2 cores),
SGD lr 0.05 momentum 0.9; seeds 0, 1, 2. Per dataset and seed, the search
(``experiment=early_exit_search``, its defaults: 40 steps, reward pricing parameters and
MACs) runs first; its ``architecture.json`` is kept in the raw record and written to
``benchmarks/results/early_exit_arch/``. Arms (``experiment=early_exit``):

- ``searched, per-round depths``: the searched network, every node's depth redrawn every
  round uniformly from 1..3 (``strategy.assignment=per_round``, the default);
- ``searched, full depth (FedAvg)``: the same network, every node at depth 3
  (``strategy.depths=[3]``);
- ``baseline, per-round depths``: the hand-picked network (BasicBlock x2 in every pool);
- ``searched, per-round depths + self-distillation``: DepthFL's mutual self-distillation
  among the exits on the clients (``client.self_distillation=1.0``).

Every cell is a real ``bouquet-sim`` run in Flower's simulation engine. Raw per-cell
results: ``benchmarks/results/early_exit.jsonl`` (never rerun). ``--report`` rebuilds
the ``early-exit`` section of ``RESULTS.md`` and ``benchmarks/early_exit_exits.png``
from that file alone::

    nice -n 10 .venv/bin/python benchmarks/bench_early_exit.py --commit --pin HEAD
    .venv/bin/python benchmarks/bench_early_exit.py --report
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._grid import RESULTS_DIR  # noqa: E402
from benchmarks._grid import Cell  # noqa: E402
from benchmarks._grid import grid_arguments  # noqa: E402
from benchmarks._grid import load_results  # noqa: E402
from benchmarks._grid import mean_sd  # noqa: E402
from benchmarks._grid import pm  # noqa: E402
from benchmarks._grid import run_grid  # noqa: E402
from benchmarks._results import markdown_table  # noqa: E402
from benchmarks._results import not_yet_run  # noqa: E402
from benchmarks._results import write_section  # noqa: E402

SECTION = "early_exit"
ARCH_DIR = RESULTS_DIR / "early_exit_arch"
DATASETS = ["mnist", "fashion_mnist"]
ARMS = {
    "searched, per-round depths": ("searched", []),
    "searched, full depth (FedAvg)": ("searched", ["strategy.depths=[3]"]),
    "baseline, per-round depths": ("baseline", []),
    "searched, per-round depths + self-distillation": (
        "searched",
        ["client.self_distillation=1.0"],
    ),
}
PROTOCOL = {"rounds": 20, "clients": 10, "local_steps": 50, "batch_size": 32}
COMMAND = (
    "nice -n 10 .venv/bin/python benchmarks/bench_early_exit.py --commit --pin HEAD"
)
EXITS = (1, 2, 3)


def arch_path(dataset: str, seed: int) -> Path:
    return ARCH_DIR / f"{dataset}_s{seed}.json"


def search_cell(dataset: str, seed: int) -> Cell:
    return Cell.of(
        ["experiment=early_exit_search", f"dataset={dataset}", f"seed={seed}"],
        keep=["architecture.json"],
        dataset=dataset,
        arm="search",
        seed=seed,
    )


def federated_cell(dataset: str, arm: str, seed: int) -> Cell:
    net, extra = ARMS[arm]
    p = PROTOCOL
    overrides = [
        "experiment=early_exit",
        f"dataset={dataset}",
        "partition=dirichlet",
        "partition.alpha=0.5",
        f"simulation.num_clients={p['clients']}",
        f"simulation.num_rounds={p['rounds']}",
        "simulation.fraction_train=1.0",
        f"client.local_steps={p['local_steps']}",
        f"client.batch_size={p['batch_size']}",
        f"seed={seed}",
        *extra,
    ]
    if net == "searched":
        overrides.append(f"model.architecture={arch_path(dataset, seed)}")
    return Cell.of(overrides, dataset=dataset, arm=arm, seed=seed, **p)


def write_architectures() -> list[Path]:
    """The searched architectures of the raw search records, as files the federated
    cells read."""
    out = []
    for r in load_results(SECTION):
        if r["key"]["arm"] == "search":
            path = arch_path(r["key"]["dataset"], r["key"]["seed"])
            path.parent.mkdir(parents=True, exist_ok=True)
            text = json.dumps(r["files"]["architecture.json"], indent=2) + "\n"
            if not path.exists() or path.read_text() != text:
                path.write_text(text)
            out.append(path)
    return out


def report() -> list[Path]:
    touched = write_architectures()
    results = load_results(SECTION)
    by: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in results:
        by[(r["key"]["dataset"], r["key"]["arm"])].append(r)
    search_rows, rows = [], []
    for ds in DATASETS:
        searches = sorted(by.get((ds, "search"), []), key=lambda r: r["key"]["seed"])
        for r in searches:
            a = r["files"]["architecture.json"]
            search_rows.append(
                {
                    "dataset": ds,
                    "seed": r["key"]["seed"],
                    "chosen": " / ".join(a["choices"]),
                    "MACs per exit (M)": " / ".join(
                        f"{m / 1e6:.2f}" for m in a["macs_per_exit"]
                    ),
                    "params per exit (k)": " / ".join(
                        f"{p / 1e3:.1f}" for p in a["params_per_exit"]
                    ),
                    "baseline MACs per exit (M)": " / ".join(
                        f"{m / 1e6:.2f}" for m in a["baseline_macs_per_exit"]
                    ),
                    "shared-weight acc (chosen / baseline)": (
                        f"{a['accuracy']:.3f} / {a['baseline_accuracy']:.3f}"
                    ),
                    "search s": f"{a['search_wall_s']:.0f}",
                }
            )
        for arm in ARMS:
            cells_ = sorted(by.get((ds, arm), []), key=lambda r: r["key"]["seed"])
            if not cells_:
                continue
            last = [c["rounds"][-1] for c in cells_]
            row = {
                "dataset": ds,
                "arm": arm,
                "seeds": ",".join(str(c["key"]["seed"]) for c in cells_),
            }
            for i in EXITS:
                row[f"exit {i} acc (%)"] = pm(
                    [x[f"accuracy_exit_{i}"] for x in last], 100
                )
                row[f"exit {i} MACs (M)"] = pm(
                    [x[f"macs_exit_{i}"] for x in last], 1e-6
                )
            row["exit 1 / full MACs"] = pm(
                [x["macs_exit_1"] / x["macs_exit_3"] for x in last], 1
            )
            row["MB up"] = pm(
                [c["summary"]["total_bytes_up"] / 1e6 for c in cells_], 1, 1
            )
            row["wall s / cell"] = f"{mean_sd([c['wall_s'] for c in cells_])[0]:.0f}"
            rows.append(row)
    body = (
        "Real `bouquet-sim` runs in Flower's simulation engine: 10 clients, "
        "Dirichlet(0.5), all clients every round, "
        f"{PROTOCOL['rounds']} rounds of {PROTOCOL['local_steps']} local batches of "
        f"{PROTOCOL['batch_size']} "
        "(SGD lr 0.05, momentum 0.9), multi-exit loss with all exit weights 1. Test "
        "accuracy per exit after the last "
        "round (mean ± sd over seeds); MACs per sample of running up to each exit "
        "(stem + stages 1..i + exit i), "
        "counted on the model (`exit_macs`). Per-round depths: every node's depth "
        "redrawn each round from 1..3, "
        "seeded by (seed, round, partition-id). Raw per-cell results: "
        "`benchmarks/results/early_exit.jsonl`; "
        "plot: `benchmarks/early_exit_exits.png`.\n\n### Search (one per dataset and "
        "seed)\n\n"
        + markdown_table(
            search_rows, list(search_rows[0]) if search_rows else ["dataset"]
        )
        + "\n### Federated training: accuracy and cost per exit\n\n"
        + markdown_table(
            rows,
            [
                "dataset",
                "arm",
                "seeds",
                *[f"exit {i} acc (%)" for i in EXITS],
                *[f"exit {i} MACs (M)" for i in EXITS],
                "exit 1 / full MACs",
                "MB up",
                "wall s / cell",
            ],
        )
    )
    body += _reading(by)
    todo = [
        c
        for c in all_cells(DATASETS, list(ARMS), [0, 1, 2])
        if (c.key_dict["dataset"], c.key_dict["arm"], c.key_dict["seed"])
        not in {
            (r["key"]["dataset"], r["key"]["arm"], r["key"]["seed"]) for r in results
        }
    ]
    body += not_yet_run(
        ["{dataset}/{arm}/seed {seed}".format(**c.key_dict) for c in todo],
        COMMAND,
        shown=8,
    )
    write_section(
        "early-exit",
        "S2: early exits, accuracy and cost per exit (20 rounds, 3 seeds)",
        body,
        command=COMMAND + " (report: --report)",
    )
    png = plot(by)
    return [ROOT / "benchmarks/RESULTS.md", *touched, *([png] if png else [])]


def _paired(
    by: dict[tuple[str, str], list[dict]], ds: str, arm: str, ref: str, exit_i: int
) -> list[float]:
    """Per-seed differences of exit ``exit_i``'s final accuracy, ``arm`` minus
    ``ref``."""
    other = {
        c["key"]["seed"]: c["rounds"][-1][f"accuracy_exit_{exit_i}"]
        for c in by.get((ds, ref), [])
    }
    return [
        c["rounds"][-1][f"accuracy_exit_{exit_i}"] - other[c["key"]["seed"]]
        for c in by.get((ds, arm), [])
        if c["key"]["seed"] in other
    ]


def _reading(by: dict[tuple[str, str], list[dict]]) -> str:
    """The issue's goals checked on the raw results (computed, not written by hand)."""
    mixed, full, kd = (
        "searched, per-round depths",
        "searched, full depth (FedAvg)",
        "searched, per-round depths + self-distillation",
    )
    lines = [
        "",
        "**Goals, computed from the raw results** (paired by seed, mean ± sd, "
        "percentage points):",
        "",
    ]
    mn = by.get(("mnist", mixed), [])
    if mn:
        worst = min(
            min(c["rounds"][-1][f"accuracy_exit_{i}"] for i in EXITS) for c in mn
        )
        ratio = max(
            c["rounds"][-1]["macs_exit_1"] / c["rounds"][-1]["macs_exit_3"] for c in mn
        )
        lines.append(
            "- MNIST, searched network with per-round depths: lowest exit accuracy "
            "over all seeds and exits "
            f"{100 * worst:.2f}% (goal > 95%: "
            f"{'met' if worst > 0.95 else 'missed'}); exit 1 costs at most "
            f"{100 * ratio:.0f}% of the full network's MACs (goal <= 40%: "
            f"{'met' if ratio <= 0.4 else 'missed'})."
        )
    for ds in DATASETS:
        gap = _paired(by, ds, mixed, full, 3)
        if gap:
            m, sd = mean_sd(gap)
            lines.append(
                f"- {ds}: last exit, per-round depths minus full depth (FedAvg): "
                f"{100 * m:+.2f} ± {100 * sd:.2f} "
                f"(goal within 1 point: {'met' if m >= -0.01 else 'missed'})."
            )
        diffs = [_paired(by, ds, kd, mixed, i) for i in EXITS]
        if all(diffs):
            parts = []
            for i, d in zip(EXITS, diffs, strict=True):
                m, sd = mean_sd(d)
                parts.append(f"exit {i} {100 * m:+.2f} ± {100 * sd:.2f}")
            beyond = [abs(mean_sd(d)[0]) > mean_sd(d)[1] for d in diffs]
            lines.append(
                f"- {ds}: self-distillation minus none (per-round depths): "
                f"{', '.join(parts)}; "
                + (
                    "a difference beyond one sd of the pairs at exit(s) "
                    + ", ".join(str(i) for i, b in zip(EXITS, beyond, strict=True) if b)
                    if any(beyond)
                    else "no difference beyond one sd of the pairs"
                )
                + "."
            )
    lines.append("")
    lines.append(
        "The searched networks differ by seed (each seed runs its own search), hence "
        "the spread of their "
        "MACs. `shared-weight acc` is measured with the supernet's shared weights: "
        "the baseline network, "
        "which the controller rarely samples, is under-trained there, so that column "
        "ranks candidates only."
    )
    return "\n".join(lines) + "\n"


def plot(by: dict[tuple[str, str], list[dict]]) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = [d for d in DATASETS if any((d, a) in by for a in ARMS)]
    if not datasets:
        return None
    fig, axes = plt.subplots(
        1, len(datasets), figsize=(6.5 * len(datasets), 4.5), squeeze=False
    )
    for ax, ds in zip(axes[0], datasets, strict=True):
        for arm in ARMS:
            cells_ = by.get((ds, arm), [])
            if not cells_:
                continue
            macs = [
                mean_sd([c["rounds"][-1][f"macs_exit_{i}"] / 1e6 for c in cells_])[0]
                for i in EXITS
            ]
            acc = [
                mean_sd([c["rounds"][-1][f"accuracy_exit_{i}"] for c in cells_])
                for i in EXITS
            ]
            ax.errorbar(
                macs,
                [a[0] for a in acc],
                yerr=[a[1] for a in acc],
                marker="o",
                capsize=3,
                label=f"{arm} (n={len(cells_)})",
            )
        ax.set_xlabel("MACs per sample up to the exit (M)")
        ax.set_ylabel("test accuracy")
        ax.set_title(f"{ds}: accuracy vs cost per exit (exits 1, 2, 3)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    png = ROOT / "benchmarks/early_exit_exits.png"
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


def all_cells(datasets: list[str], arms: list[str], seeds: list[int]) -> list[Cell]:
    out = []
    for seed in seeds:  # seed-major: a partial grid has whole seeds
        for ds in datasets:
            out.append(search_cell(ds, seed))
            out += [federated_cell(ds, arm, seed) for arm in arms]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=DATASETS, choices=DATASETS)
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    grid_arguments(p)
    args = p.parse_args()
    if not args.report:
        for seed in args.seeds:
            for ds in args.datasets:
                # the search first: its architecture file is what the federated cells
                # read
                run_grid(
                    SECTION,
                    [search_cell(ds, seed)],
                    commit=args.commit,
                    after_cell=report,
                    pin=args.pin,
                )
                write_architectures()
                run_grid(
                    SECTION,
                    [federated_cell(ds, arm, seed) for arm in args.arms],
                    commit=args.commit,
                    after_cell=report,
                    pin=args.pin,
                )
    report()
    print(f"load average: {', '.join(f'{v:.1f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
