"""Benchmark S4: synchronous FedAvg vs asynchronous policies on clients of heterogeneous
speed.

Methods: ``sync`` (Flower's FedAvg, every round waits for the slowest node),
``constant`` (plain async), ``polynomial`` (FedAsync), ``fedbuff`` (FedBuff) and
``sliding_window`` (S4). Every run uses the same seeded per-node speeds
(:class:`bouquet.clients.SlowClient`) and the same amount of client work (``rounds`` x
``clients`` local trainings). Reported per method (mean +- std over seeds): final and
best accuracy, wall time, time to the target accuracy, and fluctuation = std of the
evaluation loss over the last ``window`` evaluations.

Engines (the strategies, recorder and metering are exactly those of ``bouquet-sim``,
:func:`bouquet.simulations.run.serverapp.run_server`; every client task is real torch
training):

* ``virtual`` (default): :class:`VirtualClockGrid`, a discrete-event grid: node ``i``
  takes ``f_i * base_time`` virtual seconds per task (seeded factors of
  :func:`bouquet.clients.speed_factors`), replies are delivered in virtual completion
  order and times are virtual seconds: independent of the host's load (this machine is
  shared);
* ``threads``: :class:`ThreadGrid`, one thread per node running the real ``ClientApp``
  with ``client=slow`` (it sleeps to its speed); times are wall seconds, so they include
  the host's load and the GIL contention of 20 training threads;
* ``flower``: Flower's simulation engine per cell (Ray; minutes of start-up per cell
  here).

Quick (what fits here: MLP, 4 rounds = 80 async updates, 3 seeds, ~10 CPU-minutes)::

    nice -n 10 .venv/bin/python benchmarks/bench_async.py --quick

Full::

    nice -n 10 .venv/bin/python benchmarks/bench_async.py --model lenet \\
        --seeds 0 1 2 3 4
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import uuid
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Context
from flwr.app import Message
from flwr.app import RecordDict
from flwr.serverapp import Grid

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks._results import markdown_table  # noqa: E402
from benchmarks._results import write_section  # noqa: E402

METHODS = ("sync", "constant", "polynomial", "fedbuff", "sliding_window")


class ThreadGrid(Grid):
    """An in-process ``Grid``: each node runs ``client_app`` in its own worker
    thread."""

    def __init__(self, client_app: Any, num_nodes: int) -> None:
        from flwr.supercore.task_identity import TaskIdentity

        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 0
        self.app = client_app
        self.nodes = {1000 + i: i for i in range(num_nodes)}
        self.contexts = {
            n: Context(
                run_id=1,
                node_id=n,
                node_config={"partition-id": i, "num-partitions": num_nodes},
                state=RecordDict(),
                run_config={},
            )
            for n, i in self.nodes.items()
        }
        self.pools = {n: ThreadPoolExecutor(max_workers=1) for n in self.nodes}
        self.replies: dict[str, Message] = {}
        self.lock = threading.Lock()

    def set_run(self, run_id: int) -> None:  # type: ignore[override]
        pass

    @property
    def run(self) -> Any:  # type: ignore[override]
        return None

    # type: ignore[override]
    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(
            content=content,
            message_type=message_type,
            dst_node_id=dst_node_id,
            group_id=group_id,
        )

    def get_node_ids(self) -> Iterable[int]:
        return list(self.nodes)

    def _work(self, mid: str, msg: Message) -> None:
        try:
            reply = self.app(msg, self.contexts[msg.metadata.dst_node_id])
        except Exception as exc:  # as Flower does: the exception becomes an error reply
            from flwr.app import Error

            reply = Message(Error(code=0, reason=repr(exc)), reply_to=msg)
        with self.lock:
            self.replies[mid] = reply

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            mid = str(uuid.uuid4())
            msg.metadata.__dict__["_message_id"] = mid
            self.pools[msg.metadata.dst_node_id].submit(self._work, mid, msg)
            ids.append(mid)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        with self.lock:
            return [self.replies.pop(m) for m in list(message_ids) if m in self.replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        pending = set(self.push_messages(messages))
        out: list[Message] = []
        while pending:
            got = list(self.pull_messages(pending))
            pending -= {m.metadata.reply_to_message_id for m in got}
            out.extend(got)
            time.sleep(0.01)
        return out

    def close(self) -> None:
        for pool in self.pools.values():
            pool.shutdown(wait=True, cancel_futures=True)


class VirtualClockGrid(ThreadGrid):
    """A discrete-event ``Grid``: node ``i`` needs ``factor_i * base_time_s`` virtual
    seconds.

    A pushed message completes at ``dispatch time + factor_i * base_time_s`` on a
    virtual clock; each pull runs the real ``ClientApp`` on the earliest-completing
    requested message (trained from the model that message carried), advances the clock
    to its completion time and returns that one reply. Arrival order and round times
    then follow the speeds exactly, whatever the host's load; ``trace[k]`` is the
    virtual time of the ``k+1``-th reply.
    """

    def __init__(
        self, client_app: Any, num_nodes: int, factors: np.ndarray, base_time_s: float
    ) -> None:
        super().__init__(client_app, num_nodes)
        self.factors = factors
        self.base_time_s = base_time_s
        self.now = 0.0
        self.pending: dict[str, tuple[float, int, Message]] = {}
        self.trace: list[float] = []

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            mid = str(uuid.uuid4())
            msg.metadata.__dict__["_message_id"] = mid
            node = msg.metadata.dst_node_id
            ready = self.now + float(self.factors[self.nodes[node]]) * self.base_time_s
            self.pending[mid] = (ready, len(self.trace) + len(self.pending), msg)
            ids.append(mid)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        asked = [m for m in message_ids if m in self.pending]
        if not asked:
            return []
        mid = min(asked, key=lambda m: self.pending[m][:2])
        ready, _, msg = self.pending.pop(mid)
        self.now = max(self.now, ready)
        self._work(mid, msg)
        self.trace.append(self.now)
        with self.lock:
            return [self.replies.pop(mid)]


def virtual_times(rows: list[dict[str, Any]], trace: list[float]) -> list[float]:
    """Virtual time of each metrics row: the clock at the last reply counted before
    it."""
    out, count = [], 0
    for r in rows:
        count += int(r["clients_ok"]) + int(r["clients_failed"])
        out.append(trace[count - 1] if count else 0.0)
    return out


def compose(overrides: list[str]) -> dict[str, Any]:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=overrides)
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def overrides_for(method: str, seed: int, args: argparse.Namespace) -> list[str]:
    common = [
        f"dataset={args.dataset}",
        "partition=iid",
        f"model={args.model}",
        "client=slow",
        f"client.base_time_s={args.base_time}",
        f"client.slow_fraction={args.slow_fraction}",
        f"client.slow_factor={args.slow_factor}",
        f"client.speed_sigma={args.sigma}",
        f"client.lr={args.lr}",
        f"simulation.num_clients={args.clients}",
        f"simulation.num_rounds={args.rounds}",
        f"seed={seed}",
    ]
    # speeds come from the virtual clock, not from sleeping
    if args.engine == "virtual":
        common = [
            o.replace("client=slow", "client=plain")
            for o in common
            if not o.startswith(("client.base", "client.slow", "client.speed"))
        ]
    if method == "sync":
        return [*common, "strategy=fedavg"]
    return [
        *common,
        "strategy=async",
        f"strategy.policy={method}",
        f"strategy.eval_every={args.eval_every}",
        f"strategy.alpha={args.alpha}",
    ]


def run_cell(
    method: str, seed: int, args: argparse.Namespace, out: Path
) -> dict[str, Any]:
    """One run; results cached in ``out/<method>-s<seed>/metrics.jsonl`` (resumable)."""
    run_dir = out / f"{method}-s{seed}"
    metrics = run_dir / "metrics.jsonl"
    times_file = run_dir / "virtual_times.json"
    if not (run_dir / "summary.json").exists():
        cfg = compose(overrides_for(method, seed, args))
        if args.engine == "virtual":
            from bouquet.clients.slow import speed_factors
            from bouquet.simulations.run.serverapp import make_client_app
            from bouquet.simulations.run.serverapp import run_server

            factors = speed_factors(
                args.clients, args.sigma, args.slow_fraction, args.slow_factor, seed
            )
            vgrid = VirtualClockGrid(
                make_client_app(cfg), args.clients, factors, args.base_time
            )
            try:
                run_server(vgrid, cfg, run_dir)
            finally:
                vgrid.close()
            rows = [json.loads(line) for line in metrics.read_text().splitlines()]
            times_file.write_text(json.dumps(virtual_times(rows, vgrid.trace)))
        elif args.engine == "flower":
            from bouquet.simulations.run.runner import run_in_simulation

            run_in_simulation(cfg, run_dir)
        else:
            from bouquet.simulations.run.serverapp import make_client_app
            from bouquet.simulations.run.serverapp import run_server

            grid = ThreadGrid(make_client_app(cfg), args.clients)
            try:
                run_server(grid, cfg, run_dir)
            finally:
                grid.close()
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    times = json.loads(times_file.read_text()) if times_file.exists() else None
    return cell_figures(rows, args.target, args.window, times)


def cell_figures(
    rows: list[dict[str, Any]],
    target: float,
    window: int,
    times: list[float] | None = None,
) -> dict[str, Any]:
    t = (
        np.asarray(times)
        if times is not None
        else np.cumsum([r["wall_s"] for r in rows])
    )
    acc = np.array([r["accuracy"] for r in rows], dtype=float)
    loss = np.array([r["loss"] for r in rows], dtype=float)
    hit = np.flatnonzero(acc >= target)
    taus = [r["staleness_mean"] for r in rows if r.get("staleness_mean") is not None]
    return {
        "staleness": float(np.mean(taus)) if taus else None,
        "staleness_max": max(
            (r["staleness_max"] for r in rows if r.get("staleness_max") is not None),
            default=None,
        ),
        "final_acc": float(acc[-1]),
        "best_acc": float(acc.max()),
        "wall_s": float(t[-1]),
        "time_to_target_s": float(t[hit[0]]) if len(hit) else None,
        "fluctuation": float(np.std(loss[1:][-window:])),
        "curve": [(float(a), float(b)) for a, b in zip(t, acc, strict=True)],
    }


def _ms(values: list[float | None], fmt: str = "{:.3f}") -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "not reached"
    miss = len(values) - len(vals)
    text = (fmt + " ± " + fmt).format(float(np.mean(vals)), float(np.std(vals)))
    return text + (f" ({miss} of {len(values)} not reached)" if miss else "")


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--model", default="mlp")
    p.add_argument("--clients", type=int, default=20)
    p.add_argument(
        "--rounds",
        type=int,
        default=20,
        help="sync rounds; async budget = rounds x clients updates",
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument(
        "--base-time",
        type=float,
        default=1.0,
        help="simulated task time of a median node (s)",
    )
    p.add_argument("--sigma", type=float, default=0.5)
    p.add_argument("--slow-fraction", type=float, default=0.2)
    p.add_argument("--slow-factor", type=float, default=5.0)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--alpha", type=float, default=0.6)
    p.add_argument("--target", type=float, default=0.9)
    p.add_argument(
        "--window",
        type=int,
        default=8,
        help="evaluations in the fluctuation window (initial one excluded)",
    )
    p.add_argument(
        "--eval-every",
        type=int,
        default=5,
        help="async: evaluate every this many updates",
    )
    p.add_argument(
        "--engine", choices=("virtual", "threads", "flower"), default="virtual"
    )
    p.add_argument(
        "--out",
        default=str(ROOT / "benchmarks" / ".runs" / "async"),
        help="run cache (resumable)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="reduced grid: 4 rounds (what RESULTS.md shows)",
    )
    p.add_argument("--note", default="", help="text appended to the RESULTS.md section")
    args = p.parse_args()
    if args.quick:
        args.rounds = 4
    out = (
        Path(args.out)
        / f"{args.dataset}-{args.model}-c{args.clients}-r{args.rounds}-{args.engine}"
    )
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[dict[str, Any]]] = {}
    for method in args.methods:
        for seed in args.seeds:
            t0 = time.time()
            fig = run_cell(method, seed, args, out)
            results.setdefault(method, []).append(fig)
            print(
                f"{method} seed {seed}: acc {fig['final_acc']:.4f} wall "
                f"{fig['wall_s']:.1f}s ({time.time() - t0:.0f}s)",
                flush=True,
            )
    rows = []
    for method, figs in results.items():
        rows.append(
            {
                "method": method,
                "final accuracy": _ms([f["final_acc"] for f in figs]),
                "best accuracy": _ms([f["best_acc"] for f in figs]),
                "time (s)": _ms([f["wall_s"] for f in figs], "{:.1f}"),
                f"time to {args.target:.0%} (s)": _ms(
                    [f["time_to_target_s"] for f in figs], "{:.1f}"
                ),
                f"fluctuation (std loss, last {args.window} evals)": _ms(
                    [f["fluctuation"] for f in figs], "{:.4f}"
                ),
                "mean / max staleness": "-"
                if figs[0]["staleness"] is None
                else f"{np.mean([f['staleness'] for f in figs]):.1f} / "
                f"{max(f['staleness_max'] for f in figs)}",
            }
        )
    (out / "table.json").write_text(
        json.dumps(
            {
                "rows": rows,
                "curves": {m: [f["curve"] for f in v] for m, v in results.items()},
            }
        )
    )
    times = (
        "times in virtual seconds, task time = factor x base time"
        if args.engine == "virtual"
        else "wall-clock times"
    )
    body = (
        f"{args.dataset}, model {args.model}, {args.clients} clients (IID), seeds "
        f"{args.seeds}; client speed factors "
        f"log-normal(sigma={args.sigma}) with {args.slow_fraction:.0%} stragglers "
        f"x{args.slow_factor}, "
        f"simulated task time of a median node {args.base_time} s; the same client "
        "work for every method "
        f"({args.rounds} sync rounds = {args.rounds * args.clients} async updates), "
        f"async mixing alpha={args.alpha}, "
        f"evaluation every {args.eval_every} updates (async) or round (sync); "
        "fluctuation = std of the "
        f"evaluation loss over the last {args.window} evaluations (sync: its "
        f"{args.rounds} rounds, so mostly trend); engine: {args.engine} "
        f"({times}).\n\n"
        + markdown_table(rows, list(rows[0]))
        + (f"\n\n{args.note}" if args.note else "")
    )
    argv = (
        sys.argv[: sys.argv.index("--note")] + sys.argv[sys.argv.index("--note") + 2 :]
        if "--note" in sys.argv
        else sys.argv
    )
    write_section(
        "async",
        "S4: asynchronous training with staleness policies",
        body,
        " ".join(["python", *argv]),
    )
    print(markdown_table(rows, list(rows[0])))


if __name__ == "__main__":
    main()
