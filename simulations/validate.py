"""Checks on a resolved config before anything starts: impossible values name their key."""

from __future__ import annotations

from typing import Any


def _require(cond: bool, key: str, value: Any, allowed: str) -> None:
    if not cond:
        raise ValueError(f"{key}={value!r} is not allowed: must be {allowed}")


def validate_config(cfg: dict[str, Any], num_train_samples: int | None = None) -> None:
    """Raise ``ValueError`` naming the first impossible value in ``cfg``.

    ``num_train_samples`` (when known) lets it refuse more clients than samples.
    """
    sim = cfg["simulation"]
    _require(int(sim["num_clients"]) >= 1, "simulation.num_clients", sim["num_clients"], ">= 1")
    _require(int(sim["num_rounds"]) >= 1, "simulation.num_rounds", sim["num_rounds"], ">= 1")
    frac = float(sim["fraction_train"])
    _require(0.0 < frac <= 1.0, "simulation.fraction_train", frac, "in (0, 1]")
    _require(float(sim["round_timeout_s"]) > 0, "simulation.round_timeout_s", sim["round_timeout_s"], "> 0")
    _require(float(sim["client_cpus"]) > 0, "simulation.client_cpus", sim["client_cpus"], "> 0")
    if num_train_samples is not None:
        _require(
            int(sim["num_clients"]) <= num_train_samples,
            "simulation.num_clients",
            sim["num_clients"],
            f"<= the {num_train_samples} training samples",
        )
    client = cfg["client"]
    for key in ("lr",):
        if key in client:
            _require(float(client[key]) > 0, f"client.{key}", client[key], "> 0")
    for key in ("local_epochs",):
        if key in client:
            _require(int(client[key]) >= 0, f"client.{key}", client[key], ">= 0")
    if "batch_size" in client:
        _require(int(client["batch_size"]) >= 1, "client.batch_size", client["batch_size"], ">= 1")
    if "momentum" in client:
        _require(0.0 <= float(client["momentum"]) < 1.0, "client.momentum", client["momentum"], "in [0, 1)")
    part = cfg["partition"]
    if part.get("kind") == "dirichlet":
        _require(float(part["alpha"]) > 0, "partition.alpha", part["alpha"], "> 0")
    if part.get("kind") == "pathological":
        _require(int(part["labels_per_client"]) >= 1, "partition.labels_per_client", part["labels_per_client"], ">= 1")


def validate_run(cfg: dict[str, Any]) -> None:
    """:func:`validate_config`, then the checks that need the data (clients vs samples)."""
    from bouquet.simulations.experiment import get_experiment

    validate_config(cfg)
    validate_config(cfg, num_train_samples=len(get_experiment(cfg).dataset.y_train))
