"""Server-side adjustment on shared data vs FedAvg, and the shared data alone trained centrally.

Arms per partition and seed: ``fedavg`` (``server=none``, clients hold all training data),
``adjust 1%`` / ``adjust 5%`` (``server=adjust``, the server fine-tunes each round's aggregate
for ``server.epochs`` epochs on a class-balanced 1% / 5% slice carved out of the training set
before partitioning), and ``central 1%`` / ``central 5%``: the same slice and the same
:class:`~bouquet.simulations.adjust.ServerAdjuster`, applied ``rounds`` times from the initial
model with no clients at all (so any gain over it is not just the shared data). Federated
cells run like ``bench_kl`` (real server and ClientApp code, clients in-process); they are
resumable (cells whose ``summary.json`` says ``ok`` under ``benchmarks/.runs/adjust/`` are
skipped). Writes the ``adjust`` section of ``benchmarks/RESULTS.md``.

Full grid of issue 5::

    nice -n 10 .venv/bin/python benchmarks/bench_adjust.py --datasets mnist fashion_mnist \\
        --partitions path1 path2 path3 dir0.5 --seeds 0 1 2 --rounds 30 --model lenet

Reduced default: MNIST, 10 clients, MLP, 2 seeds, 10 rounds of 1 local epoch.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._results import markdown_table, write_section  # noqa: E402
from benchmarks.bench_kl import PARTITIONS, compose_cfg, mean_sd, reproduce_command, run_cell, slug  # noqa: E402

FEDERATED: dict[str, list[str]] = {
    "fedavg": ["server=none", "server.shared_fraction=0.0"],
    "adjust 1%": ["server=adjust", "server.shared_fraction=0.01"],
    "adjust 5%": ["server=adjust", "server.shared_fraction=0.05"],
}
CENTRAL = {"central 1%": 0.01, "central 5%": 0.05}


def central_accuracy(overrides: list[str], fraction: float, rounds: int, out: Path) -> float:
    """Test accuracy of the shared slice alone, trained by the server's adjuster ``rounds`` times."""
    path = out / "central.json"
    if path.exists():
        return float(json.loads(path.read_text())["accuracy"])
    from flwr.app import Array, ArrayRecord

    from bouquet.simulations.adjust import build_adjust_fn
    from bouquet.simulations.experiment import Experiment

    cfg = compose_cfg([*overrides, "server=adjust", f"server.shared_fraction={fraction}", "server.record_before=false"])
    exp = Experiment(cfg)
    adjust = build_adjust_fn(cfg, exp)
    arrays = ArrayRecord({k: Array(v) for k, v in exp.initial_arrays().items()})
    for rnd in range(1, rounds + 1):
        arrays, _ = adjust(arrays, rnd)
    acc = exp.evaluate_arrays({k: v.numpy() for k, v in arrays.items()})["accuracy"]
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"accuracy": acc, "shared_samples": int(len(adjust.y))}))
    return float(acc)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=["mnist"])
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--partitions", nargs="+", default=["path1", "path2", "path3", "dir0.5"], choices=list(PARTITIONS))
    p.add_argument("--arms", nargs="+", default=[*FEDERATED, *CENTRAL], choices=[*FEDERATED, *CENTRAL])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--local-epochs", type=int, default=1)
    p.add_argument("--model", default="mlp")
    p.add_argument("--out", default=str(ROOT / "benchmarks/.runs/adjust"))
    p.add_argument("--no-write", action="store_true", help="print the table, leave RESULTS.md alone")
    p.add_argument("--report-only", action="store_true", help="tabulate the finished cells, run nothing")
    p.add_argument("--note", default="", help="markdown appended to the RESULTS.md section (observations)")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("flwr").setLevel(logging.WARNING)
    out = Path(args.out)
    table: list[dict] = []
    for ds in args.datasets:
        for part in args.partitions:
            for arm in args.arms:
                finals: list[float] = []
                befores: list[float] = []
                for seed in args.seeds:
                    base = [f"dataset={ds}", f"model={args.model}", f"simulation.num_clients={args.clients}",
                            f"simulation.num_rounds={args.rounds}", f"client.local_epochs={args.local_epochs}",
                            f"seed={seed}", *PARTITIONS[part]]
                    run_dir = out / ds / part / slug(arm) / f"s{seed}"
                    if arm in CENTRAL:
                        if args.report_only and not (run_dir / "central.json").exists():
                            continue
                        print(f"central {ds}/{part}/{arm}/s{seed}", flush=True)
                        finals.append(central_accuracy(base, CENTRAL[arm], args.rounds, run_dir))
                        continue
                    cell = run_cell(run_dir, [*base, *FEDERATED[arm]], args.report_only)
                    if cell is None:
                        continue
                    rows, summary = cell
                    finals.append(summary["final_accuracy"])
                    if rows[-1].get("acc_before_adjust") is not None:
                        befores.append(rows[-1]["acc_before_adjust"])
                if not finals:
                    continue
                table.append({
                    "dataset": ds, "partition": part, "arm": arm, "seeds": len(finals),
                    "final acc (mean ± sd)": mean_sd(finals),
                    "per seed": " ".join(f"{a:.3f}" for a in finals),
                    "last round before adjust": mean_sd(befores) if befores else "",
                })
    cols = ["dataset", "partition", "arm", "seeds", "final acc (mean ± sd)", "per seed", "last round before adjust"]
    body = (
        f"Setup: {args.model} model, {args.clients} clients, {args.rounds} rounds, {args.local_epochs} local epoch(s), "
        f"client SGD lr 0.01 momentum 0.9 batch 32; server adjustment 1 epoch SGD lr 0.01 momentum 0.9 batch 32, "
        f"no proximal term, every round. `central x%` = the x% slice alone, "
        f"trained by the same adjuster for {args.rounds} epochs. 'last round before adjust' = test accuracy "
        "of the last round's aggregate before the server's step.\n\n" + markdown_table(table, cols)
        + ("\n" + args.note if args.note else "")
    )
    if not args.no_write:
        write_section("adjust", "Server-side adjustment on a shared dataset (issue 5)", body, reproduce_command())
    print(markdown_table(table, cols))


if __name__ == "__main__":
    main()
