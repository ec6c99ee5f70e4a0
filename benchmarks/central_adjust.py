"""The ``central x%`` control of the server-adjustment benchmark: the shared slice
alone.

The server's own :class:`~bouquet.simulations.methods.adjust.ServerAdjuster` (same
slice, same optimiser, same epochs per call) is applied ``simulation.num_rounds`` times
to the initial model, with no clients at all; the model is evaluated after every call.
Writes ``metrics.jsonl`` and ``summary.json`` into ``--run-dir`` like a ``bouquet-sim``
run, so ``benchmarks/_grid.py`` records it as a cell::

    .venv/bin/python benchmarks/central_adjust.py --run-dir /tmp/c \\
        dataset=mnist model=lenet \\
        server.shared_fraction=0.05 simulation.num_rounds=30 seed=0
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

CONF = Path(__file__).resolve().parents[1] / "conf"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run-dir", required=True)
    p.add_argument("overrides", nargs="*", help="Hydra overrides, as for bouquet-sim")
    args = p.parse_args()
    from flwr.app import Array
    from flwr.app import ArrayRecord
    from hydra import compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    from bouquet.simulations.methods.adjust import build_adjust_fn
    from bouquet.simulations.methods.experiment import Experiment

    t0 = time.time()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        raw = compose(
            config_name="config",
            overrides=[*args.overrides, "server=adjust", "server.record_before=false"]
            if not any(o.startswith("server=") for o in args.overrides)
            else args.overrides,
        )
    cfg = OmegaConf.to_container(raw, resolve=True)
    assert isinstance(cfg, dict)
    exp = Experiment(cfg)
    adjust = build_adjust_fn(cfg, exp)
    arrays = ArrayRecord({k: Array(v) for k, v in exp.initial_arrays().items()})
    rounds = []
    for rnd in range(1, int(cfg["simulation"]["num_rounds"]) + 1):
        arrays, rep = adjust(arrays, rnd)
        ev = exp.evaluate_arrays({k: v.numpy() for k, v in arrays.items()})
        rounds.append(
            {
                "round": rnd,
                "accuracy": float(ev["accuracy"]),
                "loss": float(ev["loss"]),
                "adjust_loss": rep.get("adjust_loss"),
                "bytes_up": 0,
            }
        )
    out = Path(args.run_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rounds))
    (out / "summary.json").write_text(
        json.dumps(
            {
                "status": "ok",
                "final_accuracy": rounds[-1]["accuracy"],
                "shared_samples": int(len(adjust.y)),
                "wall_s": round(time.time() - t0, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
