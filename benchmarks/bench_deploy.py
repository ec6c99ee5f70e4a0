"""Wall time per round: real deployment (SuperLink + SuperNodes, TLS, node auth) vs
simulation.

The same experiment (digits, N clients, R rounds; FedAvg by default), in one invocation:

* ``sim``: Flower's simulation engine, ``bouquet-sim`` (``run_simulation``, Ray), in a
  subprocess;
* ``cold``: a real local deployment with Flower's defaults (``flower-supernode``: a
  fresh ``flwr-clientapp`` process per message, a 3 s idle poll), ``deploy/local.py
  --cold``;
* ``warm``: the same deployment as ``make deploy-demo`` runs it: each SuperNode with
  ``--isolation process`` beside a :mod:`deploy.warm_clientapp` worker, started by
  :mod:`deploy.supernode` (idle poll backoff up to 0.25 s);

with 2 nodes (all three) and 10 nodes (sim and warm). Every mode writes
``metrics.jsonl``; the table compares the ServerApp's per-round wall time (``wall_s``)
of rounds 2..R, ratios against the simulation of the same N measured in this invocation.
Where a round goes: ``--probe`` times the stages of one fresh ``flwr-clientapp``-like
process (the cold path, per message), and the warm workers' per-task stages come from
their ``--timings`` files. Peak resident memory per node (SuperNode + worker, ``VmHWM``)
is read before the deployment stops.

Raw per-cell results go to ``benchmarks/results/deploy.jsonl`` as each cell finishes
(``--commit`` commits them); the RESULTS.md section is rebuilt from the latest
invocation (``--report``). Run it alone (it pauses nothing itself: touch
``benchmarks/results/.pause`` to pause a grid first)::

    .venv/bin/python benchmarks/bench_deploy.py --rounds 6 --commit
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
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks._grid import _append  # noqa: E402
from benchmarks._grid import _commit  # noqa: E402
from benchmarks._grid import load_results  # noqa: E402
from benchmarks._grid import results_path  # noqa: E402
from benchmarks._results import markdown_table  # noqa: E402
from benchmarks._results import write_section  # noqa: E402
from deploy.local import LocalDeployment  # noqa: E402
from deploy.processes import flower_env  # noqa: E402

SECTION = "deploy"
RUNS = ROOT / "benchmarks" / ".runs" / "deploy"
VENV_BIN = Path(sys.executable).parent
CELLS = [("sim", 2), ("cold", 2), ("warm", 2), ("sim", 10), ("warm", 10)]
MODE_NAMES = {
    "sim": "simulation (bouquet-sim, Ray)",
    "cold": "deployed, Flower defaults (process per message)",
    "warm": "deployed, warm workers (make deploy-demo)",
}


def probe(overrides: str) -> dict[str, float]:
    """Time the stages of one cold ClientApp message in this (fresh) process."""
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
    from bouquet.simulations.run import flower_app

    mark("import bouquet client stack")
    cfg = flower_app.compose_config(overrides)
    mark("compose Hydra config")
    from bouquet.simulations.methods.experiments import get_experiment

    exp = get_experiment(cfg)
    _ = exp.dataset
    exp.client_data(0)
    mark("load dataset + partition (cached on disk)")
    torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1, momentum=0.9)
    mark("first torch.optim.SGD (imports torch._dynamo)")
    from flwr.app import Context
    from flwr.app import RecordDict

    client = exp.client(
        Context(
            run_id=1,
            node_id=1,
            node_config={"partition-id": 0},
            state=RecordDict(),
            run_config={},
        )
    )
    params = client.get_parameters({})
    mark("build model + client")
    client.fit(params, {})
    mark("local training, 1st call in the process")
    client.fit(params, {})
    mark("local training, 2nd call (what a warm process pays)")
    return stages


def run_probe(overrides: str) -> dict[str, float]:
    code = (
        f"import json, sys; sys.path.insert(0, {str(ROOT)!r}); from "
        "benchmarks.bench_deploy import probe; "
        f"print(json.dumps(probe({overrides!r})))"
    )
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=flower_env(),
        check=True,
        timeout=600,
    )
    stages = json.loads(out.stdout.strip().splitlines()[-1])
    stages["whole process, wall (interpreter start to exit)"] = round(
        time.perf_counter() - start, 3
    )
    return stages


def read_rows(run_dir: Path) -> list[dict]:
    return [
        json.loads(line)
        for line in (run_dir / "metrics.jsonl").read_text().splitlines()
    ]


def run_simulation(overrides: str, run_dir: Path, timeout_s: float) -> dict[str, Any]:
    argv = [
        str(VENV_BIN / "bouquet-sim"),
        *overrides.split(),
        f"hydra.run.dir={run_dir}",
    ]
    start = time.perf_counter()
    subprocess.run(
        argv, env=flower_env(), check=True, timeout=timeout_s, capture_output=True
    )
    return {"total_s": round(time.perf_counter() - start, 2)}


def run_deployment(
    mode: str, nodes: int, overrides: str, run_dir: Path, timeout_s: float
) -> dict[str, Any]:
    start = time.perf_counter()
    with LocalDeployment(
        num_nodes=nodes, state_dir=RUNS / f"state-{mode}-{nodes}", warm=mode == "warm"
    ) as dep:
        up = time.perf_counter() - start
        outcome = dep.run(overrides, run_dir, timeout_s=timeout_s)
        rss, pss = dep.peak_rss_mb(), dep.pss_mb()
        timings = dict(dep.timings)
    tasks = []
    for path in sorted((run_dir / "deploy-logs").glob("*.timings.jsonl")):
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        # each worker's first task loads torch, the data and the app: start-up
        tasks.extend(lines[1:])
    per_node = [
        v for k, v in rss.items() if k.startswith(("supernode-", "clientapp-worker-"))
    ]
    per_node_pss = [
        v for k, v in pss.items() if k.startswith(("supernode-", "clientapp-worker-"))
    ]
    return {
        "startup_s": round(up, 2),
        "total_s": round(time.perf_counter() - start, 2),
        "startup_steps": timings,
        "flwr_run_s": round(outcome.wall_s, 2),
        "peak_rss_mb": rss,
        "node_rss_mb_mean": round(sum(per_node) / nodes, 1) if per_node else None,
        "pss_mb": pss,
        "node_pss_mb_mean": round(sum(per_node_pss) / nodes, 1)
        if per_node_pss
        else None,
        "warm_task_stages": {
            k: round(mean(t[k] for t in tasks), 4) for k in tasks[0] if k != "status"
        }
        if tasks
        else None,
    }


def cell_record(
    invocation: str,
    mode: str,
    nodes: int,
    rounds: int,
    overrides: str,
    run_dir: Path,
    extra: dict,
) -> dict:
    rows = read_rows(run_dir)
    trained = [r for r in rows if r["round"] > 0]
    return {
        "invocation": invocation,
        "mode": mode,
        "nodes": nodes,
        "rounds": rounds,
        "overrides": overrides,
        "loadavg": list(os.getloadavg()),
        "cpus": os.cpu_count(),
        "round_wall_s": [r["wall_s"] for r in trained],
        "client_train_s": [r["client_train_s"] for r in trained],
        "final_accuracy": rows[-1]["accuracy"],
        **extra,
    }


def _pairs(probe_stages: Any) -> list:
    """A probe's stages in their order (older records hold a key-sorted dict)."""
    return (
        list(probe_stages.items())
        if isinstance(probe_stages, dict)
        else list(probe_stages)
    )


def later_mean(rec: dict) -> float:
    return mean(rec["round_wall_s"][1:])


def report() -> None:
    results = load_results(SECTION)
    if not results:
        print("no deploy results yet")
        return
    latest: dict[tuple[str, int], dict] = {}
    for r in results:  # the newest cell of each mode and size
        latest[(r["mode"], r["nodes"])] = r
    recs = sorted(
        latest.values(), key=lambda r: (r["nodes"], list(MODE_NAMES).index(r["mode"]))
    )
    sims = {
        (r["invocation"], r["nodes"]): later_mean(r)
        for r in results
        if r["mode"] == "sim"
    }
    rows = []
    for r in recs:
        # the simulation of the same invocation
        base = sims.get((r["invocation"], r["nodes"]))
        rows.append(
            {
                "mode": MODE_NAMES[r["mode"]],
                "nodes": r["nodes"],
                "invocation": r["invocation"],
                "round 1 s": round(r["round_wall_s"][0], 2),
                "rounds 2-N s (mean)": round(later_mean(r), 3),
                "x simulation (same N, same invocation)": f"{later_mean(r) / base:.1f}x"
                if base
                else "",
                "client train s / round (sum)": round(mean(r["client_train_s"][1:]), 3),
                "start-up s": r.get("startup_s", ""),
                "total s": r["total_s"],
                "peak RSS / node MB": r.get("node_rss_mb_mean") or "",
                "final accuracy": round(r["final_accuracy"], 4),
            }
        )
    first = recs[0]
    load = [round(r["loadavg"][0], 1) for r in recs]
    experiment = first["overrides"].replace(
        "simulation.num_clients={} ".format(first["nodes"]), ""
    )
    body = (
        f"Experiment: `{experiment}` with N = 2 and 10 "
        "clients (SuperNodes or simulated clients), FedAvg, server-side evaluation. "
        "The newest cell of each mode; "
        "an invocation runs its cells one after the other, and a deployed cell's "
        "ratio is against the "
        "simulation of its own invocation (load average, 1 min, at the end of each "
        f"cell: {load}). "
        "`rounds 2-N` is the ServerApp's wall time per round after the first (round "
        "1 includes each node's "
        "first message); `x simulation` divides it by the simulation of the same N "
        "in this invocation. "
        "Peak RSS / node: SuperNode + its worker (warm) or SuperNode + its SuperExec "
        "(cold), `VmHWM` at the end. "
        f"Raw: `{results_path(SECTION).relative_to(ROOT)}`.\n\n"
        + markdown_table(rows, list(rows[0]))
    )
    probe_rec = next((r for r in reversed(results) if r.get("probe")), None)
    if probe_rec:
        body += (
            "\nCold path, per message: a SuperNode with Flower's defaults starts a "
            "fresh `flwr-clientapp` "
            "for every message, which pays every stage below (one fresh process, "
            "data already cached "
            "on disk):\n\n"
            + markdown_table(
                [{"stage": k, "s": v} for k, v in _pairs(probe_rec["probe"])],
                ["stage", "s"],
            )
        )
    warm = [r for r in recs if r["mode"] == "warm" and r.get("warm_task_stages")]
    if warm:
        stage_rows = [
            {
                "stage": k,
                **{f"{r['nodes']} nodes s": r["warm_task_stages"][k] for r in warm},
            }
            for k in warm[0]["warm_task_stages"]
        ]
        body += (
            "\nWarm path, per message (mean over tasks after each worker's first; "
            "`ClientApp call` "
            "includes the local training): the rest of a round is the SuperNode "
            "noticing the message "
            "(idle poll backoff from 0.02 s, doubling to 0.1 s per node, 0.25-2 s), "
            "the SuperNode fetching the message's objects from the SuperLink and "
            "sending the reply, and the ServerApp's own work (aggregation, "
            "evaluation, checkpoint).\n\n"
            + markdown_table(stage_rows, list(stage_rows[0]))
        )
    write_section(
        SECTION,
        "Deployment vs simulation: wall time per round",
        body,
        command=(
            ".venv/bin/python benchmarks/bench_deploy.py --commit (report: --report)"
        ),
    )
    print(body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument(
        "--overrides",
        default="dataset=digits",
        help="extra Hydra overrides for every mode",
    )
    parser.add_argument(
        "--cells",
        nargs="+",
        default=[f"{m}:{n}" for m, n in CELLS],
        help="mode:nodes, e.g. warm:10",
    )
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument("--no-probe", action="store_true")
    parser.add_argument(
        "--commit",
        action="store_true",
        help="git-commit the raw results after every cell",
    )
    parser.add_argument(
        "--report", action="store_true", help="only rebuild the RESULTS.md section"
    )
    args = parser.parse_args()
    if args.report:
        report()
        return
    invocation = time.strftime("%Y%m%d-%H%M%S")
    stages = (
        None
        if args.no_probe
        else run_probe(f"{args.overrides} simulation.num_clients=2")
    )
    for spec in args.cells:
        mode, nodes = spec.split(":")[0], int(spec.split(":")[1])
        overrides = (
            f"simulation.num_clients={nodes} {args.overrides} "
            f"simulation.num_rounds={args.rounds}"
        )
        run_dir = RUNS / f"{invocation}-{mode}-{nodes}"
        print(f"{mode} x {nodes} ...", flush=True)
        if mode == "sim":
            extra = run_simulation(overrides, run_dir, args.timeout)
        else:
            extra = run_deployment(mode, nodes, overrides, run_dir, args.timeout)
        if stages is not None:
            # ordered pairs (records are key-sorted)
            extra["probe"], stages = (list(stages.items()), None)
        rec = cell_record(
            invocation, mode, nodes, args.rounds, overrides, run_dir, extra
        )
        _append(SECTION, rec)
        if args.commit:
            _commit(
                [results_path(SECTION)],
                f"benchmarks: deploy cell {mode} x {nodes} ({invocation})",
            )
        print(
            json.dumps(
                {k: rec[k] for k in ("mode", "nodes", "round_wall_s", "total_s")}
            ),
            flush=True,
        )
    report()


if __name__ == "__main__":
    main()
