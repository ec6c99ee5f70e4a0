"""Privacy with compressed uploads at the cross-device protocol (issue 34): accuracy,
epsilon, MB up.

Protocol (``experiment=cross_device``): MNIST, 100 clients, 10 sampled per round,
Dirichlet(0.5), LeNet, 100 rounds, 1 local epoch, batch 32, SGD lr 0.01 momentum 0.9;
seeds 0, 1, 2. DP arms: central DP with client-side clipping (``privacy=dp_client``),
clip norm 1.0, noise multiplier 0.7 (epsilon ~16.6 at delta 1e-5 after 100 releases at
q = 0.1, dp-accounting RDP). Secure-aggregation arms: ``privacy=secagg`` (pairwise
masking) with ``client=shared_topk`` at 5% (the issue's 20x goal) and with dense uploads
(``client=plain``). Every cell is a real ``bouquet-sim`` run; bytes are measured.

Raw per-cell results: ``benchmarks/results/privacy.jsonl`` (one line per finished cell,
never rerun). ``--report`` rebuilds the ``privacy`` section of ``RESULTS.md`` from that
file alone::

    # run what is missing
    nice -n 10 .venv/bin/python benchmarks/bench_privacy.py --commit --seeds 0
    # table only
    .venv/bin/python benchmarks/bench_privacy.py --report
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._grid import Cell  # noqa: E402
from benchmarks._grid import grid_arguments  # noqa: E402
from benchmarks._grid import load_results  # noqa: E402
from benchmarks._grid import pm  # noqa: E402
from benchmarks._grid import run_grid  # noqa: E402
from benchmarks._results import markdown_table  # noqa: E402
from benchmarks._results import not_yet_run  # noqa: E402
from benchmarks._results import write_section  # noqa: E402

SECTION = "privacy"
DP = [
    "privacy=dp_client",
    "privacy.clip_norm=1.0",
    "privacy.noise_multiplier=0.7",
    "privacy.delta=1e-5",
]
ARMS: dict[str, list[str]] = {
    "dense FedAvg": ["client=plain"],
    "DP alone": ["client=plain", *DP],
    "DP + STC 1%": ["client=stc", "client.alpha=0.01", *DP],
    "DP + shared_topk 5%": ["client=shared_topk", "client.alpha=0.05", *DP],
    "secagg + shared_topk 5%": [
        "client=shared_topk",
        "client.alpha=0.05",
        "privacy=secagg",
    ],
    "secagg dense": ["client=plain", "privacy=secagg"],
}
PROTOCOL = {"dataset": "mnist", "rounds": 100, "clients": 100, "per_round": 10}


def cells(arms: list[str], seeds: list[int]) -> list[Cell]:
    return [
        Cell.of(
            [
                "experiment=cross_device",
                "dataset=mnist",
                f"simulation.num_rounds={PROTOCOL['rounds']}",
                f"seed={seed}",
                *ARMS[arm],
            ],
            arm=arm,
            seed=seed,
            **PROTOCOL,
        )
        for seed in seeds
        for arm in arms
    ]


def report() -> list[Path]:
    """Rebuild the RESULTS.md section from the raw results."""
    results = load_results(SECTION)
    if not results:
        return []
    by: dict[str, list[dict]] = {}
    for r in results:
        by.setdefault(r["key"]["arm"], []).append(r)
    dense = {r["key"]["seed"]: r for r in by.get("dense FedAvg", [])}
    dense_secagg = {r["key"]["seed"]: r for r in by.get("secagg dense", [])}
    rows = []
    for arm in ARMS:
        runs = sorted(by.get(arm, []), key=lambda r: r["key"]["seed"])
        if not runs:
            continue
        finals = [r["rounds"][-1]["accuracy"] for r in runs]
        up = [sum(x["bytes_up"] for x in r["rounds"]) / 1e6 for r in runs]
        eps = [
            r["summary"].get("epsilon")
            for r in runs
            if r["summary"].get("epsilon") is not None
        ]
        vs_dense = [
            r["rounds"][-1]["accuracy"]
            - dense[r["key"]["seed"]]["rounds"][-1]["accuracy"]
            for r in runs
            if r["key"]["seed"] in dense
        ]
        fewer = [
            sum(x["bytes_up"] for x in dense_secagg[r["key"]["seed"]]["rounds"])
            / max(sum(x["bytes_up"] for x in r["rounds"]), 1)
            for r in runs
            if r["key"]["seed"] in dense_secagg and "secagg" in arm
        ]
        clipped = [
            sum(x.get("dp_clipped_server", 0) for x in r["rounds"])
            for r in runs
            if "DP" in arm
        ]
        rows.append(
            {
                "arm": arm,
                "seeds": ",".join(str(r["key"]["seed"]) for r in runs),
                "final acc (%)": pm(finals, 100),
                "acc - dense (pt)": pm(vs_dense, 100) if vs_dense else "",
                "MB up": pm(up, 1, 2),
                "epsilon (delta 1e-5)": pm(eps, 1, 1) if eps else "-",
                "x fewer up than dense secagg": pm(fewer, 1, 1) if fewer else "",
                "uploads clipped on the server": pm(clipped, 1, 0) if clipped else "",
                "failed replies": pm(
                    [r["summary"].get("clients_failed", 0) for r in runs], 1, 0
                ),
                "wall s / cell": f"{sum(r['wall_s'] for r in runs) / len(runs):.0f}",
            }
        )
    body = (
        "Real `bouquet-sim` runs, `experiment=cross_device`: MNIST, 100 clients, 10 "
        "sampled per round, Dirichlet(0.5), "
        f"LeNet, {PROTOCOL['rounds']} rounds. DP: `privacy=dp_client`, C = 1.0, z = "
        "0.7, noise z C / 10 on the mean "
        "of the 10 sampled clients (Flower's "
        "DifferentialPrivacyClientSideFixedClipping inside Compressed), epsilon "
        "from dp-accounting's RDP accountant (q = 0.1). secagg: bouquet's pairwise "
        "masking (docs/privacy.md). Bytes "
        "up are measured (`Array.data` of every reply; secagg's key exchange, 32 "
        "bytes up per client and round, is "
        "not an Array and not counted). Raw: "
        "`benchmarks/results/privacy.jsonl`. A DP round with a failed reply releases "
        "nothing (Flower's DP wrappers "
        "skip it), so epsilon stays below the 100-release value.\n\n"
        + markdown_table(rows, list(rows[0]))
    )
    reference = [
        r
        for r in load_results("two_way")
        if r["key"].get("arm") == "dense FedAvg" and r["key"].get("dataset") == "mnist"
    ]
    if reference and not dense:
        body += (
            "\nDense FedAvg at the same protocol, from the `two_way` grid (same "
            "config, other section): "
            + ", ".join(
                f"seed {r['key']['seed']}: {100 * r['rounds'][-1]['accuracy']:.2f}% "
                "with "
                f"{sum(x['bytes_up'] for x in r['rounds']) / 1e6:.1f} MB up"
                for r in reference
            )
            + ".\n"
        )
    done = {(r["key"]["arm"], r["key"]["seed"]) for r in results}
    missing = [
        f"{c.key_dict['arm']}/seed {c.key_dict['seed']}"
        for c in cells(list(ARMS), [0, 1, 2])
        if (c.key_dict["arm"], c.key_dict["seed"]) not in done
    ]
    body += not_yet_run(
        missing,
        "nice -n 10 .venv/bin/python benchmarks/bench_privacy.py --commit",
        shown=8,
    )
    write_section(
        SECTION,
        "Privacy with compressed uploads (issue 34)",
        body,
        command="nice -n 10 .venv/bin/python benchmarks/bench_privacy.py --commit "
        "(report: --report)",
    )
    return [ROOT / "benchmarks/RESULTS.md"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    grid_arguments(p)
    args = p.parse_args()
    # the report is rebuilt at the end only: RESULTS.md is committed by hand
    if not args.report:
        run_grid(
            SECTION, cells(args.arms, args.seeds), commit=args.commit, pin=args.pin
        )
    report()
    print(f"load average: {', '.join(f'{v:.1f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
