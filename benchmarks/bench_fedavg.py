"""FedAvg reference at the peer protocol (issue 15 §2): final and best accuracy and wall
time per cell.

Protocol (the FedAvg benchmark's, niid_bench-style): 10 clients, all of them every
round, 50 rounds, 10 local epochs, batch 64, SGD lr 0.01 momentum 0.9, LeNet; MNIST and
Fashion-MNIST; partitions IID, Dirichlet(0.5) and 2 labels per client first, then 1 and
3 labels; seed 0. One cell is ~30M samples, ~35 min on 2 cores. Every cell is a real
``bouquet-sim`` run in Flower's simulation engine; raw per-cell results in
``benchmarks/results/fedavg.jsonl`` (a finished cell is never rerun), the ``fedavg``
section of ``RESULTS.md`` rebuilt from them::

    # what is missing
    nice -n 10 .venv/bin/python benchmarks/bench_fedavg.py --commit --pin HEAD
    .venv/bin/python benchmarks/bench_fedavg.py --report
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._grid import Cell  # noqa: E402
from benchmarks._grid import grid_arguments  # noqa: E402
from benchmarks._grid import load_results  # noqa: E402
from benchmarks._grid import mean_sd  # noqa: E402
from benchmarks._grid import overhead_note  # noqa: E402
from benchmarks._grid import run_grid  # noqa: E402
from benchmarks._results import markdown_table  # noqa: E402
from benchmarks._results import not_yet_run  # noqa: E402
from benchmarks._results import write_section  # noqa: E402

SECTION = "fedavg"
PARTITIONS = {
    "iid": ["partition=iid"],
    "dir0.5": ["partition=dirichlet", "partition.alpha=0.5"],
    "2 labels": ["partition=pathological", "partition.labels_per_client=2"],
    "1 label": ["partition=pathological", "partition.labels_per_client=1"],
    "3 labels": ["partition=pathological", "partition.labels_per_client=3"],
}
# the six cells; 1 and 3 labels if time allows
FIRST = ["iid", "dir0.5", "2 labels"]
DATASETS = ["mnist", "fashion_mnist"]
PROTOCOL = {
    "model": "lenet",
    "rounds": 50,
    "local_epochs": 10,
    "batch_size": 64,
    "clients": 10,
}
COMMAND = "nice -n 10 .venv/bin/python benchmarks/bench_fedavg.py --commit --pin HEAD"


def cell(dataset: str, partition: str, seed: int = 0) -> Cell:
    p = PROTOCOL
    overrides = [
        f"dataset={dataset}",
        f"model={p['model']}",
        "strategy=fedavg",
        "client=plain",
        f"simulation.num_clients={p['clients']}",
        f"simulation.num_rounds={p['rounds']}",
        "simulation.fraction_train=1.0",
        f"client.local_epochs={p['local_epochs']}",
        f"client.batch_size={p['batch_size']}",
        "client.lr=0.01",
        "client.momentum=0.9",
        f"seed={seed}",
        *PARTITIONS[partition],
    ]
    return Cell.of(overrides, dataset=dataset, partition=partition, seed=seed, **p)


def cells(partitions: list[str], datasets: list[str], seeds: list[int]) -> list[Cell]:
    return [cell(ds, part, s) for s in seeds for part in partitions for ds in datasets]


def _accuracies(record: dict) -> list[float]:
    return [x["accuracy"] for x in record["rounds"] if x.get("accuracy") is not None]


def report() -> list[Path]:
    rows = []
    results = load_results(SECTION)
    final = {
        (r["key"]["dataset"], r["key"]["partition"], r["key"]["seed"]): _accuracies(r)[
            -1
        ]
        for r in results
    }
    for r in results:
        acc = _accuracies(r)
        iid = final.get((r["key"]["dataset"], "iid", r["key"]["seed"]))
        train_s = sum(x.get("client_train_s", 0.0) for x in r["rounds"])
        rounds_s = r["summary"].get("wall_s") or 0.0
        rows.append(
            {
                "dataset": r["key"]["dataset"],
                "partition": r["key"]["partition"],
                "seed": r["key"]["seed"],
                "final acc (%)": f"{100 * acc[-1]:.2f}",
                "best acc (%)": f"{100 * max(acc):.2f}",
                "final vs IID (pt)": ""
                if iid is None or r["key"]["partition"] == "iid"
                else f"{100 * (acc[-1] - iid):+.2f}",
                "wall min": f"{r['wall_s'] / 60:.1f}",
                "outside client training": (
                    f"{100 * max(0.0, 1 - train_s / 2 / rounds_s):.0f}%"
                    if rounds_s
                    else ""
                ),
            }
        )
    done = set(final)
    todo = [
        c
        for c in cells(list(PARTITIONS), DATASETS, [0])
        if (c.key_dict["dataset"], c.key_dict["partition"], c.key_dict["seed"])
        not in done
    ]
    body = (
        "Real `bouquet-sim` runs in Flower's simulation engine at the FedAvg "
        "benchmark's protocol: 10 clients, all "
        "every round, 50 rounds, 10 local epochs, batch 64, SGD lr 0.01 momentum "
        "0.9, LeNet; seed 0. `outside client "
        "training` = 1 - client training seconds / 2 parallel slots / the run's "
        "round time. Raw per-cell results: "
        "`benchmarks/results/fedavg.jsonl`. It counts server work and a slot's idle "
        "time while the other slot "
        "trains a larger client (client sizes differ under Dirichlet and label "
        "skew).\n\n"
    )
    body += markdown_table(rows, list(rows[0])) if rows else "No cell yet.\n"
    body += overhead_note(results)
    if todo:
        each = "" if len(todo) == 1 else " each"
        per_cell = (
            f"{mean_sd([r['wall_s'] / 60 for r in results])[0]:.0f} min{each} as "
            "measured here"
            if results
            else f"~35 min{each} on 2 cores, estimated"
        )
        first = any(c.key_dict["partition"] in FIRST for c in todo)
        body += not_yet_run(
            ["{dataset}/{partition}".format(**c.key_dict) for c in todo],
            COMMAND if first else COMMAND + ' --partitions "1 label" "3 labels"',
            shown=len(todo),
            note=f", {per_cell}",
        )
    write_section(
        SECTION,
        "FedAvg reference at the peer protocol (50 rounds x 10 local epochs)",
        body,
        command=COMMAND + " (report: --report)",
    )
    return [ROOT / "benchmarks/RESULTS.md"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=DATASETS, choices=DATASETS)
    p.add_argument("--partitions", nargs="+", default=FIRST, choices=list(PARTITIONS))
    grid_arguments(p, [0])
    args = p.parse_args()
    if not args.report:
        run_grid(
            SECTION,
            cells(args.partitions, args.datasets, args.seeds),
            commit=args.commit,
            after_cell=report,
            pin=args.pin,
        )
    report()
    print(f"load average: {', '.join(f'{v:.1f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
