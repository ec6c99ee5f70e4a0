"""Wall time per round: real deployment (SuperLink + SuperNodes, TLS, node auth) vs simulation.

The same experiment (digits, N clients, R rounds; FedAvg by default) runs

* in Flower's simulation engine: ``bouquet-sim`` (``run_simulation``, Ray) in a subprocess;
* on a real local deployment: ``deploy/local.py``'s :class:`LocalDeployment` (``flwr run``).

Both write ``metrics.jsonl``; the table compares the per-round wall time measured by the
ServerApp (``wall_s`` of rounds >= 1) and the total. To show where a deployed round's time goes,
``--probe`` times, in a fresh Python process, the stages every ``flwr-clientapp`` process goes
through for *each* message (a deployed SuperNode starts one process per message): importing
flwr, torch and bouquet's client stack, composing the Hydra config, loading the data and cutting
the partitions, building the model, and one local training round.

Run (a few minutes on 2 cores)::

    nice -n 10 .venv/bin/python benchmarks/bench_deploy.py --nodes 2 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from statistics import mean

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks._results import markdown_table, write_section  # noqa: E402
from deploy.local import LocalDeployment  # noqa: E402
from deploy.processes import flower_env  # noqa: E402

RUNS = ROOT / "benchmarks" / ".runs" / "deploy"
VENV_BIN = Path(sys.executable).parent


def probe(overrides: str) -> dict[str, float]:
    """Time the stages of one ClientApp message in this (fresh) process."""
    t0 = time.perf_counter()
    stages: dict[str, float] = {}

    def mark(name: str) -> None:
        nonlocal t0
        now = time.perf_counter()
        stages[name] = round(now - t0, 3)
        t0 = now

    import flwr.clientapp  # noqa: F401

    mark("import flwr")
    import torch

    mark("import torch")
    from bouquet.simulations import flower_app

    mark("import bouquet client stack")
    cfg = flower_app.compose_config(overrides)
    mark("compose Hydra config")
    from bouquet.simulations.experiment import get_experiment

    exp = get_experiment(cfg)
    _ = exp.dataset
    mark("load dataset (imports sklearn for digits)")
    exp.client_data(0)
    mark("cut partitions (imports flwr-datasets)")
    torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1, momentum=0.9)
    mark("first torch.optim.SGD (imports torch._dynamo)")
    from flwr.app import Context, RecordDict

    client = exp.client(Context(run_id=1, node_id=1, node_config={"partition-id": 0}, state=RecordDict(), run_config={}))
    params = client.get_parameters({})
    mark("build model + client")
    client.fit(params, {})
    mark("local training, 1st call in the process")
    client.fit(params, {})
    mark("local training, 2nd call (warm; not paid in deployment)")
    return stages


def run_probe(overrides: str) -> dict[str, float]:
    code = f"import json, sys; sys.path.insert(0, {str(ROOT)!r}); from benchmarks.bench_deploy import probe; print(json.dumps(probe({overrides!r})))"
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=flower_env(), check=True, timeout=600)
    stages = json.loads(out.stdout.strip().splitlines()[-1])
    stages["whole process, wall (incl. interpreter start + exit)"] = round(time.perf_counter() - start, 3)
    return stages


def read_rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def run_simulation(overrides: str, run_dir: Path, timeout_s: float) -> float:
    argv = [str(VENV_BIN / "bouquet-sim"), *overrides.split(), f"hydra.run.dir={run_dir}"]
    start = time.perf_counter()
    subprocess.run(argv, env=flower_env(), check=True, timeout=timeout_s, capture_output=True)
    return time.perf_counter() - start


def run_deployment(nodes: int, overrides: str, run_dir: Path, timeout_s: float) -> tuple[float, float, dict]:
    start = time.perf_counter()
    with LocalDeployment(num_nodes=nodes, state_dir=RUNS / "state") as dep:
        up = time.perf_counter() - start
        outcome = dep.run(overrides, run_dir, timeout_s=timeout_s)
        timings = dict(dep.timings)
    total = time.perf_counter() - start
    timings["flwr run (submit to end)"] = round(outcome.wall_s, 2)
    return up, total, timings


def row_for(mode: str, rows: list[dict], total: float, startup: float | None) -> dict:
    trained = [r for r in rows if r["round"] > 0]
    return {
        "mode": mode,
        "rounds": len(trained),
        "round 1 s": trained[0]["wall_s"],
        "later rounds s (mean)": mean(r["wall_s"] for r in trained[1:]) if len(trained) > 1 else None,
        "client train s / round (sum over clients)": mean(r["client_train_s"] for r in trained),
        "server loop s": rows[-1]["elapsed_s"],
        "start-up s": startup,
        "total s": total,
        "final accuracy": rows[-1]["accuracy"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--overrides", default="dataset=digits", help="extra Hydra overrides for both modes")
    parser.add_argument("--timeout", type=float, default=1200.0)
    args = parser.parse_args()
    overrides = f"{args.overrides} simulation.num_clients={args.nodes} simulation.num_rounds={args.rounds}"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    sim_dir, dep_dir = RUNS / f"{stamp}-sim", RUNS / f"{stamp}-deploy"
    load_before = os.getloadavg()[0]
    print("probe ...", flush=True)
    stages = run_probe(overrides)
    print("simulation ...", flush=True)
    sim_total = run_simulation(overrides, sim_dir, args.timeout)
    print("deployment ...", flush=True)
    dep_up, dep_total, dep_timings = run_deployment(args.nodes, overrides, dep_dir, args.timeout)
    load_after = os.getloadavg()[0]
    rows = [
        row_for("simulation (bouquet-sim, Ray)", read_rows(sim_dir), sim_total, None),
        row_for("deployment (SuperLink + SuperNodes, TLS, auth)", read_rows(dep_dir), dep_total, dep_up),
    ]
    cols = list(rows[0])
    stage_rows = [{"stage": k, "s": v} for k, v in stages.items()]
    start_rows = [{"deployment start-up step": k, "s": v} for k, v in dep_timings.items()]
    body = (
        f"Experiment: `{overrides}` (FedAvg unless overridden), {args.nodes} SuperNodes / simulated clients. "
        f"Load average (1 min) on this shared machine: {load_before:.1f} before, {load_after:.1f} after "
        "(2 cores shared with other jobs: absolute times are inflated; compare within this run).\n\n"
        + markdown_table(rows, cols)
        + "\nWhere a deployed round goes: a SuperNode starts a fresh `flwr-clientapp` process for every "
        "message, so every round pays, per client, the stages below (timed in one fresh process); the "
        "simulation engine pays them once per Ray worker and then reuses the warm process.\n\n"
        + markdown_table(stage_rows, ["stage", "s"])
        + "\n"
        + markdown_table(start_rows, ["deployment start-up step", "s"])
    )
    write_section("deploy", "Deployment vs simulation: wall time per round", body)
    print(body)


if __name__ == "__main__":
    main()
