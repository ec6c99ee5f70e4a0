"""Fault tolerance (issue 10): accuracy after N rounds with 0/10/30/50% faulty clients
per
strategy, and the time cost of checkpointing.

Faulty clients are injected with ``fault.crash_rate`` (half of the faulty share) and
``fault.corrupt_rate`` (the other half: NaN values, wrong shapes, truncated payloads);
hangs are left out to keep the grid short (they cost ``round_timeout_s`` each and are
covered by the tests). Checkpoint cost: ``checkpoint_s`` (total seconds spent writing
checkpoints, measured in the run) against the run's total round time, for a run with
``checkpoint_every=1``.

Usage::

    python benchmarks/bench_faults.py --dataset digits --rounds 5
    python benchmarks/bench_faults.py --dataset mnist --rounds 10 \\
        --strategies fedavg,kl,topk
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import markdown_table  # noqa: E402
from _results import write_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "benchmarks" / ".runs" / "faults"
STRATEGIES = {
    "fedavg": ["strategy=fedavg", "client=plain"],
    "kl": ["strategy=kl_weighted", "client=plain"],
    "topk": ["strategy=fedavg", "client=topk"],
}


def run(name: str, overrides: list[str]) -> dict:
    out = RUNS / f"{name}.json"
    if out.exists():
        return json.loads(out.read_text())
    run_dir = RUNS / name
    proc = subprocess.run(
        [
            str(Path(sys.executable).with_name("bouquet-sim")),
            *overrides,
            f"hydra.run.dir={run_dir}",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    summary = (
        json.loads((run_dir / "summary.json").read_text())
        if (run_dir / "summary.json").exists()
        else {}
    )
    if proc.returncode != 0 and not summary:
        raise RuntimeError(f"{name} failed:\n{proc.stderr[-2000:]}")
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    result = {
        "name": name,
        "status": summary.get("status"),
        "final_accuracy": summary.get("final_accuracy"),
        "clients_ok": summary.get("clients_ok"),
        "clients_failed": summary.get("clients_failed"),
        "round_s": round(sum(r["wall_s"] for r in rows[1:]), 3),
        "checkpoint_s": summary.get("checkpoint_s"),
    }
    RUNS.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--shares", default="0,0.1,0.3,0.5")
    parser.add_argument("--strategies", default="fedavg,kl,topk")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    base = [
        f"dataset={args.dataset}",
        f"simulation.num_clients={args.clients}",
        f"simulation.num_rounds={args.rounds}",
        f"seed={args.seed}",
        f"client.lr={args.lr}",
        f"client.local_epochs={args.epochs}",
    ]
    rows = []
    for strat in args.strategies.split(","):
        for share in (float(s) for s in args.shares.split(",")):
            name = (
                f"{args.dataset}-{strat}-f{share}-r{args.rounds}"
                f"-lr{args.lr}-e{args.epochs}-s{args.seed}"
            )
            res = run(
                name,
                [
                    *base,
                    *STRATEGIES[strat],
                    f"fault.crash_rate={share / 2}",
                    f"fault.corrupt_rate={share / 2}",
                ],
            )
            res.update(strategy=strat, faulty_share=share)
            print(json.dumps(res), flush=True)
            rows.append(res)
    ck_on = run(
        f"{args.dataset}-ckpt-on-r{args.rounds}",
        [*base, "simulation.checkpoint_every=1"],
    )
    ck_off = run(
        f"{args.dataset}-ckpt-off-r{args.rounds}",
        [*base, "simulation.checkpoint_every=0"],
    )
    ratio = (
        ck_on["checkpoint_s"] / ck_on["round_s"] if ck_on["round_s"] else float("nan")
    )
    body = (
        f"{args.dataset}, {args.clients} clients, {args.rounds} rounds, "
        f"{args.epochs} local epochs, lr {args.lr}, seed {args.seed}; faulty share "
        "split evenly "
        "between crashing and corrupting clients (seeded per partition and round).\n\n"
        + markdown_table(
            rows,
            [
                "strategy",
                "faulty_share",
                "status",
                "final_accuracy",
                "clients_ok",
                "clients_failed",
            ],
        )
        + f"\nCheckpointing every round: {ck_on['checkpoint_s']:.4f} s in total "
        f"for {args.rounds} checkpoints, "
        f"{100 * ratio:.2f}% of the run's round time ({ck_on['round_s']:.1f} s); the "
        "same run without checkpoints "
        f"took {ck_off['round_s']:.1f} s of round time (the difference is dominated "
        "by machine noise).\n"
    )
    write_section("faults", "Fault tolerance and checkpoint cost (issue 10)", body)


if __name__ == "__main__":
    main()
