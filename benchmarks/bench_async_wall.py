"""S4 on the wall clock in Flower's simulation engine: synchronous FedAvg vs
asynchronous policies.

Protocol: MNIST, MLP, 10 clients (IID) of seeded heterogeneous speed (``client=slow``:
log-normal factors, sigma 0.5, 20% stragglers x5, a median node's task padded to 1 s by
sleeping, so two cores can host ten concurrent clients: ``simulation.client_cpus=0.2``);
seeds 0, 1, 2; the same client work for every arm (10 rounds x 10 clients = 100 updates;
``strategy.max_updates=100``, plateau stop off). Arms: ``sync`` (Flower's FedAvg: each
round waits for its slowest node), ``constant``, ``polynomial`` (FedAsync), ``fedbuff``
(FedBuff, K=5), ``sliding window (learner)`` (S4, the learners keep their windows and
scale their rate: the default) and ``sliding window (server)`` (one shared window on the
server). Asynchronous runs evaluate every 5 applied updates, synchronous ones every
round.

Every cell is a real ``bouquet-sim`` run in Flower's simulation engine; times are
**measured** wall seconds from the run's first train reply (``first_reply_s`` of
``metrics.jsonl``; the clients' start-up before it is reported apart: it is the same
work for every arm). Raw per-cell results: ``benchmarks/results/async_wall.jsonl``;
``--report`` rebuilds the ``async_wall`` section of ``RESULTS.md``. The virtual-clock
preview (``bench_async.py``, section *S4*) is modelled, not measured. Run it alone
(speed benchmark)::

    nice -n 10 .venv/bin/python benchmarks/bench_async_wall.py --commit --pin HEAD
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._grid import Cell  # noqa: E402
from benchmarks._grid import grid_arguments  # noqa: E402
from benchmarks._grid import load_results  # noqa: E402
from benchmarks._grid import mean_sd  # noqa: E402
from benchmarks._grid import pm  # noqa: E402
from benchmarks._grid import run_grid  # noqa: E402
from benchmarks._results import markdown_table  # noqa: E402
from benchmarks._results import not_yet_run  # noqa: E402
from benchmarks._results import write_section  # noqa: E402

SECTION = "async_wall"
ARMS: dict[str, list[str]] = {
    "sync (FedAvg)": ["strategy=fedavg"],
    "constant": ["strategy=async", "strategy.policy=constant"],
    "polynomial (FedAsync)": ["strategy=async", "strategy.policy=polynomial"],
    "fedbuff": ["strategy=async", "strategy.policy=fedbuff"],
    "sliding window (learner)": [
        "strategy=async",
        "strategy.policy=sliding_window",
        "strategy.window_side=learner",
    ],
    "sliding window (server)": [
        "strategy=async",
        "strategy.policy=sliding_window",
        "strategy.window_side=server",
    ],
}
PROTOCOL = {"clients": 10, "rounds": 10, "base_time_s": 1.0, "eval_every": 5}
# every arm passes 90% with its first evaluation (MLP, 1 local epoch per update)
TARGET = 0.96
TARGET_LOW = 0.95
# fluctuation: std of the evaluation loss over the last 5 evaluations of every arm
LAST_EVALS = 5
COMMAND = (
    "nice -n 10 .venv/bin/python benchmarks/bench_async_wall.py --commit --pin HEAD"
)


def cell(arm: str, seed: int) -> Cell:
    p = PROTOCOL
    overrides = [
        "dataset=mnist",
        "model=mlp",
        "partition=iid",
        "client=slow",
        f"client.base_time_s={p['base_time_s']}",
        "client.slow_fraction=0.2",
        "client.slow_factor=5.0",
        "client.speed_sigma=0.5",
        "client.local_epochs=1",
        f"simulation.num_clients={p['clients']}",
        f"simulation.num_rounds={p['rounds']}",
        "simulation.client_cpus=0.2",
        f"seed={seed}",
        *ARMS[arm],
    ]
    if arm != "sync (FedAvg)":
        overrides += [
            f"strategy.max_updates={p['rounds'] * p['clients']}",
            "strategy.plateau_window=0",
            f"strategy.eval_every={p['eval_every']}",
        ]
    return Cell.of(overrides, arm=arm, seed=seed, **p)


def figures(rows: list[dict]) -> dict:
    """Times from the run's first train reply (``first_reply_s``): the clients' process
    start-up before it (actor imports, data loading: ~40 s for ten actors on two cores)
    is the same for every arm and would otherwise swamp a run of a minute."""
    t0 = next(
        (r["first_reply_s"] for r in rows if r.get("first_reply_s") is not None), 0.0
    )
    evals = [
        r
        for r in rows
        if r.get("accuracy") is not None and r.get("elapsed_s", 0.0) >= t0
    ]
    t = np.array([r.get("elapsed_s", 0.0) - t0 for r in evals])
    acc = np.array([r["accuracy"] for r in evals])
    loss = np.array([r["loss"] for r in evals])
    hit = np.flatnonzero(acc >= TARGET)
    low = np.flatnonzero(acc >= TARGET_LOW)
    stale = [r["staleness_max"] for r in rows if r.get("staleness_max") is not None]
    means = [r["staleness_mean"] for r in rows if r.get("staleness_mean") is not None]
    return {
        "final": float(acc[-1]),
        "wall": float(t[-1]),
        "startup": float(t0),
        "to_target": float(t[hit[0]]) if len(hit) else None,
        "to_low": float(t[low[0]]) if len(low) else None,
        "fluct": float(np.std(loss[1:][-LAST_EVALS:])),
        "stale_mean": float(np.mean(means)) if means else None,
        "stale_max": max(stale) if stale else None,
    }


def report() -> list[Path]:
    by: dict[str, list[dict]] = defaultdict(list)
    for r in load_results(SECTION):
        by[r["key"]["arm"]].append(r)
    sync = {r["key"]["seed"]: figures(r["rounds"]) for r in by.get("sync (FedAvg)", [])}
    rows = []
    for arm in ARMS:
        cells_ = sorted(by.get(arm, []), key=lambda r: r["key"]["seed"])
        if not cells_:
            continue
        figs = [(c["key"]["seed"], figures(c["rounds"])) for c in cells_]
        speedups = [
            sync[s]["to_target"] / f["to_target"]
            for s, f in figs
            if s in sync and f["to_target"] and sync[s]["to_target"]
        ]
        reached = [f["to_target"] for _, f in figs if f["to_target"] is not None]
        reached_low = [f["to_low"] for _, f in figs if f["to_low"] is not None]
        rows.append(
            {
                "arm": arm,
                "seeds": ",".join(str(s) for s, _ in figs),
                "final acc (%)": pm([f["final"] for _, f in figs], 100),
                f"wall s to {TARGET_LOW:.0%}": pm(reached_low, 1, 1)
                + (
                    ""
                    if len(reached_low) == len(figs)
                    else f" ({len(reached_low)}/{len(figs)} reached)"
                ),
                f"wall s to {TARGET:.0%}": pm(reached, 1, 1)
                + (
                    ""
                    if len(reached) == len(figs)
                    else f" ({len(reached)}/{len(figs)} reached)"
                ),
                f"x sooner than sync (to {TARGET:.0%})": pm(speedups, 1, 2)
                if arm != "sync (FedAvg)"
                else "1",
                "wall s (all 100 updates)": pm([f["wall"] for _, f in figs], 1, 1),
                "start-up s (to 1st reply)": pm([f["startup"] for _, f in figs], 1, 1),
                f"fluctuation (std loss, last {LAST_EVALS} evals)": pm(
                    [f["fluct"] for _, f in figs], 1, 4
                ),
                "staleness mean / max": (
                    "-"
                    if figs[0][1]["stale_mean"] is None
                    else f"{mean_sd([f['stale_mean'] for _, f in figs])[0]:.1f} / "
                    f"{max(f['stale_max'] for _, f in figs)}"
                ),
            }
        )
    body = (
        "**Measured** wall-clock seconds in Flower's simulation engine (Ray), from "
        "each run's first train reply "
        "(the clients' start-up before it, actor imports and data loading, is its "
        "own column); "
        "MNIST, MLP, 10 IID clients of seeded heterogeneous speed (`client=slow`: "
        "log-normal sigma 0.5, 20% "
        "stragglers x5, a median task padded to 1 s by sleeping; "
        "`simulation.client_cpus=0.2`, so all ten run at once "
        "on 2 cores), the same client work for every arm (100 local epochs: 10 sync "
        "rounds or 100 async updates, "
        "plateau stop off), async evaluation every 5 updates, sync every round. "
        "Targets 95% and 96% (every arm passes "
        "90% at its first evaluation). `x sooner` is paired by seed; a seed that "
        "never reaches the target is left out "
        "of it and counted in the reach column. "
        "Mean ± sd over seeds. Raw per-cell results: "
        "`benchmarks/results/async_wall.jsonl`.\n\n"
        + markdown_table(rows, list(rows[0]) if rows else ["arm"])
    )
    body += _goals(by, sync)
    todo = [
        c
        for c in cells_all()
        if c.key_dict["seed"]
        not in {r["key"]["seed"] for r in by.get(c.key_dict["arm"], [])}
    ]
    body += not_yet_run(
        ["{arm}/seed {seed}".format(**c.key_dict) for c in todo], COMMAND
    )
    write_section(
        SECTION,
        "S4 on the wall clock: sync vs async in Flower's simulation engine (measured)",
        body,
        command=COMMAND + " (report: --report)",
    )
    return [ROOT / "benchmarks/RESULTS.md"]


def _verdict(diff: tuple[float, float]) -> str:
    """Accuracy difference (mean, sd) in words: within one sd, better or worse."""
    if abs(diff[0]) <= diff[1]:
        return "within one sd"
    return "better" if diff[0] > 0 else "worse"


def _goals(by: dict[str, list[dict]], sync: dict[int, dict]) -> str:
    """Issue 17's goals checked on the raw results (computed, not written by hand)."""
    out = ["", "**Goals, computed from the raw results:**", ""]
    for arm in ARMS:
        if arm == "sync (FedAvg)" or not by.get(arm):
            continue
        figs = {c["key"]["seed"]: figures(c["rounds"]) for c in by[arm]}
        ratios = [
            sync[s]["to_target"] / f["to_target"]
            for s, f in figs.items()
            if s in sync and f["to_target"] and sync[s]["to_target"]
        ]
        if ratios:
            out.append(
                f"- {arm}: {min(ratios):.2f}x to {max(ratios):.2f}x sooner than sync "
                f"to {TARGET:.0%} over "
                f"{len(ratios)} seed(s) (goal >= 2x in every seed: "
                f"{'met' if min(ratios) >= 2 else 'missed'})."
            )
    plain = {c["key"]["seed"]: figures(c["rounds"]) for c in by.get("constant", [])}
    for arm in ("sliding window (learner)", "sliding window (server)"):
        win = {c["key"]["seed"]: figures(c["rounds"]) for c in by.get(arm, [])}
        seeds = sorted(set(win) & set(plain))
        if seeds:
            df = mean_sd([win[s]["fluct"] - plain[s]["fluct"] for s in seeds])
            da = mean_sd([win[s]["final"] - plain[s]["final"] for s in seeds])
            out.append(
                f"- {arm} minus plain async (constant), paired: fluctuation "
                f"{df[0]:+.4f} ± {df[1]:.4f}, final "
                f"accuracy {100 * da[0]:+.2f} ± {100 * da[1]:.2f} points (goal: "
                "lower fluctuation at equal or "
                f"better accuracy; {'lower' if df[0] < 0 else 'not lower'} "
                "fluctuation, accuracy "
                f"{_verdict(da)})."
            )
    return "\n".join(out) + "\n"


def cells_all(
    arms: list[str] | None = None, seeds: list[int] | None = None
) -> list[Cell]:
    return [cell(arm, s) for s in (seeds or [0, 1, 2]) for arm in (arms or list(ARMS))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    grid_arguments(p)
    args = p.parse_args()
    if not args.report:
        print(
            f"load average: {', '.join(f'{v:.1f}' for v in os.getloadavg())}",
            flush=True,
        )
        run_grid(
            SECTION,
            cells_all(args.arms, args.seeds),
            commit=args.commit,
            after_cell=report,
            pin=args.pin,
        )
    report()
    print(f"load average: {', '.join(f'{v:.1f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
