"""The ``search`` task: ENAS-style architecture search of the early-exit backbone on the
server.

Method S2, steps S1-S3 (ENAS, Pham et al., 2018, arXiv:1802.03268; reward after MnasNet,
Tan et al., 2019, arXiv:1807.11626). The search space, the supernet, the controller and
the reward :math:`R = Acc(h) \\cdot \\prod_c (c(h) / C)^{-\\beta w}` are in
:mod:`bouquet.models.nas`; the costs :math:`c(h)` priced (``search.cost``: ``params``,
``macs`` or ``params_macs``, the default) are measured on the early-exit model of each
network (:func:`~bouquet.simulations.methods.search_loop.network_costs`). Every sampled
network's accuracy, parameters, MACs and reward are in ``search.jsonl`` (``sampled``)
and plotted as accuracy vs MACs in ``search_curve.png``.

The server's image samples are the dataset's training split (at most
``search.max_train_samples`` of them, drawn with the seed), split into a search-training
part and a validation part (``search.val_fraction``). Each of ``search.steps`` steps

1. trains the shared weights for ``shared_batches`` Adam batches, each on one network
   drawn by the controller (uniformly during the first ``warmup_steps`` steps);
2. samples ``controller_samples`` networks, scores each on a fresh random validation
   batch of ``val_batch`` samples with the shared weights, and takes one REINFORCE step
   with a moving-average baseline.

The cost per step is fixed (``shared_batches * batch_size`` training samples), so the
default (40 steps) trains on ~26k samples. At the end the greedy network,
``final_samples`` sampled ones and the three best seen are scored on
``final_val_samples`` validation samples; the one with the highest reward is written to
``architecture.json`` (architecture, accuracy, parameters, reward, ...), with the curve
in ``search_curve.png``, the per-step log in ``search.jsonl`` and ``summary.json``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bouquet.models.nas import make_space
from bouquet.models.nas import search_space_size
from bouquet.simulations.methods.experiments import get_experiment
from bouquet.simulations.methods.search_loop import COSTS
from bouquet.simulations.methods.search_loop import Search

logger = logging.getLogger("bouquet.progress")

ARCH_FILE = "architecture.json"
CURVE_FILE = "search_curve.png"
LOG_FILE = "search.jsonl"

DEFAULTS: dict[str, Any] = {
    "steps": 40,
    "warmup_steps": 5,
    "shared_batches": 10,
    "batch_size": 64,
    "shared_lr": 0.002,
    "threads": 1,
    "controller_samples": 4,
    "controller_lr": 0.02,
    "controller_hidden": 32,
    "baseline_decay": 0.9,
    "entropy_weight": 0.001,
    "val_fraction": 0.1,
    "val_batch": 256,
    "max_train_samples": 20000,
    "final_samples": 8,
    "final_val_samples": 2000,
    "beta": 1,
    "w": 0.07,
    "cost": "params_macs",
}


def search_settings(cfg: dict[str, Any]) -> dict[str, Any]:
    """``cfg["search"]`` over :data:`DEFAULTS`, validated (``ValueError`` names the
    key)."""
    s = {**DEFAULTS, **(cfg.get("search") or {})}
    unknown = set(s) - set(DEFAULTS)
    if unknown:
        raise ValueError(
            f"search.{sorted(unknown)[0]} is unknown; allowed: {', '.join(DEFAULTS)}"
        )
    for key in (
        "steps",
        "threads",
        "shared_batches",
        "batch_size",
        "controller_samples",
        "val_batch",
        "final_val_samples",
    ):
        if int(s[key]) < 1:
            raise ValueError(f"search.{key}={s[key]} must be >= 1")
    for key in ("warmup_steps", "final_samples"):
        if int(s[key]) < 0:
            raise ValueError(f"search.{key}={s[key]} must be >= 0")
    if not 0.0 < float(s["val_fraction"]) < 1.0:
        raise ValueError(f"search.val_fraction={s['val_fraction']} must be in (0, 1)")
    if s["max_train_samples"] is not None and int(s["max_train_samples"]) < 10:
        raise ValueError(
            f"search.max_train_samples={s['max_train_samples']} must be >= 10 or null"
        )
    if float(s["shared_lr"]) <= 0:
        raise ValueError(f"search.shared_lr={s['shared_lr']} must be > 0")
    if s["cost"] not in COSTS:
        raise ValueError(f"search.cost={s['cost']!r} must be one of {', '.join(COSTS)}")
    return s


def split_server_data(
    x: np.ndarray,
    y: np.ndarray,
    val_fraction: float,
    max_samples: int | None,
    seed: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Seeded subset of the server's samples, split into (x_train, y_train, x_val,
    y_val)."""
    rng = np.random.default_rng(seed + 104729)
    order = rng.permutation(len(y))[: max_samples or len(y)]
    n_val = max(1, int(round(val_fraction * len(order))))
    val, train = order[:n_val], order[n_val:]
    return x[train], y[train], x[val], y[val]


def plot_search_curve(history: list[dict[str, Any]], path: Path) -> None:
    """Shared-weight loss and mean controller reward per step; accuracy vs MACs of the
    sampled networks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(15, 4))
    ax1.plot([r["step"] for r in history], [r["shared_loss"] for r in history])
    ax1.set_xlabel("step")
    ax1.set_ylabel("shared-weight training loss")
    rows = [r for r in history if "mean_reward" in r]
    ax2.plot(
        [r["step"] for r in rows], [r["mean_reward"] for r in rows], label="mean reward"
    )
    ax2.plot([r["step"] for r in rows], [r["baseline"] for r in rows], label="baseline")
    ax2.set_xlabel("step")
    ax2.set_ylabel("reward")
    ax2.legend()
    pts = [
        (x["macs"], x["accuracy"], r["step"])
        for r in rows
        for x in r.get("sampled", [])
    ]
    if pts:
        sc = ax3.scatter(
            [p[0] / 1e6 for p in pts],
            [p[1] for p in pts],
            c=[p[2] for p in pts],
            s=12,
            cmap="viridis",
        )
        fig.colorbar(sc, ax=ax3, label="step")
    ax3.set_xlabel("mean MACs over exits (M) of the sampled network")
    ax3.set_ylabel("validation accuracy (shared weights)")
    ax3.set_title("accuracy vs cost of the sampled networks", fontsize=9)
    for ax in (ax1, ax2, ax3):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_search(cfg: dict[str, Any], run_dir: str) -> dict[str, Any]:
    """``TASKS["search"]``: run the search for ``cfg`` and write its outputs into
    ``run_dir``."""
    settings = search_settings(cfg)
    model_cfg = cfg.get("model") or {}
    if model_cfg.get("name") != "early_exit":
        raise ValueError(
            f"model.name={model_cfg.get('name')!r}: the search task needs "
            "model=early_exit"
        )
    seed = int(cfg.get("seed", 0))
    # the machine's cores are shared: 1 by default
    torch.set_num_threads(int(settings["threads"]))
    out = Path(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
    ds = get_experiment(cfg).dataset
    space = make_space(
        ds.input_shape,
        ds.num_classes,
        families=tuple(model_cfg.get("families") or ("basic", "bottleneck")),
        blocks_per_stage=tuple(model_cfg.get("blocks_per_stage") or (1, 2)),
        widths=model_cfg.get("widths"),
    )
    size = search_space_size(space)
    logger.info(
        "search space: N=%d candidates per pool, L=%d pools, %d networks (%s)",
        size["N"],
        size["L"],
        size["count"],
        ", ".join(space.candidates),
    )
    data = split_server_data(
        ds.x_train,
        ds.y_train,
        float(settings["val_fraction"]),
        settings["max_train_samples"],
        seed,
    )
    t0 = time.perf_counter()
    search = Search(space, data, settings, seed)
    result = search.run()
    (out / ARCH_FILE).write_text(json.dumps(result, indent=2))
    (out / LOG_FILE).write_text("".join(json.dumps(r) + "\n" for r in search.history))
    plot_search_curve(search.history, out / CURVE_FILE)
    summary = {
        "status": "ok",
        "task": "search",
        "final_accuracy": result["accuracy"],
        "params": result["params"],
        "reward": result["reward"],
        "choices": result["choices"],
        "wall_s": round(time.perf_counter() - t0, 3),
        "total_bytes_up": 0,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    logger.info(
        "best network %s: accuracy %.4f, %d params (baseline %d), MACs per exit %s "
        "(baseline %s), "
        "reward %.4f (cost %s, beta %d); %s",
        result["choices"],
        result["accuracy"],
        result["params"],
        result["baseline_params"],
        result["macs_per_exit"],
        result["baseline_macs_per_exit"],
        result["reward"],
        result["cost"],
        result["beta"],
        out / ARCH_FILE,
    )
    return summary
