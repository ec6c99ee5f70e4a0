"""Server-side adjustment on a shared dataset vs FedAvg and vs the shared data alone
(issue 15 §3).

Protocol: MNIST and Fashion-MNIST, 10 clients, all clients every round, LeNet, 30
rounds, 1 local epoch, batch 32, SGD lr 0.01 momentum 0.9; partitions 1, 2, 3 labels per
client and Dirichlet(0.5); seeds 0, 1, 2. Arms:

- ``fedavg``: ``server=none``, the clients hold all training data;
- ``adjust x%``: ``server=adjust``, the server fine-tunes every round's aggregate for
  one epoch on a class-balanced x% slice carved out of the training set before
  partitioning;
- ``central x%``: the same slice and the same adjuster applied 30 times to the initial
  model, with no clients (``benchmarks/central_adjust.py``); it does not depend on the
  partition.

Every federated cell is a real ``bouquet-sim`` run in Flower's simulation engine. Raw
per-cell results: ``benchmarks/results/adjust.jsonl`` (a finished cell is never rerun).
``--report`` rebuilds the ``adjust`` section of ``RESULTS.md`` from that file alone::

    # run what is missing
    nice -n 10 .venv/bin/python benchmarks/bench_adjust.py --commit --pin HEAD
    # table only
    .venv/bin/python benchmarks/bench_adjust.py --report
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._grid import LENET_PROTOCOL  # noqa: E402
from benchmarks._grid import Cell  # noqa: E402
from benchmarks._grid import grid_arguments  # noqa: E402
from benchmarks._grid import lenet_overrides  # noqa: E402
from benchmarks._grid import load_results  # noqa: E402
from benchmarks._grid import mean_sd  # noqa: E402
from benchmarks._grid import overhead_note  # noqa: E402
from benchmarks._grid import pm  # noqa: E402
from benchmarks._grid import run_grid  # noqa: E402
from benchmarks._results import markdown_table  # noqa: E402
from benchmarks._results import not_yet_run  # noqa: E402
from benchmarks._results import write_section  # noqa: E402

SECTION = "adjust"
PARTITIONS: dict[str, list[str]] = {
    "1 label": ["partition=pathological", "partition.labels_per_client=1"],
    "2 labels": ["partition=pathological", "partition.labels_per_client=2"],
    "3 labels": ["partition=pathological", "partition.labels_per_client=3"],
    "dir0.5": ["partition=dirichlet", "partition.alpha=0.5"],
}
ARMS: dict[str, list[str]] = {
    "fedavg": ["server=none"],
    "adjust 5%": ["server=adjust", "server.shared_fraction=0.05"],
    "adjust 1%": ["server=adjust", "server.shared_fraction=0.01"],
    # stronger or gentler server steps (issue 15 §3), not in the default grid
    "adjust 5% lr 0.003": [
        "server=adjust",
        "server.shared_fraction=0.05",
        "server.lr=0.003",
    ],
    "adjust 5% 3 epochs prox 0.1": [
        "server=adjust",
        "server.shared_fraction=0.05",
        "server.epochs=3",
        "server.proximal_mu=0.1",
    ],
    "adjust 5% every 3 rounds": [
        "server=adjust",
        "server.shared_fraction=0.05",
        "server.every_n_rounds=3",
    ],
}
CENTRAL = {"central 5%": 0.05, "central 1%": 0.01}
DEFAULT_ARMS = ["fedavg", "adjust 5%", "central 5%"]
DATASETS = ["fashion_mnist", "mnist"]
PROTOCOL = LENET_PROTOCOL
COMMAND = "nice -n 10 .venv/bin/python benchmarks/bench_adjust.py --commit --pin HEAD"


def base(dataset: str, seed: int) -> list[str]:
    return lenet_overrides(dataset, seed)


def cells(
    datasets: list[str], partitions: list[str], arms: list[str], seeds: list[int]
) -> list[Cell]:
    out = []
    for seed in seeds:  # seed-major: a partial grid has whole seeds
        for ds in datasets:
            for arm in arms:
                if arm in CENTRAL:
                    out.append(
                        Cell.of(
                            [*base(ds, seed), f"server.shared_fraction={CENTRAL[arm]}"],
                            script="central_adjust.py",
                            dataset=ds,
                            partition="-",
                            arm=arm,
                            seed=seed,
                            **PROTOCOL,
                        )
                    )
            for part in partitions:
                for arm in arms:
                    if arm not in CENTRAL:
                        out.append(
                            Cell.of(
                                [*base(ds, seed), *PARTITIONS[part], *ARMS[arm]],
                                dataset=ds,
                                partition=part,
                                arm=arm,
                                seed=seed,
                                **PROTOCOL,
                            )
                        )
    return out


def report() -> list[Path]:
    results = load_results(SECTION)
    final: dict[tuple[str, str, str], dict[int, float]] = defaultdict(dict)
    before: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for r in results:
        k = r["key"]
        final[(k["dataset"], k["partition"], k["arm"])][k["seed"]] = r["rounds"][-1][
            "accuracy"
        ]
        if r["rounds"][-1].get("acc_before_adjust") is not None:
            before[(k["dataset"], k["partition"], k["arm"])].append(
                r["rounds"][-1]["acc_before_adjust"]
            )
    rows = []
    for ds in DATASETS:
        for part in PARTITIONS:
            for arm in [*ARMS, *CENTRAL]:
                accs = final.get((ds, "-" if arm in CENTRAL else part, arm))
                if not accs:
                    continue
                row = {
                    "dataset": ds,
                    "partition": part,
                    "arm": arm,
                    "seeds": ",".join(map(str, sorted(accs))),
                    "final acc (%)": pm(list(accs.values()), 100),
                }
                if arm.startswith("adjust"):
                    frac = arm.split()[1]
                    for ref, col in (
                        (("fedavg", part), "vs fedavg (pt)"),
                        ((f"central {frac}", "-"), "vs central (pt)"),
                    ):
                        other = final.get((ds, ref[1], ref[0]), {})
                        diffs = [accs[s] - other[s] for s in accs if s in other]
                        row[col] = pm(diffs, 100) if diffs else ""
                    row["before adjust (%)"] = pm(before[(ds, part, arm)], 100)
                rows.append(row)
    cols = [
        "dataset",
        "partition",
        "arm",
        "seeds",
        "final acc (%)",
        "vs fedavg (pt)",
        "vs central (pt)",
        "before adjust (%)",
    ]
    goals = []
    for ds in DATASETS:
        for part in ("1 label", "2 labels", "3 labels"):
            adj, fed, cen = (
                final.get((ds, p_, a), {})
                for p_, a in (
                    (part, "adjust 5%"),
                    (part, "fedavg"),
                    ("-", "central 5%"),
                )
            )
            seeds = sorted(set(adj) & set(fed) & set(cen))
            if not seeds:
                continue
            margin = 2.0 if part != "1 label" else 0.0
            d_fed = [100 * (adj[s] - fed[s]) for s in seeds]
            d_cen = [100 * (adj[s] - cen[s]) for s in seeds]
            worst = min(sum(d_fed) / len(seeds), sum(d_cen) / len(seeds))
            verdict = "met" if worst > margin else "**missed**"
            within = [
                name
                for name, d in (("FedAvg", d_fed), ("central", d_cen))
                if len(d) > 1 and abs(sum(d) / len(d)) <= mean_sd(d)[1]
            ]
            goals.append(
                f"{ds} {part} ({len(seeds)} seed{'s' if len(seeds) != 1 else ''}): "
                f"adjust 5% vs FedAvg {pm(d_fed)}, vs central {pm(d_cen)} points "
                "(goal: beat both"
                + (f" by >= {margin:g}" if margin else "")
                + f"): {verdict}"
                + (
                    f"; the difference from {' and '.join(within)} is within its "
                    "seed spread"
                    if within
                    else ""
                )
                + (
                    f"; FedAvg's {headroom_from:.2f}% leaves less than {margin:g} "
                    "points to 100%"
                    if margin
                    and (headroom_from := 100 * sum(fed[s] for s in seeds) / len(seeds))
                    > 100 - margin
                    else ""
                )
            )
    todo = [
        c
        for c in cells(DATASETS, list(PARTITIONS), DEFAULT_ARMS, [0, 1, 2])
        if c.key_dict["seed"]
        not in final.get(
            (c.key_dict["dataset"], c.key_dict["partition"], c.key_dict["arm"]), {}
        )
    ]
    body = (
        "Real `bouquet-sim` runs in Flower's simulation engine: 10 clients, all "
        "clients every round, LeNet, 30 rounds, "
        "1 local epoch, batch 32, SGD lr 0.01 momentum 0.9. Server adjustment: 1 "
        "epoch of SGD (lr 0.01, momentum 0.9, "
        "batch 32, no proximal term) on the shared slice after every aggregation. "
        "`central x%`: the slice alone, "
        "the same adjuster applied 30 times from the initial model (independent of "
        "the partition). FedAvg's clients "
        "hold all training data; in the adjust arms they lose the x% slice. `vs "
        "fedavg` / `vs central` are paired by "
        "seed; `before adjust` is the last round's aggregate before the server's "
        "step. Variant arms change one setting of "
        "the server's step: `lr 0.003`, `3 epochs prox 0.1` (3 epochs with 0.1 ||w - "
        "w_agg||^2 added to the loss), "
        "`every 3 rounds` (adjust after rounds 3, 6, ..., 30). Mean ± sd over seeds. "
        "Raw per-cell results: `benchmarks/results/adjust.jsonl`.\n\n"
        + markdown_table(rows, cols)
        + (
            "\nGoals (issue 15 §3, means of the paired differences, computed from "
            "the raw file):\n\n" + "".join(f"- {g}\n" for g in goals)
            if goals
            else ""
        )
    ) + overhead_note(results)
    body += not_yet_run(
        ["{dataset}/{partition}/{arm}/seed {seed}".format(**c.key_dict) for c in todo],
        COMMAND,
        shown=10,
        note=" of the default arms",
    )
    write_section(
        SECTION,
        "Server-side adjustment on a shared dataset (LeNet, 30 rounds)",
        body,
        command=COMMAND + " (report: --report)",
    )
    return [ROOT / "benchmarks/RESULTS.md"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=DATASETS, choices=DATASETS)
    p.add_argument(
        "--partitions", nargs="+", default=list(PARTITIONS), choices=list(PARTITIONS)
    )
    p.add_argument("--arms", nargs="+", default=DEFAULT_ARMS, choices=[*ARMS, *CENTRAL])
    grid_arguments(p)
    args = p.parse_args()
    if not args.report:
        run_grid(
            SECTION,
            cells(args.datasets, args.partitions, args.arms, args.seeds),
            commit=args.commit,
            after_cell=report,
            pin=args.pin,
        )
    report()
    print(f"load average: {', '.join(f'{v:.1f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
