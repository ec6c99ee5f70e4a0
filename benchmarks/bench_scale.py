"""Many clients: start-up, round time, memory and client state against the population
(issue 32).

Protocol: MNIST, LeNet, 10 clients sampled per round, 4 rounds, 1 local epoch, batch 32;
populations 100, 1,000 and 10,000; IID and Dirichlet(0.5); ``client=plain`` and
``client=topk`` (1% + error feedback, whose residuals are the per-client state).
Dirichlet(0.5) at 10,000 clients cannot give every client flwr-datasets' default minimum
(it is refused before start), so that cell uses the documented rule
``partition.min_partition_size=0``. Each cell is one real ``bouquet-sim`` run in
Flower's simulation engine. Measured per cell: time from start to the first train reply
(``first_reply_s``), mean wall time of rounds 2-4, peak RSS of the whole process tree
(the driver, Ray and its workers; sampled every 0.2 s from ``/proc``), and the bytes of
the clients' spilled state (``client_state/``). Ratios are against the 100-client cell
of the same partition and client, measured in the same invocation. Run it alone (pause
other grids: ``touch benchmarks/results/.pause``)::

    .venv/bin/python benchmarks/bench_scale.py --commit      # run what is missing
    .venv/bin/python benchmarks/bench_scale.py --report      # RESULTS.md section only
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._grid import _append  # noqa: E402
from benchmarks._grid import _commit  # noqa: E402
from benchmarks._grid import done_keys  # noqa: E402
from benchmarks._grid import load_results  # noqa: E402
from benchmarks._grid import pinned_tree  # noqa: E402
from benchmarks._grid import results_path  # noqa: E402
from benchmarks._results import markdown_table  # noqa: E402
from benchmarks._results import write_section  # noqa: E402

SECTION = "scale"
POPULATIONS = (100, 1000, 10000)
PARTITIONS = {
    "iid": ["partition=iid"],
    "dirichlet(0.5)": ["partition=dirichlet", "partition.alpha=0.5"],
}
CLIENTS = {
    "plain": ["client=plain"],
    "topk 1% + EF": ["client=topk", "client.alpha=0.01"],
}
ROUNDS = 4


def overrides(population: int, partition: str, client: str) -> list[str]:
    out = [
        "dataset=mnist",
        "model=lenet",
        f"simulation.num_clients={population}",
        f"simulation.fraction_train={10 / population}",
        f"simulation.num_rounds={ROUNDS}",
        "client.local_epochs=1",
        "client.batch_size=32",
        *PARTITIONS[partition],
        *CLIENTS[client],
    ]
    if partition.startswith("dirichlet") and population >= 10000:
        # the documented rule for a population this large
        out.append("partition.min_partition_size=0")
    return out


def _tree_rss(root: int) -> int:
    """RSS bytes of ``root`` and all its descendants."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            rss[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[21]) * os.sysconf(
                "SC_PAGE_SIZE"
            )
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total


def run_cell(population: int, partition: str, client: str, pin: str | None) -> dict:
    run_dir = Path(tempfile.mkdtemp(prefix="bouquet-scale-")) / "run"
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "RAY_USAGE_STATS_ENABLED": "0"}
    commit = "working tree"
    if pin is not None:  # the code of that commit, whatever the working tree holds
        commit, root = pinned_tree(pin)
        env["PYTHONPATH"] = str(root)
    cmd = [
        str(Path(sys.executable).parent / "bouquet-sim"),
        *overrides(population, partition, client),
        f"hydra.run.dir={run_dir}",
    ]
    start = time.perf_counter()
    peak = 0
    with open(run_dir.parent / "log.txt", "wb") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, cwd=run_dir.parent, env=env
        )
        while proc.poll() is None:
            peak = max(peak, _tree_rss(proc.pid))
            time.sleep(0.2)
    wall = time.perf_counter() - start
    rows = (
        [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        if proc.returncode == 0
        else []
    )
    first = next((r["first_reply_s"] for r in rows if "first_reply_s" in r), None)
    later = [r["wall_s"] for r in rows if r.get("round", 0) >= 2]
    state = (
        sum(p.stat().st_size for p in (run_dir / "client_state").rglob("r*.*"))
        if (run_dir / "client_state").is_dir()
        else 0
    )
    return {
        "key": {"population": population, "partition": partition, "client": client},
        "returncode": proc.returncode,
        "wall_s": round(wall, 2),
        "first_reply_s": first,
        "round_s": round(sum(later) / len(later), 3) if later else None,
        "peak_rss_mb": round(peak / 2**20, 1),
        "state_mb": round(state / 1e6, 3),
        "rounds": rows,
        "commit": commit,
        "log_tail": (run_dir.parent / "log.txt").read_text()[-600:]
        if proc.returncode
        else "",
        "load_average": os.getloadavg()[0],
    }


def report() -> list[Path]:
    results = load_results(SECTION)
    base = {
        (r["key"]["partition"], r["key"]["client"]): r
        for r in results
        if r["key"]["population"] == 100
    }
    rows = []
    for r in sorted(
        results,
        key=lambda r: (
            r["key"]["partition"],
            r["key"]["client"],
            r["key"]["population"],
        ),
    ):
        b = base.get((r["key"]["partition"], r["key"]["client"]))

        def ratio(field: str, r: dict = r, b: dict | None = b) -> str:
            if b is None or not r.get(field) or not b.get(field):
                return ""
            return f"{r[field] / b[field]:.2f}x"

        rows.append(
            {
                "partition": r["key"]["partition"],
                "client": r["key"]["client"],
                "population": f"{r['key']['population']:,}",
                "first reply s": f"{r['first_reply_s']:.1f}"
                if r.get("first_reply_s")
                else "failed",
                "vs 100": ratio("first_reply_s"),
                "round s (2-4)": f"{r['round_s']:.2f}" if r.get("round_s") else "",
                "round vs 100": ratio("round_s"),
                "peak RSS MB": f"{r['peak_rss_mb']:.0f}",
                "RSS vs 100": ratio("peak_rss_mb"),
                "client state MB": f"{r['state_mb']:.1f}",
                "load avg": f"{r.get('load_average', 0):.1f}",
            }
        )
    if not rows:
        return []
    body = (
        "Real `bouquet-sim` runs (MNIST, LeNet, 10 clients per round, 4 rounds, 1 "
        "local epoch). `first reply`: "
        "seconds from the driver's start to the first train reply; `round`: mean "
        "wall time of rounds 2-4; peak RSS "
        "of the whole process tree (driver, Ray, workers); `client state`: bytes of "
        "the spilled `context.state` "
        "files at the end. Ratios against the 100-client cell of the same row kind, "
        "same invocation. Dirichlet at "
        "10,000 uses `partition.min_partition_size=0` (flwr-datasets' default "
        "minimum is refused before start "
        "there). Raw: `benchmarks/results/scale.jsonl`.\n\n"
        + markdown_table(rows, list(rows[0]))
    )
    write_section(
        SECTION,
        "Many clients: start-up, rounds, memory and client state vs population",
        body,
        command="touch benchmarks/results/.pause; .venv/bin/python "
        "benchmarks/bench_scale.py --commit",
    )
    return [ROOT / "benchmarks/RESULTS.md"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--populations", nargs="+", type=int, default=list(POPULATIONS))
    p.add_argument(
        "--partitions", nargs="+", default=list(PARTITIONS), choices=list(PARTITIONS)
    )
    p.add_argument("--clients", nargs="+", default=list(CLIENTS), choices=list(CLIENTS))
    p.add_argument("--commit", action="store_true")
    p.add_argument("--report", action="store_true")
    p.add_argument(
        "--pin",
        default=None,
        help="run the cells against this commit's code (a detached worktree)",
    )
    args = p.parse_args()
    if not args.report:
        done = done_keys(SECTION)
        for partition in args.partitions:
            for client in args.clients:
                for population in args.populations:
                    key = {
                        "population": population,
                        "partition": partition,
                        "client": client,
                    }
                    if json.dumps(key, sort_keys=True) in done:
                        continue
                    print(f"scale: {key}", flush=True)
                    record = run_cell(population, partition, client, args.pin)
                    print(
                        f"  rc={record['returncode']} first reply "
                        f"{record['first_reply_s']} s, round {record['round_s']} s, "
                        f"peak {record['peak_rss_mb']} MB, state "
                        f"{record['state_mb']} MB",
                        flush=True,
                    )
                    _append(SECTION, record)
                    changed = report()
                    if args.commit:
                        _commit(
                            [results_path(SECTION), *changed],
                            f"benchmarks: scale cell {key}",
                        )
    report()
    print(f"load average: {', '.join(f'{v:.1f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
