"""What a deployed ClientApp process pays before it trains (issue 18, observation 6).

A SuperNode starts a fresh ``flwr-clientapp`` process for every message, so every import
and data load on the ClientApp path is paid per message. This runs that path in fresh
processes: ``import flwr, torch`` (the floor any Flower + torch app pays), then
bouquet's part (compose the run's config, load the data, cut the partition, build the
client), then the first optimizer step (torch imports ``torch._dynamo`` there).
``cold``: an empty data cache holding only the raw datasets (the first message on a
node: scikit-learn for digits and flwr-datasets for the partition are imported);
``cached``: the digits arrays and partitions cached by the first. Medians of
``--repeats`` processes each; written to the ``client_startup`` section of RESULTS.md::

    .venv/bin/python benchmarks/bench_client_startup.py
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._results import markdown_table  # noqa: E402
from benchmarks._results import write_section  # noqa: E402

PROBE = r"""
import json, sys, time
t0 = time.perf_counter()
import flwr, torch
t1 = time.perf_counter()
from flwr.app import Context, RecordDict
from bouquet.simulations.run.flower_app import _client_app_for, client_config
from bouquet.simulations.methods.experiments import get_experiment
ctx = Context(run_id=1, node_id=1, state=RecordDict(),
              node_config={"partition-id": 1, "num-partitions": 2},
              run_config={"overrides": sys.argv[1]})
cfg = client_config(ctx)
_client_app_for(json.dumps(cfg, sort_keys=True))
client = get_experiment(cfg).client(ctx)
t2 = time.perf_counter()
opt = torch.optim.SGD(client.model.parameters(), lr=0.01)
opt.step()
t3 = time.perf_counter()
print(json.dumps({"flwr_torch": t1 - t0, "bouquet": t2 - t1, "first_step": t3 - t2,
                  "sklearn": "sklearn" in sys.modules,
                  "flwr_datasets": "flwr_datasets" in sys.modules}))
"""


def probe(overrides: str, data: Path) -> dict:
    env = {**os.environ, "BOUQUET_DATA": str(data)}
    out = subprocess.run(
        [sys.executable, "-c", PROBE, overrides],
        env=env,
        capture_output=True,
        text=True,
        cwd=tempfile.gettempdir(),
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--overrides", default="dataset=digits")
    args = p.parse_args()
    from bouquet.data.loaders import data_root

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cold_root = Path(tmp) / "data"
        cold_root.mkdir()
        # the raw datasets only, no derived caches
        for name in ("mnist", "fashion_mnist"):
            if (data_root() / name).is_dir():
                (cold_root / name).symlink_to(data_root() / name)
        runs: dict[str, list[dict]] = {"cold": [], "cached": []}
        for _ in range(args.repeats):
            shutil.rmtree(cold_root / "partitions", ignore_errors=True)
            (cold_root / "digits.npz").unlink(missing_ok=True)
            runs["cold"].append(probe(args.overrides, cold_root))
            runs["cached"].append(probe(args.overrides, cold_root))
        for kind, rs in runs.items():
            rows.append(
                {
                    "ClientApp path": kind,
                    "import flwr + torch (s)": statistics.median(
                        r["flwr_torch"] for r in rs
                    ),
                    "bouquet: config, data, partition, client (s)": statistics.median(
                        r["bouquet"] for r in rs
                    ),
                    "first optimizer step (s)": statistics.median(
                        r["first_step"] for r in rs
                    ),
                    "imports scikit-learn": any(r["sklearn"] for r in rs),
                    "imports flwr-datasets": any(r["flwr_datasets"] for r in rs),
                }
            )
    cols = list(rows[0])
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    body = (
        f"Fresh processes (as a SuperNode starts per message), `{args.overrides}`, "
        "partition 1 of 2, median of "
        f"{args.repeats}. Measured beside other work (load average {load} on "
        f"{os.cpu_count()} cores).\n\n" + markdown_table(rows, cols)
    )
    write_section(
        "client_startup",
        "Deployed ClientApp start-up: bouquet's share per message",
        body,
        command=".venv/bin/python benchmarks/bench_client_startup.py",
    )
    print(markdown_table(rows, cols))


if __name__ == "__main__":
    main()
