"""KL-weighted aggregation vs FedAvg on the unbalanced cell (issue 15 §3).

Protocol: Fashion-MNIST, 10 clients, ``partition=unbalanced`` (client sizes by
flwr-datasets' exponential rule over what is left after 32 samples each, labels by its
``InnerDirichletPartitioner`` with Dirichlet(0.5); ``docs/kl-weighting.md``), all
clients every round, LeNet, 30 rounds, 1 local epoch, batch 32, SGD lr 0.01 momentum
0.9; seeds 0, 1, 2. Arms: FedAvg and the KL-weighted settings of the earlier reduced
grid (``exp`` tau=1 a=1 towards the clients close to Q or far from it, FedDisco's
published a=0.5 b=0.1, and a=0.05 b=0.1; Q = the pooled client histograms, smoothing
1e-3).

Every cell is a real ``bouquet-sim`` run in Flower's simulation engine. Raw per-cell
results: ``benchmarks/results/kl.jsonl`` (a finished cell is never rerun). ``--report``
rebuilds the ``kl`` section of ``RESULTS.md`` from that file alone (and leaves it alone
while the file has no cell)::

    # run what is missing
    nice -n 10 .venv/bin/python benchmarks/bench_kl.py --commit --pin HEAD
    # table only
    .venv/bin/python benchmarks/bench_kl.py --report
    # compose + validate every cell
    .venv/bin/python benchmarks/bench_kl.py --check
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._grid import LENET_PROTOCOL  # noqa: E402
from benchmarks._grid import Cell  # noqa: E402
from benchmarks._grid import grid_arguments  # noqa: E402
from benchmarks._grid import lenet_overrides  # noqa: E402
from benchmarks._grid import load_results  # noqa: E402
from benchmarks._grid import mean_sd  # noqa: E402
from benchmarks._grid import overhead_note  # noqa: E402
from benchmarks._grid import pm  # noqa: E402
from benchmarks._grid import run_grid  # noqa: E402
from benchmarks._results import markdown_table  # noqa: E402
from benchmarks._results import not_yet_run  # noqa: E402
from benchmarks._results import write_section  # noqa: E402

SECTION = "kl"
TITLE = (
    "KL-divergence-weighted aggregation: the unbalanced cell (LeNet, 30 rounds, 3 "
    "seeds)"
)
# The settings are explicit, so a changed yaml default cannot change a cell silently.
PARTITIONS: dict[str, list[str]] = {
    "unbalanced exp, min 32, dir0.5": [
        "partition=unbalanced",
        "partition.sizes=exponential",
        "partition.min_size=32",
        "partition.alpha=0.5",
    ],
    "unbalanced linear, min 32, dir0.5": [
        "partition=unbalanced",
        "partition.sizes=linear",
        "partition.min_size=32",
        "partition.alpha=0.5",
    ],
    "unbalanced exp, min 32, dir0.1": [
        "partition=unbalanced",
        "partition.sizes=exponential",
        "partition.min_size=32",
        "partition.alpha=0.1",
    ],
}
DEFAULT_PARTITIONS = ["unbalanced exp, min 32, dir0.5"]
_KL = ["strategy=kl_weighted", "strategy.reference=pooled", "strategy.smoothing=0.001"]
ARMS: dict[str, list[str]] = {
    "fedavg": ["strategy=fedavg"],
    "exp closer": [
        *_KL,
        "strategy.mode=exp",
        "strategy.tau=1.0",
        "strategy.a=1.0",
        "strategy.direction=closer",
    ],
    "exp farther": [
        *_KL,
        "strategy.mode=exp",
        "strategy.tau=1.0",
        "strategy.a=1.0",
        "strategy.direction=farther",
    ],
    "disco": [
        *_KL,
        "strategy.mode=disco",
        "strategy.a=0.5",
        "strategy.b=0.1",
        "strategy.direction=closer",
    ],
    "disco a=0.05": [
        *_KL,
        "strategy.mode=disco",
        "strategy.a=0.05",
        "strategy.b=0.1",
        "strategy.direction=closer",
    ],
}
DATASETS = ["fashion_mnist", "mnist"]
DEFAULT_DATASETS = ["fashion_mnist"]
SEEDS = [0, 1, 2]
PROTOCOL = LENET_PROTOCOL
COMMAND = "nice -n 10 .venv/bin/python benchmarks/bench_kl.py --commit --pin HEAD"


def base(dataset: str, seed: int) -> list[str]:
    return lenet_overrides(dataset, seed)


def cells(
    datasets: list[str], partitions: list[str], arms: list[str], seeds: list[int]
) -> list[Cell]:
    """Seed-major, so a partial grid has whole seeds of every arm."""
    return [
        Cell.of(
            [*base(ds, seed), *PARTITIONS[part], *ARMS[arm]],
            dataset=ds,
            partition=part,
            arm=arm,
            seed=seed,
            **PROTOCOL,
        )
        for seed in seeds
        for ds in datasets
        for part in partitions
        for arm in arms
    ]


def compose_cfg(overrides: list[str]) -> dict[str, Any]:
    """The resolved config ``bouquet-sim <overrides>`` would run."""
    from hydra import compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    container = OmegaConf.to_container(cfg, resolve=True)
    if not isinstance(container, dict):
        raise TypeError(
            f"composed config is a {type(container).__name__}, not a mapping"
        )
    return container  # type: ignore[return-value]


def check(grid: list[Cell], *, with_data: bool = True) -> None:
    """Compose and validate every cell as ``bouquet-sim`` would (with the data: cuts and
    caches
    the partitions too); raise on the first refusal."""
    from bouquet.simulations.config.validate import validate_config
    from bouquet.simulations.config.validate import validate_run

    for cell in grid:
        cfg = compose_cfg(list(cell.overrides))
        (validate_run if with_data else validate_config)(cfg)
        print(f"ok: {cell.label()}", flush=True)


# ------------------------------------------------------------------------------- report
def _final(record: dict[str, Any]) -> float:
    return float(record["rounds"][-1]["accuracy"])


def _weight_range(records: list[dict[str, Any]]) -> str:
    """Smallest and largest normalised client weight of the last round (mean over
    seeds)."""
    last = [
        r["rounds"][-1].get("kl_weights")
        for r in records
        if r["rounds"] and r["rounds"][-1].get("kl_weights")
    ]
    if not last:
        return "n_i/N"
    low = statistics.fmean(min(w) for w in last)
    high = statistics.fmean(max(w) for w in last)
    return f"{low:.3f}-{high:.3f}"


def _fallback_rounds(records: list[dict[str, Any]]) -> str:
    """Rounds in which FedDisco's weights were all 0 (the round fell back to n_i), per
    seed."""
    counts = [
        sum(1 for x in r["rounds"] if x.get("kl_disco_all_zero")) for r in records
    ]
    return (
        " ".join(map(str, counts))
        if any("kl_disco_all_zero" in x for r in records for x in r["rounds"])
        else ""
    )


def verdict(dataset: str, partition: str, finals: dict[str, dict[int, float]]) -> str:
    """One plain sentence per (dataset, partition): does any KL setting gain beyond the
    seed spread?

    An arm gains beyond the seed spread when it beats FedAvg in every paired seed (at
    least 3) and its mean paired difference exceeds the larger standard deviation over
    seeds of the two arms' final accuracies; it loses beyond the spread in the mirror
    case.
    """
    where = f"On {dataset} ({partition})"
    fedavg = finals.get("fedavg", {})
    decided, gains, losses, pending = [], [], [], []
    for arm in (a for a in ARMS if a != "fedavg"):
        accs = finals.get(arm, {})
        seeds = sorted(set(accs) & set(fedavg))
        if len(seeds) < len(SEEDS):
            if accs or fedavg:
                pending.append(f"{arm} ({len(seeds)} paired seeds)")
            continue
        diffs = [accs[s] - fedavg[s] for s in seeds]
        spread = max(
            mean_sd([fedavg[s] for s in seeds])[1], mean_sd([accs[s] for s in seeds])[1]
        )
        mean = statistics.fmean(diffs)
        decided.append((mean, arm, spread))
        text = (
            f"{arm} ({100 * mean:+.2f} pt, per seed "
            f"{' '.join(f'{100 * d:+.2f}' for d in diffs)}; spread "
            f"{100 * spread:.2f} pt)"
        )
        if all(d > 0 for d in diffs) and mean > spread:
            gains.append(text)
        elif all(d < 0 for d in diffs) and -mean > spread:
            losses.append(text)
    if not decided:
        return (
            f"{where}: no verdict yet (no KL setting has {len(SEEDS)} seeds paired "
            "with FedAvg)."
        )
    if gains:
        out = (
            f"{where}, {'; '.join(gains)} {'gains' if len(gains) == 1 else 'gain'} "
            "over FedAvg beyond the seed spread."
        )
    else:
        mean, arm, spread = max(decided)
        out = (
            f"{where}, no KL-weighted setting gains over FedAvg beyond the seed "
            "spread: the largest mean paired "
            f"difference is {arm}'s {100 * mean:+.2f} pt, against a seed spread of "
            f"{100 * spread:.2f} pt."
        )
    if losses:
        out += f" Below FedAvg beyond the spread: {'; '.join(losses)}."
    if pending:
        out += f" Not decided yet: {', '.join(pending)}."
    return out


def render(results: list[dict[str, Any]]) -> str | None:
    """The section's body from the raw records (None when there is no finished cell)."""
    if not results:
        return None
    by: dict[tuple[str, str, str], dict[int, dict[str, Any]]] = defaultdict(dict)
    for r in results:
        k = r["key"]
        by[(k["dataset"], k["partition"], k["arm"])][int(k["seed"])] = r
    rows, sentences = [], []
    for ds in DATASETS:
        for part in PARTITIONS:
            finals = {
                arm: {s: _final(r) for s, r in by[(ds, part, arm)].items()}
                for arm in ARMS
                if by.get((ds, part, arm))
            }
            if not finals:
                continue
            fedavg = finals.get("fedavg", {})
            for arm, accs in finals.items():
                records = [by[(ds, part, arm)][s] for s in sorted(accs)]
                diffs = {s: accs[s] - fedavg[s] for s in sorted(accs) if s in fedavg}
                rows.append(
                    {
                        "dataset": ds,
                        "partition": part,
                        "arm": arm,
                        "seeds": ",".join(map(str, sorted(accs))),
                        "final acc (%)": pm(list(accs.values()), 100),
                        "Δ vs FedAvg per seed (pt)": ""
                        if arm == "fedavg"
                        else " ".join(f"{100 * d:+.2f}" for d in diffs.values()),
                        "Δ vs FedAvg (pt)": ""
                        if arm == "fedavg" or not diffs
                        else pm(list(diffs.values()), 100),
                        "weights min-max (last round)": _weight_range(records),
                        "disco rounds all 0 (per seed)": _fallback_rounds(records),
                        "wall s / cell": (
                            f"{mean_sd([r['wall_s'] for r in records])[0]:.0f}"
                        ),
                    }
                )
            sentences.append(verdict(ds, part, finals))
    cols = [
        "dataset",
        "partition",
        "arm",
        "seeds",
        "final acc (%)",
        "Δ vs FedAvg per seed (pt)",
        "Δ vs FedAvg (pt)",
        "weights min-max (last round)",
        "disco rounds all 0 (per seed)",
        "wall s / cell",
    ]
    done = {
        (r["key"]["dataset"], r["key"]["partition"], r["key"]["arm"], r["key"]["seed"])
        for r in results
    }
    todo = [
        c.key_dict
        for c in cells(DEFAULT_DATASETS, DEFAULT_PARTITIONS, list(ARMS), SEEDS)
        if (
            c.key_dict["dataset"],
            c.key_dict["partition"],
            c.key_dict["arm"],
            c.key_dict["seed"],
        )
        not in done
    ]
    body = (
        "Real `bouquet-sim` runs in Flower's simulation engine: 10 clients, all "
        "clients every round, LeNet, 30 rounds, "
        "1 local epoch, batch 32, SGD lr 0.01 momentum 0.9. `partition=unbalanced`: "
        "every client gets `min_size` "
        "samples, the rest is split by flwr-datasets' size rule (exponential: client "
        "i = 1..10 gets a share ~ e^i; "
        "linear: ~ i), labels within those sizes by flwr-datasets' "
        "`InnerDirichletPartitioner` (Dirichlet(alpha) "
        "class priors per client). `exp`: w_i ~ n_i^a exp(-(s_i - min s)/tau), "
        "tau=1, a=1; `disco`: "
        "w_i ~ ReLU(n_i/N - a s_i + b), FedDisco's a=0.5, b=0.1, and a=0.05, b=0.1; "
        "s_i = KL(P_i || Q) "
        "(`closer`) or its negative (`farther`); Q = the pooled client histograms, "
        "smoothing 1e-3. Mean ± sd "
        "over seeds; `Δ vs FedAvg` is paired by seed. An arm *gains beyond the seed "
        "spread* when it beats FedAvg "
        "in every paired seed (3) and its mean paired difference exceeds the larger "
        "sd over seeds of the two "
        "arms' final accuracies. Raw per-cell results: "
        "`benchmarks/results/kl.jsonl`.\n\n"
        + markdown_table(rows, cols)
        + "\n**Reading (computed).** "
        + " ".join(sentences)
        + "\n"
    ) + overhead_note(results)
    body += not_yet_run(
        ["{dataset}/{arm}/seed {seed}".format(**k) for k in todo],
        COMMAND,
        shown=len(todo),
    )
    body += (
        "\nThe earlier reduced grid of issue 4 (MNIST, MLP, 10 rounds, "
        "Dirichlet(0.1) and 2 labels per client, "
        "clients called in-process) found no gain beyond the seed spread; its table "
        "is in this file's git "
        "history.\n"
    )
    return body


def report() -> list[Path]:
    """Rebuild the ``kl`` section from ``results/kl.jsonl``; leave RESULTS.md alone
    while it has no cell."""
    body = render(load_results(SECTION))
    if body is None:
        print(
            f"no finished {SECTION} cell in benchmarks/results/{SECTION}.jsonl: "
            "RESULTS.md left alone",
            flush=True,
        )
        return []
    write_section(SECTION, TITLE, body, command=COMMAND + " (report: --report)")
    return [ROOT / "benchmarks/RESULTS.md"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=DEFAULT_DATASETS, choices=DATASETS)
    p.add_argument(
        "--partitions", nargs="+", default=DEFAULT_PARTITIONS, choices=list(PARTITIONS)
    )
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    grid_arguments(p, SEEDS)
    p.add_argument(
        "--check",
        action="store_true",
        help="compose and validate every cell (with the data), run nothing",
    )
    args = p.parse_args()
    grid = cells(args.datasets, args.partitions, args.arms, args.seeds)
    if args.check:
        check(grid)
        return
    if not args.report:
        run_grid(SECTION, grid, commit=args.commit, after_cell=report, pin=args.pin)
    report()
    print(f"load average: {', '.join(f'{v:.1f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
