"""Both directions compressed, at the cross-device protocol: total bytes, not upload
bytes (issue 29).

Protocol (``experiment=cross_device``): MNIST and Fashion-MNIST, 100 clients, 10 sampled
per round, Dirichlet(0.5), LeNet, 100 rounds, 1 local epoch, batch 32, SGD lr 0.01
momentum 0.9; seeds 0, 1, 2. Every cell is a real ``bouquet-sim`` run in Flower's
simulation engine; bytes are the measured ``Array.data`` bytes of every message pushed
(down) and every reply pulled (up), from ``metrics.jsonl``. With a compressed downlink
the accuracy is that of the model the clients hold (the sum of the broadcasts), not of
the server's model.

Raw per-cell results: ``benchmarks/results/two_way.jsonl`` (one line per finished cell,
never rerun). ``--report`` rebuilds the ``two_way`` section of ``RESULTS.md`` and
``benchmarks/two_way_curves.png`` from that file alone::

    # run what is missing
    nice -n 10 .venv/bin/python benchmarks/bench_two_way.py --commit
    # tables + plot only
    .venv/bin/python benchmarks/bench_two_way.py --report
    # pause between cells
    touch benchmarks/results/.pause
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._grid import Cell  # noqa: E402
from benchmarks._grid import by_dataset_and_arm  # noqa: E402
from benchmarks._grid import dataset_figure  # noqa: E402
from benchmarks._grid import grid_arguments  # noqa: E402
from benchmarks._grid import load_results  # noqa: E402
from benchmarks._grid import mean_sd  # noqa: E402
from benchmarks._grid import pm  # noqa: E402
from benchmarks._grid import run_grid  # noqa: E402
from benchmarks._results import markdown_table  # noqa: E402
from benchmarks._results import not_yet_run  # noqa: E402
from benchmarks._results import write_section  # noqa: E402

SECTION = "two_way"
ARMS: dict[str, list[str]] = {
    "dense FedAvg": ["client=plain"],
    "STC 1% up only": ["client=stc", "client.alpha=0.01"],
    "TernGrad up only": ["client=ternary"],
    "STC 1% both ways": [
        "client=stc",
        "client.alpha=0.01",
        "downlink=stc",
        "downlink.alpha=0.01",
    ],
    "top-k 1% + EF both ways": [
        "client=topk",
        "client.alpha=0.01",
        "downlink=topk",
        "downlink.alpha=0.01",
    ],
    # TernGrad's own clipping (2.5 std) on the broadcast: without it the held model
    # diverged (the arm below)
    "TernGrad both ways (clip 2.5)": [
        "client=ternary",
        "downlink=ternary",
        "downlink.clip_c=2.5",
    ],
    # our remedy from the lab grid (compression section): sparse replies dilute in the
    # mean, a server step of 2
    "STC 1% both ways, server_lr 2": [
        "client=stc",
        "client.alpha=0.01",
        "downlink=stc",
        "downlink.alpha=0.01",
        "+compression.server_lr=2.0",
    ],
    # measured once (seed 0), not in the default grid: stochastic ternary steps without
    # clipping put noise of the largest difference's size in every weight; the error
    # feedback does not contract it (9.8% accuracy)
    "TernGrad both ways": ["client=ternary", "downlink=ternary"],
    # fewer bytes down: a client seen every ~10 rounds catches up ~10 steps, 99% of the
    # downlink bytes
    "STC 1% up, STC 0.25% down": [
        "client=stc",
        "client.alpha=0.01",
        "downlink=stc",
        "downlink.alpha=0.0025",
    ],
}
DEFAULT_ARMS = [a for a in ARMS if a != "TernGrad both ways"]
DATASETS = ("mnist", "fashion_mnist")
PROTOCOL = {"rounds": 100, "clients": 100, "per_round": 10}
TARGET_GAP = 0.01  # target accuracy: the same seed's dense final accuracy minus 1 point


def cells(datasets: list[str], arms: list[str], seeds: list[int]) -> list[Cell]:
    out = []
    # MNIST first (the goal's dataset), then seed-major within a dataset
    for dataset in datasets:
        for seed in seeds:
            for arm in arms:
                overrides = [
                    "experiment=cross_device",
                    f"dataset={dataset}",
                    f"simulation.num_rounds={PROTOCOL['rounds']}",
                    f"seed={seed}",
                    *ARMS[arm],
                ]
                out.append(
                    Cell.of(overrides, dataset=dataset, arm=arm, seed=seed, **PROTOCOL)
                )
    return out


def cumulative(rounds: list[dict], key: str) -> list[float]:
    total, out = 0.0, []
    for r in rounds:
        total += (r.get("bytes_up", 0) if key in ("up", "both") else 0) + (
            r.get("bytes_down", 0) if key in ("down", "both") else 0
        )
        out.append(total / 1e6)
    return out


def reach(rounds: list[dict], target: float) -> tuple[int | None, float | None]:
    """First round whose accuracy is >= target, and the MB both ways up to it."""
    both = cumulative(rounds, "both")
    for r, mb in zip(rounds, both, strict=True):
        if r.get("accuracy") is not None and r["accuracy"] >= target:
            return int(r["round"]), mb
    return None, None


def arm_row(
    ds: str, arm: str, cells_: list[dict], dense: dict[int, dict]
) -> dict[str, str]:
    finals = [r["rounds"][-1]["accuracy"] for r in cells_]
    up = [cumulative(r["rounds"], "up")[-1] for r in cells_]
    down = [cumulative(r["rounds"], "down")[-1] for r in cells_]
    paired = [r for r in cells_ if r["key"]["seed"] in dense]
    diffs = [
        r["rounds"][-1]["accuracy"] - dense[r["key"]["seed"]]["rounds"][-1]["accuracy"]
        for r in paired
    ]
    to_target, ratios, rounds_at = [], [], []
    for r in paired:
        d = dense[r["key"]["seed"]]
        target = d["rounds"][-1]["accuracy"] - TARGET_GAP
        _, dense_mb = reach(d["rounds"], target)
        rnd, mb = reach(r["rounds"], target)
        if rnd is not None and mb is not None and dense_mb is not None:
            to_target.append(mb)
            ratios.append(dense_mb / max(mb, 1e-12))
            rounds_at.append(float(rnd))
    catchup = [
        sum(x.get("catchup_bytes", 0) for x in r["rounds"])
        / max(sum(x["bytes_down"] for x in r["rounds"]), 1)
        for r in cells_
    ]
    mismatches = sum(
        sum(x.get("sync_mismatches", 0) for x in r["rounds"]) for r in cells_
    )
    two_way = any("downlink_version" in x for r in cells_ for x in r["rounds"])
    return {
        "dataset": ds,
        "arm": arm,
        "seeds": ",".join(str(r["key"]["seed"]) for r in cells_),
        "final acc (%)": pm(finals, 100),
        "acc - dense (pt)": pm(diffs, 100) if diffs else "",
        "MB up": pm(up, 1, 2),
        "MB down": pm(down, 1, 2),
        "MB both": pm([a + b for a, b in zip(up, down, strict=True)], 1, 2),
        "MB both to target": (pm(to_target, 1, 2) if to_target else "not reached")
        + (
            ""
            if len(to_target) == len(paired)
            else f" ({len(to_target)}/{len(paired)} reached)"
        ),
        "x fewer bytes to target": pm(ratios, 1, 0) if ratios else "",
        "round reached": pm(rounds_at, 1, 0) if rounds_at else "",
        "catch-up share of down": pm(catchup, 100, 0) + "%" if two_way else "",
        "sync mismatches": str(mismatches) if two_way else "",
        "wall s / cell": f"{mean_sd([r['wall_s'] for r in cells_])[0]:.0f}",
    }


def report() -> list[Path]:
    """Rebuild the RESULTS.md section and the plot from the raw results; return what
    changed."""
    import numpy as np

    results = load_results(SECTION)
    by, datasets = by_dataset_and_arm(SECTION, DATASETS)
    if not datasets:
        return []
    fig, axes = dataset_figure(datasets)
    rows = []
    for ax, ds in zip(axes, datasets, strict=True):
        dense = {r["key"]["seed"]: r for r in by.get((ds, "dense FedAvg"), [])}
        for arm in ARMS:
            cells_ = sorted(by.get((ds, arm), []), key=lambda r: r["key"]["seed"])
            if not cells_:
                continue
            rows.append(arm_row(ds, arm, cells_, dense))
            n = min(len(r["rounds"]) for r in cells_)
            mb = np.mean([cumulative(r["rounds"], "both")[:n] for r in cells_], axis=0)
            acc = np.mean(
                [[x["accuracy"] for x in r["rounds"][:n]] for r in cells_], axis=0
            )
            keep = mb > 0
            ax.plot(
                mb[keep], acc[keep], marker=".", ms=2, label=f"{arm} (n={len(cells_)})"
            )
        ax.set_xscale("log")
        ax.set_xlabel("MB up + down (cumulative, all clients)")
        ax.set_ylabel("test accuracy (model the clients hold)")
        ax.set_title(
            f"{ds}: 100 clients, 10 per round, Dirichlet(0.5), LeNet (mean over seeds)",
            fontsize=8,
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    png = ROOT / "benchmarks/two_way_curves.png"
    fig.savefig(png, dpi=110)
    cols = list(rows[0])
    done = {(r["key"]["dataset"], r["key"]["arm"], r["key"]["seed"]) for r in results}
    missing = [
        f"{c.key_dict['dataset']}/{c.key_dict['arm']}/seed {c.key_dict['seed']}"
        for c in cells(list(DATASETS), DEFAULT_ARMS, [0, 1, 2])
        if (c.key_dict["dataset"], c.key_dict["arm"], c.key_dict["seed"]) not in done
    ]
    body = (
        "Real `bouquet-sim` runs in Flower's simulation engine, "
        "`experiment=cross_device`: 100 clients, 10 sampled "
        f"per round, Dirichlet(0.5), LeNet, {PROTOCOL['rounds']} rounds, 1 local "
        "epoch, batch 32, SGD lr 0.01 momentum "
        "0.9. Mean ± sd over seeds; `acc - dense` and `x fewer bytes` are paired by "
        "seed. Bytes are measured: "
        "`Array.data` of every message pushed (down) and every reply pulled (up). "
        "With a compressed downlink the "
        "accuracy is the model the clients hold. Target: the same seed's dense final "
        "accuracy minus 1 point; "
        "`x fewer bytes to target` = dense MB (both ways) to reach it / the arm's. "
        "`catch-up share`: bytes of "
        "multi-step catch-ups (clients that missed rounds) / all bytes down. Plot: "
        "`benchmarks/two_way_curves.png`. "
        "Raw per-cell results: `benchmarks/results/two_way.jsonl`.\n\n"
        + markdown_table(rows, cols)
    )
    body += not_yet_run(
        missing, "nice -n 10 .venv/bin/python benchmarks/bench_two_way.py --commit"
    )
    write_section(
        SECTION,
        "Both directions compressed: total bytes at the cross-device protocol",
        body,
        command="nice -n 10 .venv/bin/python benchmarks/bench_two_way.py --commit "
        "(report: --report)",
    )
    return [ROOT / "benchmarks/RESULTS.md", png]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=list(DATASETS))
    p.add_argument("--arms", nargs="+", default=DEFAULT_ARMS, choices=list(ARMS))
    grid_arguments(p)
    args = p.parse_args()
    if not args.report:
        run_grid(
            SECTION,
            cells(args.datasets, args.arms, args.seeds),
            commit=args.commit,
            after_cell=report,
            pin=args.pin,
        )
    report()
    print(f"load average: {', '.join(f'{v:.1f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
