"""Federated recommendation on MovieLens-100K: plain vs ternary vs STC uploads vs
central training.

Every federated cell is a real ``bouquet-sim`` run (``dataset=movielens model=mf
client=recsys``, all 943 users in seeded groups, the same rounds and seed for all);
bytes are the bytes of ``Array.data`` that crossed the grid (``metrics.jsonl``). RMSE /
HR@10 / NDCG@10 are the pooled federated evaluation of each round's global item side
with the clients' private user factors. The central baseline trains the same model (same
client code, same hyperparameters) on all training ratings in one process, one epoch per
"round". Cells whose ``summary.json`` exists are skipped (resumable). Writes the
``recsys`` section of ``benchmarks/RESULTS.md``.

Reduced default (~10 CPU minutes on 2 shared cores)::

    nice -n 10 .venv/bin/python benchmarks/bench_recsys.py --rounds 12 --clients 10
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._results import markdown_table  # noqa: E402
from benchmarks._results import write_section  # noqa: E402

CELLS: dict[str, list[str]] = {
    "plain": ["client.codec=null"],
    "ternary": ["client.codec=ternary"],
    "STC 1%": ["client.codec=stc", "+client.codec_args.alpha=0.01"],
}


def slug(name: str) -> str:
    return (
        "".join(c if c.isalnum() else "_" for c in name).strip("_").replace("__", "_")
    )


def run_cell(name: str, args: argparse.Namespace, out: Path) -> Path:
    run_dir = out / slug(name)
    if (run_dir / "summary.json").exists():
        print(f"skip {name} (done)")
        return run_dir
    cmd = [
        str(Path(sys.executable).with_name("bouquet-sim")),
        "dataset=movielens",
        "model=mf",
        "client=recsys",
        f"simulation.num_clients={args.clients}",
        f"simulation.num_rounds={args.rounds}",
        f"seed={args.seed}",
        *CELLS[name],
        f"hydra.run.dir={run_dir}",
    ]
    # Ray's node start-up can time out on a loaded machine: retry once
    for attempt in (1, 2):
        print("run", " ".join(cmd[1:]), flush=True)
        start = time.perf_counter()
        # own session: on a timeout the whole group (bouquet-sim and its Ray processes)
        # is ended
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            _, err = proc.communicate(timeout=args.cell_timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
            print(
                f"  timed out after {args.cell_timeout} s (attempt {attempt})",
                flush=True,
            )
            continue
        if proc.returncode == 0:
            print(f"  done in {time.perf_counter() - start:.0f} s", flush=True)
            return run_dir
        print(f"  failed (attempt {attempt}):\n{err[-1500:]}", flush=True)
    raise RuntimeError(f"cell {name} failed twice; see {run_dir}")


def federated_rows(name: str, run_dir: Path) -> tuple[dict, list[dict]]:
    rows = [
        json.loads(line)
        for line in (run_dir / "metrics.jsonl").read_text().splitlines()
    ]
    mb, curve = 0.0, []
    for r in rows:
        mb += r["bytes_up"] / 1e6
        if r.get("rmse") is not None:
            curve.append(
                {
                    "round": r["round"],
                    "mb_up": mb,
                    "rmse": r["rmse"],
                    "hr_at_10": r["hr_at_10"],
                }
            )
    last = curve[-1]
    best = min(curve, key=lambda c: c["rmse"])
    per_round = rows[-1]["bytes_up"] / max(1, rows[-1]["clients_ok"]) / 1e3
    summary = {
        "upload": name,
        "final RMSE": last["rmse"],
        "best RMSE (round)": f"{best['rmse']:.4f} ({best['round']})",
        "final HR@10": last["hr_at_10"],
        "final NDCG@10": rows[-1]["ndcg_at_10"],
        "MB up (total)": mb,
        "KB up per client-round": per_round,
        "wall s": round(rows[-1]["elapsed_s"]),
    }
    return summary, curve


def central(args: argparse.Namespace) -> tuple[dict, list[dict]]:
    """The same MF and client code trained on all training ratings in one process."""
    import numpy as np

    from bouquet.clients.recsys_client import RecsysClient
    from bouquet.data.movielens import load_movielens
    from bouquet.data.movielens import sample_negatives
    from bouquet.data.movielens import temporal_split
    from bouquet.models.recsys import build_recsys_model

    ratings = load_movielens()
    split = temporal_split(ratings, 5)
    users = np.arange(ratings.num_users)
    model = build_recsys_model(
        num_items=ratings.num_items, num_users=ratings.num_users, seed=args.seed
    )
    client = RecsysClient(
        model,
        users,
        split.train,
        split.test,
        sample_negatives(ratings, users, 99, args.seed),
        seed=args.seed,
    )
    params, curve = client.get_parameters({}), []
    start = time.perf_counter()
    for epoch in range(1, args.rounds + 1):
        params, _, _ = client.fit(params, {"server-round": epoch})
        mse, hr, ndcg = client.test_metrics()
        curve.append(
            {
                "round": epoch,
                "mb_up": 0.0,
                "rmse": mse**0.5,
                "hr_at_10": hr,
                "ndcg_at_10": ndcg,
            }
        )
    last, best = curve[-1], min(curve, key=lambda c: c["rmse"])
    return {
        "upload": "central (no upload)",
        "final RMSE": last["rmse"],
        "best RMSE (round)": f"{best['rmse']:.4f} ({best['round']})",
        "final HR@10": last["hr_at_10"],
        "final NDCG@10": last["ndcg_at_10"],
        "MB up (total)": 0.0,
        "KB up per client-round": None,
        "wall s": round(time.perf_counter() - start),
    }, curve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--cell-timeout",
        type=float,
        default=900.0,
        help="seconds per bouquet-sim run (a crashed Ray start-up hangs it)",
    )
    parser.add_argument("--cells", nargs="*", default=list(CELLS))
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / ".runs" / "recsys"
    )
    args = parser.parse_args()
    for k in (
        "FLWR_TELEMETRY_ENABLED",
        "FLWR_DISABLE_UPDATE_CHECK",
        "RAY_USAGE_STATS_ENABLED",
    ):
        os.environ.setdefault(k, "0" if k != "FLWR_DISABLE_UPDATE_CHECK" else "1")
    out = args.out / f"c{args.clients}_r{args.rounds}_s{args.seed}"
    table, curves = [], {}
    for name in args.cells:
        summary, curve = federated_rows(name, run_cell(name, args, out))
        table.append(summary)
        curves[name] = curve
    summary, curve = central(args)
    table.append(summary)
    curves["central"] = curve
    marks = sorted({1, max(1, args.rounds // 4), max(1, args.rounds // 2), args.rounds})
    curve_rows = []
    for name, c in curves.items():
        for point in c:
            if point["round"] in marks:
                curve_rows.append({"upload": name, **point})
    body = (
        f"MovieLens-100K, all 943 users in {args.clients} seeded groups (one group "
        "per client), "
        f"{args.rounds} rounds, FedAvg, biased MF (dim 32), 1 local epoch of Adam "
        "(lr 0.01, batch 256, "
        "L2 0.05), last 5 ratings per user held out by time, HR@10/NDCG@10 against "
        "99 sampled unrated "
        "items; the central row trains the same model and client code on all "
        "training ratings, one "
        "epoch per round. Evaluation runs on the clients (the server holds no "
        "ratings).\n\n"
        + markdown_table(table, list(table[0]))
        + "\nRMSE and HR@10 against cumulative MB uploaded:\n\n"
        + markdown_table(curve_rows, ["upload", "round", "mb_up", "rmse", "hr_at_10"])
    )
    write_section(
        "recsys",
        "Federated recommendation (MovieLens-100K): plain vs ternary vs STC",
        body,
    )
    print(body)


if __name__ == "__main__":
    main()
