"""FedAvg baseline grid (issue 2): final accuracy per cell, wall time, engine overhead.

Protocol (niid_bench-style): 10 clients, all of them every round, 50 rounds, 10 local epochs,
batch 64, SGD momentum 0.9, the LeNet-style CNN; partitions IID, Dirichlet(0.5) and 1/2/3 labels
per client; MNIST and Fashion-MNIST. One full cell is ~30M samples (~35 min on 2 cores), so
``--rounds``/``--epochs`` reduce it; the script is resumable (a cell whose JSON exists under
``benchmarks/.runs/fedavg/`` is not run again) and writes every finished cell into RESULTS.md.

Overhead share of a round = 1 - (sum of client training seconds / parallel slots) / round wall
time: the part of the round spent outside client training (engine, serialisation, server-side
evaluation), with ``slots = min(clients, cores / client_cpus)``.

Usage::

    python benchmarks/bench_fedavg.py                      # full protocol (hours)
    python benchmarks/bench_fedavg.py --rounds 5 --epochs 1 --datasets mnist
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import markdown_table, write_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "benchmarks" / ".runs" / "fedavg"
PARTITIONS = {
    "iid": ["partition=iid"],
    "dir0.5": ["partition=dirichlet", "partition.alpha=0.5"],
    "1-label": ["partition=pathological", "partition.labels_per_client=1"],
    "2-labels": ["partition=pathological", "partition.labels_per_client=2"],
    "3-labels": ["partition=pathological", "partition.labels_per_client=3"],
}


def run_cell(dataset: str, part: str, args: argparse.Namespace) -> dict:
    name = f"{dataset}-{part}-r{args.rounds}-e{args.epochs}-s{args.seed}"
    out = RUNS / f"{name}.json"
    if out.exists():
        return json.loads(out.read_text())
    run_dir = RUNS / name
    overrides = [
        f"dataset={dataset}",
        *PARTITIONS[part],
        "model=lenet",
        "strategy=fedavg",
        "simulation.num_clients=10",
        f"simulation.num_rounds={args.rounds}",
        "simulation.fraction_train=1.0",
        f"client.local_epochs={args.epochs}",
        "client.batch_size=64",
        "client.momentum=0.9",
        f"client.lr={args.lr}",
        f"seed={args.seed}",
        "simulation.checkpoint_every=0",
        f"hydra.run.dir={run_dir}",
    ]
    start = time.perf_counter()
    proc = subprocess.run([str(Path(sys.executable).with_name("bouquet-sim")), *overrides], capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"cell {name} failed:\n{proc.stderr[-2000:]}")
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((run_dir / "summary.json").read_text())
    slots = min(10, os.cpu_count() or 1)
    shares = [1 - (r["client_train_s"] / slots) / r["wall_s"] for r in rows[1:] if r["wall_s"] > 0]
    result = {
        "dataset": dataset,
        "partition": part,
        "rounds": args.rounds,
        "epochs": args.epochs,
        "seed": args.seed,
        "final_accuracy": summary["final_accuracy"],
        "best_accuracy": summary["best_accuracy"],
        "wall_s": round(time.perf_counter() - start, 1),
        "mean_round_s": round(sum(r["wall_s"] for r in rows[1:]) / max(1, len(rows) - 1), 2),
        "overhead_share": round(sum(shares) / max(1, len(shares)), 3),
    }
    RUNS.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default="mnist,fashion_mnist")
    parser.add_argument("--partitions", default=",".join(PARTITIONS))
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    results = []
    for dataset in args.datasets.split(","):
        for part in args.partitions.split(","):
            res = run_cell(dataset, part, args)
            print(json.dumps(res), flush=True)
            results.append(res)
    done = [json.loads(p.read_text()) for p in sorted(RUNS.glob("*.json"))]
    body = (
        "FedAvg, LeNet-style CNN, 10 clients all participating, batch 64, SGD momentum 0.9, lr 0.01.\n"
        "`overhead_share` = share of a round's wall time outside client training "
        "(1 - client training seconds / 2 parallel slots / round wall time).\n\n"
        + markdown_table(done, ["dataset", "partition", "rounds", "epochs", "seed", "final_accuracy", "best_accuracy", "mean_round_s", "overhead_share", "wall_s"])
        + "\nThe full protocol (50 rounds x 10 local epochs) is ~35 min per cell on 2 cores; cells with fewer "
        "rounds/epochs are reduced runs. Run the rest with `python benchmarks/bench_fedavg.py` "
        "(resumable).\n"
    )
    write_section("fedavg", "FedAvg baseline grid (issue 2)", body)


if __name__ == "__main__":
    main()
