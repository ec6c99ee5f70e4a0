"""Benchmark of method S2: searched vs baseline early-exit backbone, and depth-heterogeneous FL.

For each dataset it runs (real ``bouquet-sim`` runs, resumable: a cell whose run directory has a
``summary.json`` is not run again)

1. the search (``experiment=s2_search``): wall time, chosen network, shared-weight validation
   accuracy of the searched and the baseline network;
2. parameters and MACs per exit of the searched and the baseline early-exit models;
3. federated training (``experiment=s2_federated``) of the searched architecture with mixed
   depths (drawn uniformly per node), all full depth (= FedAvg) and all shallow (depth 1), and
   of the baseline architecture with mixed depths: accuracy per exit after the last round.

The default is reduced to fit ~10 minutes of a shared 2-core machine (MNIST only, 20 search
steps, 10 clients with 30% sampled per round, 3 rounds); the full grid is::

    python benchmarks/bench_early_exit.py --datasets mnist fashion_mnist --search-steps 40 \\
        --clients 10 --fraction 1.0 --rounds 10
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
sys.path.insert(0, str(ROOT / "benchmarks"))

from _results import markdown_table, write_section  # noqa: E402

from bouquet.models.early_exit import build_early_exit  # noqa: E402
from bouquet.models.nas import count_params  # noqa: E402

ENV = {**os.environ,
       "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1", "RAY_USAGE_STATS_ENABLED": "0"}
SHAPES = {"mnist": (1, 28, 28), "fashion_mnist": (1, 28, 28), "digits": (1, 8, 8)}


def run_cell(run_dir: Path, overrides: list[str]) -> dict:
    """Run ``bouquet-sim`` once (skipped when ``summary.json`` exists); return its summary."""
    summary = run_dir / "summary.json"
    if not (summary.exists() and json.loads(summary.read_text()).get("status") == "ok"):
        exe = Path(sys.executable).with_name("bouquet-sim")
        cmd = ["nice", "-n", "10", str(exe), *overrides, f"hydra.run.dir={run_dir}"]
        print("running:", " ".join(cmd[3:]), flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=ENV, cwd=ROOT, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
        print(f"  done in {time.perf_counter() - t0:.0f} s", flush=True)
    return json.loads(summary.read_text())


def model_costs(shape: tuple[int, ...], arch_path: str | None) -> dict:
    from bouquet.models.early_exit import exit_macs

    model = build_early_exit(shape, 10, seed=0, architecture=arch_path)
    subs = [count_params(model.submodel(d)) for d in range(1, model.num_exits + 1)]
    return {"choices": " / ".join(model.architecture.choices), "params_per_exit": subs, "macs_per_exit": exit_macs(model)}


def last_row(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])


def bench_dataset(ds: str, args: argparse.Namespace, out: Path) -> tuple[list[dict], list[dict], dict]:
    search_dir = out / ds / "search"
    search = run_cell(search_dir, ["experiment=s2_search", f"dataset={ds}", f"search.steps={args.search_steps}"])
    arch = json.loads((search_dir / "architecture.json").read_text())
    arch_path = str(search_dir / "architecture.json")
    searched, baseline = model_costs(SHAPES[ds], arch_path), model_costs(SHAPES[ds], None)
    models = [
        {"dataset": ds, "network": "searched", **searched, "shared_weight_val_acc": arch["accuracy"]},
        {"dataset": ds, "network": "baseline", **baseline, "shared_weight_val_acc": arch["baseline_accuracy"]},
    ]
    common = [f"dataset={ds}", f"simulation.num_clients={args.clients}", f"simulation.fraction_train={args.fraction}",
              f"simulation.num_rounds={args.rounds}", "experiment=s2_federated"]
    cells = [
        ("searched", "mixed (1,2,3)", [f"model.architecture={arch_path}"]),
        ("searched", "all full (3)", [f"model.architecture={arch_path}", "strategy.depths=[3]"]),
        ("searched", "all shallow (1)", [f"model.architecture={arch_path}", "strategy.depths=[1]"]),
        ("baseline", "mixed (1,2,3)", []),
    ]
    fed = []
    for net, depths, extra in cells:
        name = f"{net}-" + depths.split(" (")[0].replace(" ", "-")  # searched-all-full, ...
        summary = run_cell(out / ds / name, common + extra)
        row = last_row(out / ds / name)
        info = json.loads((out / ds / name / "best_exit.json").read_text())
        fed.append({
            "dataset": ds, "network": net, "depths": depths,
            **{f"acc_exit_{i}": row.get(f"accuracy_exit_{i}") for i in (1, 2, 3)},
            "best_exit": f"exit {info['exit']} (round {info['round']})",
            "MB_up": summary["total_bytes_up"] / 1e6, "wall_s": summary["wall_s"],
        })
    return models, fed, {"dataset": ds, "search_wall_s": search["wall_s"], "steps": args.search_steps,
                         "chosen": " / ".join(arch["choices"]), "reward": arch["reward"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["mnist"])
    parser.add_argument("--search-steps", type=int, default=20)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--fraction", type=float, default=0.3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "outputs" / "bench_early_exit"))
    args = parser.parse_args()
    out = Path(args.out)
    models, fed, searches = [], [], []
    for ds in args.datasets:
        m, f, s = bench_dataset(ds, args, out)
        models += m
        fed += f
        searches.append(s)
    body = (
        f"Reduced grid: datasets {', '.join(args.datasets)}; search {args.search_steps} controller steps; "
        f"federated: {args.clients} clients (Dirichlet 0.5), {args.fraction:.0%} sampled per round, "
        f"{args.rounds} rounds, 1 local epoch. Full grid: see the docstring of `benchmarks/bench_early_exit.py`.\n\n"
        "### Search\n\n" + markdown_table(searches, ["dataset", "steps", "search_wall_s", "chosen", "reward"])
        + "\n### Searched vs baseline network (params and MACs per exit; accuracy with the shared search weights)\n\n"
        + markdown_table(models, ["dataset", "network", "choices", "params_per_exit", "macs_per_exit", "shared_weight_val_acc"])
        + "\n### Federated training: test accuracy per exit after the last round\n\n"
        + markdown_table(fed, ["dataset", "network", "depths", "acc_exit_1", "acc_exit_2", "acc_exit_3", "best_exit", "MB_up", "wall_s"])
        + "\nNotes: `shared_weight_val_acc` is measured with the supernet's shared weights, so a network the "
        "controller stopped sampling (often the baseline) is under-trained there; the federated rows compare "
        "the networks fairly. With random depths and few sampled nodes a depth may get no node in a short run "
        "(an exit at chance accuracy, 0.1, was never trained). MACs per exit include that exit's own branch "
        "(a 3x3 convolution for exits 1..L-1), which can cost more than a Bottleneck stage. Wall times are on a "
        "machine shared with other jobs.\n"
    )
    write_section("early-exit", "S2: NAS early-exit models trained at mixed depths", body)
    print(body)


if __name__ == "__main__":
    main()
