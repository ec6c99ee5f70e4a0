"""Accuracy against megabytes uploaded: dense FedAvg vs top-k (+-EF), ternary and STC.

Every cell is a real ``bouquet-sim`` run (10 clients, Dirichlet(0.5), the same rounds and seed
for all); bytes are the bytes of ``Array.data`` that crossed the grid (``metrics.jsonl``).
Cells whose ``summary.json`` exists are skipped, so the script can be resumed. Writes the
``compression`` section of ``benchmarks/RESULTS.md`` and ``benchmarks/compression_curves.png``.

Full grid (issue 3)::

    nice -n 10 .venv/bin/python benchmarks/bench_compression.py --datasets mnist fashion_mnist \\
        --model lenet --rounds 30 --local-epochs 1

Reduced default (fits ~10 CPU minutes on 2 shared cores): MNIST only, MLP, 10 rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._results import markdown_table, write_section  # noqa: E402

CELLS: dict[str, list[str]] = {
    "plain": ["client=plain"],
    "topk 1% + EF": ["client=topk", "client.alpha=0.01", "client.residual_decay=1.0"],
    "topk 1% no EF": ["client=topk", "client.alpha=0.01", "client.residual_decay=0.0"],
    "topk 0.1% + EF": ["client=topk", "client.alpha=0.001", "client.residual_decay=1.0"],
    "topk 0.1% no EF": ["client=topk", "client.alpha=0.001", "client.residual_decay=0.0"],
    "ternary": ["client=ternary"],
    "STC 1%": ["client=stc", "client.alpha=0.01"],
}


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_").replace("__", "_")


def run_cell(dataset: str, name: str, args: argparse.Namespace, out: Path) -> Path:
    run_dir = out / dataset / slug(name)
    if (run_dir / "summary.json").exists():
        print(f"skip {dataset}/{name} (done)")
        return run_dir
    cmd = [
        str(ROOT / ".venv/bin/bouquet-sim"), f"dataset={dataset}", f"model={args.model}", "partition=dirichlet",
        "partition.alpha=0.5", f"simulation.num_clients={args.clients}", f"simulation.num_rounds={args.rounds}",
        f"client.local_epochs={args.local_epochs}", f"seed={args.seed}", f"hydra.run.dir={run_dir}", *CELLS[name],
    ]
    env = {**os.environ, "BOUQUET_DATA": str(ROOT / ".data"), "FLWR_TELEMETRY_ENABLED": "0",
           "FLWR_DISABLE_UPDATE_CHECK": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    t0 = time.time()
    print(f"run {dataset}/{name}: {' '.join(cmd[1:])}", flush=True)
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{dataset}/{name} failed:\n{res.stderr[-3000:]}")
    print(f"  done in {time.time() - t0:.0f} s", flush=True)
    return run_dir


def load_curve(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=["mnist"])
    p.add_argument("--cells", nargs="+", default=list(CELLS))
    p.add_argument("--model", default="mlp")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--local-epochs", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "benchmarks/.runs/compression"))
    args = p.parse_args()
    out = Path(args.out)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(args.datasets), figsize=(6 * len(args.datasets), 4.5), squeeze=False)
    rows = []
    for ax, dataset in zip(axes[0], args.datasets, strict=True):
        curves = {name: load_curve(run_cell(dataset, name, args, out)) for name in args.cells}
        plain = curves.get("plain")
        plain_up = sum(r["bytes_up"] for r in plain) if plain else None
        plain_acc = plain[-1]["accuracy"] if plain else None
        for name, curve in curves.items():
            mb, total = [], 0
            for r in curve:
                total += r["bytes_up"]
                mb.append(total / 1e6)
            pts = [(m, r["accuracy"]) for m, r in zip(mb, curve, strict=True) if m > 0]  # round 0: nothing sent yet
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", label=name)
            up = sum(r["bytes_up"] for r in curve)
            rows.append({
                "dataset": dataset, "method": name, "final acc": round(curve[-1]["accuracy"], 4),
                "best acc": round(max(r["accuracy"] for r in curve), 4),
                "acc - plain (pt)": None if plain_acc is None else round(100 * (curve[-1]["accuracy"] - plain_acc), 2),
                "MB up": round(up / 1e6, 4), "x fewer bytes": None if not plain_up else round(plain_up / max(up, 1), 1),
                "failed": sum(r["clients_failed"] for r in curve),
            })
        ax.set_xscale("log")
        ax.set_xlabel("MB uploaded (cumulative, all clients)")
        ax.set_ylabel("test accuracy")
        ax.set_title(f"{dataset}: {args.clients} clients, Dirichlet(0.5), {args.model}, {args.rounds} rounds")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(ROOT / "benchmarks/compression_curves.png", dpi=110)
    cols = ["dataset", "method", "final acc", "best acc", "acc - plain (pt)", "MB up", "x fewer bytes", "failed"]
    reduced = (args.datasets != ["mnist", "fashion_mnist"] or args.model != "lenet" or args.rounds < 30)
    body = (
        f"Real `bouquet-sim` runs: {args.clients} clients, Dirichlet(0.5), model `{args.model}`, {args.rounds} rounds, "
        f"{args.local_epochs} local epoch(s), seed {args.seed}; bytes are the measured `Array.data` bytes of all train "
        "replies. Plot: `benchmarks/compression_curves.png`.\n\n" + markdown_table(rows, cols)
    )
    if reduced:
        body += (
            "\n\n**Reduced grid** (2 CPU cores shared by several engineers). The issue's full grid is "
            "`nice -n 10 .venv/bin/python benchmarks/bench_compression.py --datasets mnist fashion_mnist "
            "--model lenet --rounds 30`."
        )
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    body += f"\n\nLoad average when the table was written: {load} on {os.cpu_count()} shared cores.\n"
    write_section("compression", "Compressed uploads: accuracy vs MB uploaded", body, command=" ".join(sys.argv))
    print(markdown_table(rows, cols))


if __name__ == "__main__":
    main()
