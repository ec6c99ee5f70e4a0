"""The pure parts of :class:`~bouquet.strategies.depth_fedavg.DepthFedAvg`.

:func:`name_depths` reads every array name's depth tag, :func:`submodel_names` lists the
depth-``d`` sub-model, :func:`aggregate_by_name` is the name-wise weighted mean (formula
in :mod:`bouquet.strategies.depth_fedavg`), :func:`submodel_arrays` checks a reply's
arrays against the global model (:func:`submodel_depth` its names), :func:`node_info`
reads a node's answer to the ``node-info`` query and :func:`check_depth_settings`
refuses impossible settings. No state: tests call these directly.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from collections.abc import Sequence

import numpy as np
from flwr.app import ArrayRecord
from flwr.app import Message

from bouquet import keys

DEFAULT_DEPTH_PATTERN = r"^(?:stages|exits)\.d(\d+)\."


def name_depths(
    names: Iterable[str], pattern: str = DEFAULT_DEPTH_PATTERN
) -> dict[str, int]:
    """Depth tag of every name (0 for names without a tag)."""
    regex = re.compile(pattern)
    out = {}
    for name in names:
        match = regex.search(name)
        out[name] = int(match.group(1)) if match else 0
    return out


def submodel_names(depths: dict[str, int], depth: int) -> list[str]:
    """Names of the depth-``depth`` sub-model, in the order of ``depths``."""
    return [n for n, d in depths.items() if d <= depth]


def aggregate_by_name(
    global_arrays: dict[str, np.ndarray],
    replies: Sequence[tuple[dict[str, np.ndarray], float]],
) -> dict[str, np.ndarray]:
    """Weighted mean of every name over the replies that carry it (see module
    docstring).

    Parameters
    ----------
    global_arrays : dict
        Current global arrays (their order is kept; names nobody trained stay
        unchanged).
    replies : list of (arrays, weight)
        Validated reply arrays (a subset of the global names) and their
        ``num-examples``.
    """
    totals: dict[str, float] = {}
    for arrays, weight in replies:
        for name in arrays:
            totals[name] = totals.get(name, 0.0) + weight
    out: dict[str, np.ndarray] = {}
    for name, current in global_arrays.items():
        total = totals.get(name, 0.0)
        if total <= 0:
            out[name] = current
            continue
        acc = None
        for arrays, weight in replies:
            if name in arrays:
                term = arrays[name] * (weight / total)
                acc = term if acc is None else acc + term
        out[name] = np.asarray(acc)
    return out


def submodel_depth(names: set[str], depths: dict[str, int], sent: int) -> int:
    """The depth of the complete sub-model ``names`` of a reply to a depth-``sent``
    message (``ValueError`` for names outside it or an incomplete sub-model)."""
    outside = names - set(submodel_names(depths, sent))
    if outside:
        raise ValueError(
            f"arrays outside its depth-{sent} sub-model: {sorted(outside)[:5]}"
        )
    depth = max((depths[n] for n in names), default=0)
    if depth < 1 or names != set(submodel_names(depths, depth)):
        raise ValueError(
            f"the {len(names)} arrays are not a complete sub-model of any depth "
            f"<= {sent}"
        )
    return depth


def node_info(reply: Message) -> tuple[int, int] | None:
    """``(partition-id, max-depth)`` of a node's answer to the ``node-info`` query, or
    ``None`` for no usable answer (client bytes: a ``partition-id`` must be an int in
    ``[0, 2**31)`` and a ``max-depth`` an int in ``[0, 1000]``)."""
    if reply.has_error() or len(reply.content.metric_records) != 1:
        return None
    info = next(iter(reply.content.metric_records.values()))
    pid, cap = info.get(keys.PARTITION_ID), info.get(keys.MAX_DEPTH, 0)
    if (
        type(pid) is not int
        or not 0 <= pid < 2**31
        or type(cap) is not int
        or not 0 <= cap <= 1000
    ):
        return None
    return pid, cap


def check_depth_settings(
    depths: Sequence[int] | None,
    depth_probs: Sequence[float] | None,
    assignment: str,
    node_info_timeout: float,
    depth_pattern: str,
) -> None:
    """Refuse impossible settings of
    :class:`~bouquet.strategies.depth_fedavg.DepthFedAvg` (``ValueError`` naming the
    setting, its value and what is allowed)."""
    if assignment not in ("per_round", "fixed"):
        raise ValueError(
            f"strategy.assignment={assignment!r} must be 'per_round' or 'fixed'"
        )
    if not float(node_info_timeout) > 0:
        raise ValueError(
            f"strategy.node_info_timeout={node_info_timeout} must be > 0 seconds"
        )
    if depths is not None and (not depths or any(int(d) < 1 for d in depths)):
        raise ValueError(
            f"strategy.depths={depths} must be a non-empty list of depths >= 1"
        )
    if depth_probs is not None:
        probs = [float(p) for p in depth_probs]
        if (
            depths is None
            or len(probs) != len(depths)
            or any(p < 0 for p in probs)
            or sum(probs) <= 0
        ):
            raise ValueError(
                f"strategy.depth_probs={depth_probs} must give one weight >= 0 "
                f"per depth in {depths}"
            )
    if re.compile(depth_pattern).groups < 1:
        raise ValueError(
            f"strategy.depth_pattern={depth_pattern!r} needs one capturing group "
            "(the depth)"
        )


def submodel_arrays(
    record: ArrayRecord, names: set[str], global_arrays: ArrayRecord
) -> dict[str, np.ndarray]:
    """The arrays ``names`` of a reply's ``record``, each decoded and checked against
    the global array of its name (shape, dtype, finite values; ``ValueError``)."""
    arrays: dict[str, np.ndarray] = {}
    for name in names:
        ref = global_arrays[name]
        try:
            arr = record[name].numpy()
        except (TypeError, ValueError) as exc:
            raise ValueError(f"array {name!r} cannot be decoded: {exc}") from exc
        if tuple(arr.shape) != tuple(ref.shape) or str(arr.dtype) != ref.dtype:
            raise ValueError(
                f"array {name!r}: {arr.dtype}{list(arr.shape)} != "
                f"{ref.dtype}{list(ref.shape)}"
            )
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"array {name!r} has non-finite values")
        arrays[name] = arr
    return arrays
