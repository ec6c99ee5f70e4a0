"""``ServerMomentum``: heavy-ball momentum on the aggregate step of any strategy.

FedAvgM (Hsu et al. 2019, arXiv:1909.06335) as a wrapper, so that it composes with
``Compressed`` (whose decoded mean update it then smooths) and with bouquet's
strategies. With :math:`w` the global arrays sent in ``configure_train`` and
:math:`w_{agg}` the inner strategy's aggregate, the step :math:`\\Delta_t = w_{agg} - w`
becomes

.. math::

    m_t = \\beta\\, m_{t-1} + \\Delta_t, \\qquad w' = w + m_t,

on every float tensor except normalisation statistics (``running_mean`` /
``running_var``, which take the plain aggregate: momentum could make a running variance
negative) and integer tensors. Around ``Compressed(strategy, server_lr=eta)``,
:math:`\\Delta_t = \\eta \\bar u_t`, so :math:`m_t` is :math:`\\eta` times the momentum
of :math:`\\bar u_t` and :math:`w' = w + \\eta \\sum_k \\beta^{t-k} \\bar u_k`. With all
clients in every round, client-side DGC momentum correction with :math:`m = \\beta` and
no sparsification is the same update.

:math:`m` is the wrapper's state (:meth:`ServerMomentum.state_dict`), so a checkpoint
keeps it; a skipped round (no aggregate) or a step that would make the model non-finite
leaves :math:`m` and the model unchanged. Refused at construction around a strategy that
already applies a server optimiser (Flower's FedAvgM with momentum > 0, FedAdam /
FedYogi / FedAdagrad). Without ``configure_train`` first there is no :math:`w`: the
aggregate passes unchanged (logged).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import Array
from flwr.app import ArrayRecord
from flwr.app import Message
from flwr.app import MetricRecord
from flwr.common.logger import log
from flwr.serverapp.strategy import FedAvgM
from flwr.serverapp.strategy import Strategy
from flwr.serverapp.strategy.fedopt import FedOpt

from bouquet.checks import require_number
from bouquet.codecs import is_statistic
from bouquet.strategies.reply_checking import ReplyChecking
from bouquet.strategies.wrapper import log_summary
from bouquet.strategies.wrapper import nested
from bouquet.strategies.wrapper import refuse_byte_models
from bouquet.strategies.wrapper import refuse_twice


class ServerMomentum(ReplyChecking):
    """Heavy-ball momentum :math:`\\beta` on the aggregate step of ``strategy`` (module
    docstring).

    Parameters
    ----------
    strategy : flwr.serverapp.strategy.Strategy
        Any Message-API strategy without a server optimiser of its own.
    momentum : float
        :math:`\\beta \\in (0, 1)`.
    """

    def __init__(self, strategy: Strategy, momentum: float = 0.9) -> None:
        require_number(momentum, "momentum", "(0, 1)")
        refuse_twice(strategy, ServerMomentum, "apply server momentum once")
        for inner in nested(strategy):
            if isinstance(inner, FedOpt) or (
                isinstance(inner, FedAvgM) and inner.server_momentum > 0
            ):
                raise ValueError(
                    f"ServerMomentum(momentum={momentum}) cannot wrap "
                    f"{type(inner).__name__}: it already "
                    "applies its own server optimiser to the aggregate"
                )
        refuse_byte_models(strategy, "ServerMomentum")
        super().__init__(strategy)
        self.momentum = float(momentum)
        self._velocity: dict[str, np.ndarray] = {}  # m_t per float tensor

    def summary(self) -> None:
        log_summary(self, f"ServerMomentum(momentum={self.momentum})")

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        arrays, metrics = self.strategy.aggregate_train(server_round, replies)
        if arrays is None:
            return arrays, metrics
        if self._reference is None:
            log(
                logging.WARNING,
                "ServerMomentum: round %d: no global arrays (configure_train was not "
                "called); the "
                "aggregate passes without momentum",
                server_round,
            )
            return arrays, metrics
        stepped = self._step(server_round, arrays, self._reference)
        return (None, None) if stepped is None else (stepped, metrics)

    def _step(
        self, server_round: int, arrays: ArrayRecord, ref_arrays: dict[str, np.ndarray]
    ) -> ArrayRecord | None:
        """:math:`m = \\beta m + (w_{agg} - w)`, :math:`w' = w + m` on the float
        tensors; None (round
        skipped, :math:`m` unchanged) if that is not finite."""
        beta = self.momentum
        velocity: dict[str, np.ndarray] = {}
        out: dict[str, Array] = {}
        for name, arr in arrays.items():
            ref = ref_arrays.get(name)
            if ref is None or ref.dtype.kind != "f" or is_statistic(name):
                out[name] = arr  # integer tensors and statistics: the plain aggregate
                continue
            agg = arr.numpy()
            if agg.shape != ref.shape:
                log(
                    logging.WARNING,
                    "ServerMomentum: round %d: no momentum on %r: aggregate shape %s "
                    "!= %s",
                    server_round,
                    name,
                    agg.shape,
                    ref.shape,
                )
                out[name] = arr
                continue
            previous = self._velocity.get(name)
            if previous is not None and previous.shape != ref.shape:
                log(
                    logging.WARNING,
                    "ServerMomentum: momentum of %r has shape %s, the tensor %s: "
                    "restarting it from zero",
                    name,
                    previous.shape,
                    ref.shape,
                )
                previous = None
            # an overflow is caught just below
            with np.errstate(over="ignore", invalid="ignore"):
                step = agg.astype(ref.dtype, copy=False) - ref
                m = (
                    step
                    if previous is None
                    else ref.dtype.type(beta) * previous.astype(ref.dtype, copy=False)
                    + step
                )
                new = ref + m
            if not (np.all(np.isfinite(m)) and np.all(np.isfinite(new))):
                log(
                    logging.WARNING,
                    "ServerMomentum: round %d: momentum makes %r non-finite; global "
                    "model and momentum "
                    "unchanged",
                    server_round,
                    name,
                )
                return None
            velocity[name] = m
            out[name] = Array(np.ascontiguousarray(new))
        self._velocity.update(velocity)
        return ArrayRecord(out)

    def state_dict(self) -> dict[str, Any]:
        """:math:`\\beta` and the momentum :math:`m` (copies; empty before the first
        step)."""
        return {
            "momentum": self.momentum,
            "velocity": {k: v.copy() for k, v in self._velocity.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue with the momentum of :meth:`state_dict` (``ValueError`` if it is not
        one)."""
        velocity = state.get("velocity") if isinstance(state, dict) else None
        if not isinstance(velocity, dict) or not all(
            isinstance(k, str)
            and isinstance(v, np.ndarray)
            and v.dtype.kind == "f"
            and bool(np.all(np.isfinite(v)))
            for k, v in velocity.items()
        ):
            raise ValueError(
                "ServerMomentum.load_state_dict: 'velocity' must map tensor names to "
                "finite float arrays"
            )
        saved = state.get("momentum")
        if velocity and saved != self.momentum:
            log(
                logging.WARNING,
                "ServerMomentum: the loaded momentum was built with momentum=%s, "
                "this wrapper has %s; "
                "continuing with it",
                saved,
                self.momentum,
            )
        self._velocity = {k: np.array(v, copy=True) for k, v in velocity.items()}
