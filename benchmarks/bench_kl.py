"""KL-weighted aggregation vs FedAvg: final/best accuracy and rounds to FedAvg's final accuracy.

Each cell is one federated run built from the Hydra config (``conf/``) exactly as ``bouquet-sim``
builds it: the same ``run_server`` (strategy + wrappers + ``MeteredGrid`` + ``RunRecorder``) and
the same ``ClientApp``. To fit 2 shared cores, the clients are called in-process, one after the
other, by :class:`InlineGrid` instead of Flower's Ray simulation engine (no Ray start-up, no
worker processes; the messages, strategy code and client code are the real ones). Cells whose
``summary.json`` says ``ok`` under ``benchmarks/.runs/kl/`` are skipped (resumable). Writes the
``kl`` section of ``benchmarks/RESULTS.md``.

Full grid of issue 4 (hours on 2 cores)::

    nice -n 10 .venv/bin/python benchmarks/bench_kl.py --datasets mnist fashion_mnist \\
        --clients 10 50 --partitions iid dir0.1 dir0.5 path2 --seeds 0 1 2 --rounds 30 --model lenet

Reduced default: MNIST, 10 clients, MLP, Dirichlet(0.1) and 2 labels per client, 3 seeds,
10 rounds of 1 local epoch.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import shlex
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from uuid import uuid4

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._results import markdown_table, write_section  # noqa: E402

PARTITIONS: dict[str, list[str]] = {
    "iid": ["partition=iid"],
    "dir0.1": ["partition=dirichlet", "partition.alpha=0.1"],
    "dir0.5": ["partition=dirichlet", "partition.alpha=0.5"],
    "path1": ["partition=pathological", "partition.labels_per_client=1"],
    "path2": ["partition=pathological", "partition.labels_per_client=2"],
    "path3": ["partition=pathological", "partition.labels_per_client=3"],
}
ARMS: dict[str, list[str]] = {
    "fedavg": ["strategy=fedavg"],
    "exp closer": ["strategy=kl_weighted", "strategy.mode=exp", "strategy.direction=closer"],
    "exp farther": ["strategy=kl_weighted", "strategy.mode=exp", "strategy.direction=farther"],
    "disco": ["strategy=kl_weighted", "strategy.mode=disco", "strategy.a=0.5", "strategy.b=0.1"],
    "disco a=0.05": ["strategy=kl_weighted", "strategy.mode=disco", "strategy.a=0.05", "strategy.b=0.1"],
}


# ---------------------------------------------------------------------------- in-process runs
def compose_cfg(overrides: list[str]) -> dict[str, Any]:
    """The resolved config ``bouquet-sim <overrides>`` would run."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    container = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(container, dict)
    return container


class InlineGrid:
    """A Flower ``Grid`` that delivers each message to the real ``ClientApp`` in this process.

    Nodes ``1..N`` have ``partition-id`` ``0..N-1`` and a persistent ``context.state``.
    """

    def __init__(self, cfg: dict[str, Any]) -> None:
        from flwr.app import Context, RecordDict

        from bouquet.simulations.server import make_client_app

        self.app = make_client_app(cfg)
        n = int(cfg["simulation"]["num_clients"])
        self.contexts = {
            node: Context(run_id=1, node_id=node, node_config={"partition-id": node - 1, "num-partitions": n},
                          state=RecordDict(), run_config={})
            for node in range(1, n + 1)
        }
        self._replies: dict[str, Any] = {}

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def create_message(self, content: Any, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None) -> Any:
        from flwr.app import Message

        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def push_messages(self, messages: Iterable[Any]) -> list[str]:
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = str(uuid4())
            msg.metadata.__dict__["_run_id"] = 1
            self._replies[msg.metadata.message_id] = self.app(msg, self.contexts[msg.metadata.dst_node_id])
            ids.append(msg.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Any]:
        return [self._replies.pop(i) for i in list(message_ids) if i in self._replies]

    def send_and_receive(self, messages: Iterable[Any], *, timeout: float | None = None) -> list[Any]:
        return self.pull_messages(self.push_messages(messages))


def run_inline(cfg: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """Run ``cfg`` through ``run_server`` on an :class:`InlineGrid`; return the summary."""
    from flwr.serverapp import Grid
    from flwr.supercore.task_identity import TaskIdentity

    from bouquet.simulations.server import run_server
    from bouquet.simulations.validate import validate_config

    Grid.register(InlineGrid)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 0  # as the ServerApp runtime sets
    validate_config(cfg)
    random.seed(int(cfg.get("seed", 0)))
    return run_server(InlineGrid(cfg), cfg, run_dir)  # type: ignore[arg-type]


def run_cell(run_dir: Path, overrides: list[str], report_only: bool = False) -> tuple[list[dict], dict] | None:
    """Run (or reuse) one cell; return its metric rows and summary (None: not run, report only)."""
    summary_path = run_dir / "summary.json"
    if not summary_path.exists() or json.loads(summary_path.read_text()).get("status") != "ok":
        if report_only:
            return None
        t0 = time.process_time()
        print(f"run {run_dir}: {' '.join(overrides)}", flush=True)
        run_inline(compose_cfg(overrides), run_dir)
        print(f"  {time.process_time() - t0:.0f} s CPU", flush=True)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return rows, json.loads((run_dir / "summary.json").read_text())


def reproduce_command() -> str:
    """This invocation without ``--no-write``/``--report-only``/``--note`` (for RESULTS.md)."""
    out, skip = [], False
    for arg in sys.argv[1:]:
        if skip:
            skip = False
        elif arg == "--note":
            skip = True
        elif arg not in ("--no-write", "--report-only"):
            out.append(shlex.quote(arg))
    return "nice -n 10 .venv/bin/python " + " ".join([f"benchmarks/{Path(sys.argv[0]).name}", *out])


def weight_range(res: list[tuple[list[dict], dict]]) -> str:
    """Smallest and largest normalised client weight of the last round (mean over seeds)."""
    last = [r[0][-1].get("kl_weights") for r in res if r[0] and r[0][-1].get("kl_weights")]
    if not last:
        return "n_i/N"
    return f"{np.mean([min(w) for w in last]):.3f}-{np.mean([max(w) for w in last]):.3f}"


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)


def mean_sd(values: list[float]) -> str:
    arr = np.asarray([v for v in values if v is not None], dtype=float)
    if arr.size == 0:
        return "-"
    return f"{arr.mean():.4f} ± {arr.std(ddof=1) if arr.size > 1 else 0.0:.4f}"


def rounds_to(rows: list[dict], target: float) -> int | None:
    """First round whose accuracy reaches ``target`` (None if never)."""
    return next((r["round"] for r in rows if r["round"] > 0 and (r.get("accuracy") or 0) >= target), None)


# ---------------------------------------------------------------------------- report
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=["mnist"])
    p.add_argument("--clients", nargs="+", type=int, default=[10])
    p.add_argument("--partitions", nargs="+", default=["dir0.1", "path2"], choices=list(PARTITIONS))
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--local-epochs", type=int, default=1)
    p.add_argument("--model", default="mlp")
    p.add_argument("--out", default=str(ROOT / "benchmarks/.runs/kl"))
    p.add_argument("--no-write", action="store_true", help="print the table, leave RESULTS.md alone")
    p.add_argument("--report-only", action="store_true", help="tabulate the finished cells, run nothing")
    p.add_argument("--note", default="", help="markdown appended to the RESULTS.md section (observations)")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("flwr").setLevel(logging.WARNING)
    out = Path(args.out)
    table: list[dict] = []
    for ds in args.datasets:
        for nc in args.clients:
            for part in args.partitions:
                results: dict[str, dict[int, tuple[list[dict], dict]]] = {}
                for arm in args.arms:
                    for seed in args.seeds:
                        run_dir = out / ds / f"c{nc}" / part / slug(arm) / f"s{seed}"
                        overrides = [f"dataset={ds}", f"model={args.model}", f"simulation.num_clients={nc}",
                                     f"simulation.num_rounds={args.rounds}", f"client.local_epochs={args.local_epochs}",
                                     f"seed={seed}", *PARTITIONS[part], *ARMS[arm]]
                        cell = run_cell(run_dir, overrides, args.report_only)
                        if cell is not None:
                            results.setdefault(arm, {})[seed] = cell
                base = {s: res[1]["final_accuracy"] for s, res in results.get("fedavg", {}).items()}
                for arm, by_seed in results.items():
                    res = list(by_seed.values())
                    finals = [r[1]["final_accuracy"] for r in res]
                    reach = [rounds_to(r[0], base[s]) for s, r in by_seed.items() if s in base]
                    deltas = [r[1]["final_accuracy"] - base[s] for s, r in by_seed.items() if s in base]
                    table.append({
                        "dataset": ds, "clients": nc, "partition": part, "arm": arm, "seeds": " ".join(map(str, by_seed)),
                        "final acc (mean ± sd)": mean_sd(finals),
                        "best acc": mean_sd([r[1]["best_accuracy"] for r in res]),
                        "Δ final vs FedAvg (per seed)": " ".join(f"{d:+.3f}" for d in deltas),
                        "rounds to FedAvg final": " ".join("-" if x is None else str(x) for x in reach),
                        "weights min-max (last round)": weight_range(res),
                    })
    cols = ["dataset", "clients", "partition", "arm", "seeds", "final acc (mean ± sd)", "best acc",
            "Δ final vs FedAvg (per seed)", "rounds to FedAvg final", "weights min-max (last round)"]
    body = (
        f"Setup: {args.model} model, {args.rounds} rounds, {args.local_epochs} local epoch(s), SGD lr 0.01 momentum 0.9, "
        f"batch 32, all clients every round; `exp`: tau=1, a=1; `disco`: FedDisco's a=0.5, b=0.1; `disco a=0.05`: a=0.05, b=0.1; "
        "Q = pooled client histograms; smoothing 1e-3. Runs use the real server and ClientApp code, "
        "clients called in-process (see the script's docstring).\n\n" + markdown_table(table, cols)
        + ("\n" + args.note if args.note else "")
    )
    if not args.no_write:
        write_section("kl", "KL-divergence-weighted aggregation (issue 4)", body, reproduce_command())
    print(markdown_table(table, cols))


if __name__ == "__main__":
    main()
