"""``DPAccountant``: the (epsilon, delta) a run spends, around Flower's central-DP
wrappers.

Flower 1.42's Message-API wrappers ``DifferentialPrivacyClientSideFixedClipping``
(clients clip, server adds noise) and ``DifferentialPrivacyServerSideFixedClipping``
(server clips and adds noise), and their ``...AdaptiveClipping`` namesakes (the bound
follows a target quantile), add Gaussian noise of standard deviation :math:`zC/m` to the
aggregate of the :math:`m` = ``num_sampled_clients`` sampled clients (DP-FedAvg, McMahan
et al. 2018, arXiv:1710.06963). ``DPAccountant(dp_wrapper, population_size=N,
delta=...)`` goes right outside that wrapper (inside
:class:`~bouquet.strategies.Compressed`, so both see decoded, dense updates) and makes
the release match the accounting:

* **uniform mean**: each reply's weight (``num-examples``) is set to 1, since the noise
  is calibrated to a client's share :math:`C/m` of an unweighted mean (a weighted mean
  gives the largest client more than :math:`1/m`); train metrics are then averaged
  unweighted too;
* **the bound is enforced on what arrived**: an update :math:`u_i = w_i - w` whose norm
  (over the floating-point tensors) exceeds :math:`C` is scaled to :math:`C`
  (client-side clipping does not bound what error feedback adds after it, and a client
  is not trusted), counted in ``dp_clipped_server`` and logged at WARNING; a reply that
  cannot be read as dense arrays of the global shapes is dropped with its reason;
* **accounting** per released aggregate (a round whose aggregate is ``None`` releases
  nothing) with the RDP accountant of Google's ``dp-accounting`` (the backend of
  Flower's own ``RdpAccountant``): a Poisson-subsampled Gaussian with :math:`q = m / N`
  and noise multiplier

  .. math::

      z_{\\text{eff}} = z \\, k / m,

  :math:`k` the replies aggregated (noise :math:`zC/m` on a mean of :math:`k` is noise
  :math:`zCk/m` on their sum, whose sensitivity is :math:`C`), add-or-remove-one-client
  neighbouring. Our reading: Flower samples exactly :math:`m` clients without
  replacement; we account it as Poisson sampling with the same rate, as DP-FedAvg, TF
  Privacy and Opacus do (:math:`q = 1`: plain composition, no amplification).

Around the adaptive-clipping wrappers each release also publishes a noisy count of
clipped updates; both are accounted as one Gaussian
(:func:`adaptive_release_multiplier`).

``epsilon`` at ``delta`` is logged each round through Flower's logger and is part of
``round_report()`` (hence ``metrics.jsonl``, and ``summary.json``'s last value).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import Array
from flwr.app import ArrayRecord
from flwr.app import ConfigRecord
from flwr.app import Message
from flwr.app import MetricRecord
from flwr.app import RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import DifferentialPrivacyClientSideAdaptiveClipping
from flwr.serverapp.strategy import DifferentialPrivacyClientSideFixedClipping
from flwr.serverapp.strategy import DifferentialPrivacyServerSideAdaptiveClipping
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping
from flwr.serverapp.strategy import Strategy

from bouquet.checks import require_integer
from bouquet.checks import require_number
from bouquet.strategies.decoding import DENSE_STYPE
from bouquet.strategies.decoding import check_record
from bouquet.strategies.decoding import dense_view
from bouquet.strategies.decoding import reference_arrays
from bouquet.strategies.decoding import single_array_record
from bouquet.strategies.hooks import RoundReporter
from bouquet.strategies.rdp import RdpLedger
from bouquet.strategies.rdp import adaptive_release_multiplier
from bouquet.strategies.reports import CLIENTS_DROPPED
from bouquet.strategies.reports import DROP_REASONS
from bouquet.strategies.reports import exception_reason
from bouquet.strategies.reports import merge_reports
from bouquet.strategies.reports import record_drop
from bouquet.strategies.screening import node_label
from bouquet.strategies.wrapper import StrategyWrapper
from bouquet.strategies.wrapper import nested
from bouquet.strategies.wrapper import weight_key_of

EPSILON = "epsilon"
CLIPPED = "dp_clipped_server"
FIXED_CLIPPING = (
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideFixedClipping,
)
ADAPTIVE_CLIPPING = (
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
)


class DPAccountant(StrategyWrapper):
    """Uniform weights, the clip bound enforced, and (epsilon, delta) accounting around
    one of
    Flower's central-DP wrappers (see module docstring).

    Parameters
    ----------
    strategy : one of Flower's
    DifferentialPrivacy{Client,Server}Side{Fixed,Adaptive}Clipping
        Flower's wrapper (its noise multiplier, clipping norm and
        ``num_sampled_clients`` are read; for adaptive clipping also
        ``clipped_count_stddev``, see :func:`adaptive_release_multiplier`; around
        server-side adaptive clipping the bound is not enforced a second time, since the
        wrapper counts the updates above it).
    population_size : int
        :math:`N`, the clients the sample is drawn from.
    delta : float
        The :math:`\\delta` at which epsilon is reported, in (0, 1).
    """

    def __init__(
        self, strategy: Strategy, *, population_size: int, delta: float
    ) -> None:
        if not isinstance(strategy, FIXED_CLIPPING + ADAPTIVE_CLIPPING):
            raise ValueError(
                "DPAccountant wraps one of Flower's "
                "DifferentialPrivacy{Client,Server}Side{Fixed,Adaptive}"
                f"Clipping wrappers, not {type(strategy).__name__}"
            )
        if isinstance(strategy, ADAPTIVE_CLIPPING):
            # refuses a noiseless count
            adaptive_release_multiplier(1.0, float(strategy.clipped_count_stddev))
        require_integer(population_size, "population_size", 1)
        require_number(delta, "delta", "(0, 1)")
        if not strategy.noise_multiplier > 0:
            raise ValueError(
                f"noise_multiplier={strategy.noise_multiplier!r}: epsilon is "
                "infinite without noise (> 0 needed)"
            )
        if strategy.num_sampled_clients > population_size:
            raise ValueError(
                f"num_sampled_clients={strategy.num_sampled_clients} exceeds "
                f"population_size={population_size}"
            )
        super().__init__(strategy)
        self.population_size = int(population_size)
        self.delta = float(delta)
        self._ledger = RdpLedger()
        self._epsilon = 0.0
        self._sampled = 0
        self._global: dict[str, np.ndarray] | None = None
        self._clipped = 0
        self._dropped: list[str] = []

    @property
    def epsilon(self) -> float:
        """Epsilon spent so far at :attr:`delta`."""
        return self._epsilon

    def summary(self) -> None:
        dp = self.strategy
        log(
            logging.INFO,
            "\t├──> DPAccountant(N=%d, delta=%g) around %s (z=%s, C=%s, m=%s%s)",
            self.population_size,
            self.delta,
            type(dp).__name__,
            getattr(dp, "noise_multiplier", "?"),
            getattr(dp, "clipping_norm", "?"),
            getattr(dp, "num_sampled_clients", "?"),
            f", clipped-count stddev={dp.clipped_count_stddev}"
            if isinstance(dp, ADAPTIVE_CLIPPING)
            else "",
        )
        self.strategy.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._global = reference_arrays(arrays)
        messages = list(
            self.strategy.configure_train(server_round, arrays, config, grid)
        )
        self._sampled = len(messages)
        dp: Any = self.strategy
        if messages and self._sampled != dp.num_sampled_clients:
            log(
                logging.WARNING,
                "DPAccountant: round %d sampled %d clients, the DP wrapper's "
                "num_sampled_clients is %d: "
                "accounted with the noise it adds",
                server_round,
                self._sampled,
                dp.num_sampled_clients,
            )
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        self._clipped, self._dropped = 0, []
        dp: Any = self.strategy
        # the bound sent this round (an adaptive wrapper moves it after aggregating)
        clip = float(dp.clipping_norm)
        # Server-side adaptive clipping counts the updates above the bound itself:
        # clipping them first would hide them from that count. It clips every update to
        # the same bound.
        enforce = not isinstance(dp, DifferentialPrivacyServerSideAdaptiveClipping)
        weight_key = weight_key_of(self.strategy)
        out: list[Message] = []
        for msg in replies:
            if msg.has_error():
                out.append(msg)
                continue
            try:
                out.append(
                    self._bounded_uniform(
                        msg, clip if enforce else math.inf, weight_key
                    )
                )
            except Exception as exc:  # noqa: BLE001 - any failure of one reply is that reply's drop
                reason = exception_reason(exc)
                record_drop("DPAccountant", node_label(msg), reason, self._dropped)
        if self._clipped:
            log(
                logging.WARNING,
                "DPAccountant: round %d: %d update(s) had a norm above C=%g and were "
                "clipped on the "
                "server",
                server_round,
                self._clipped,
                clip,
            )
        arrays, metrics = self.strategy.aggregate_train(server_round, out)
        if arrays is None:
            log(
                logging.WARNING,
                "DPAccountant: round %d released no aggregate: no privacy spent "
                "(epsilon %.4g at delta %g)",
                server_round,
                self.epsilon,
                self.delta,
            )
            return arrays, metrics
        k = sum(1 for m in out if not m.has_error())
        z_eff = float(dp.noise_multiplier) * k / max(int(dp.num_sampled_clients), 1)
        # the clipped count is released on the same sample
        if isinstance(dp, ADAPTIVE_CLIPPING):
            z_eff = adaptive_release_multiplier(z_eff, float(dp.clipped_count_stddev))
        q = min(1.0, max(self._sampled, k) / self.population_size)
        self._ledger.compose(q, z_eff)
        eps = self._epsilon = self._ledger.epsilon(self.delta)
        log(
            logging.INFO,
            "DPAccountant: round %d: epsilon=%.4f at delta=%g after %d releases "
            "(q=%.4g, z_eff=%.4g, "
            "%d replies)",
            server_round,
            eps,
            self.delta,
            len(self._ledger.events),
            q,
            z_eff,
            k,
        )
        if metrics is not None:
            metrics[EPSILON] = eps
        return arrays, metrics

    def own_report(self) -> dict[str, Any]:
        # Flower's DP wrapper offers no round_report(): read the reports of the
        # strategies below it.
        below = [s for s in nested(self.strategy)[1:] if isinstance(s, RoundReporter)]
        inner = below[0].round_report() if below else {}
        own: dict[str, Any] = {EPSILON: self.epsilon, CLIPPED: self._clipped}
        if self._dropped:
            own[CLIENTS_DROPPED], own[DROP_REASONS] = (
                len(self._dropped),
                list(self._dropped),
            )
        self._dropped, self._clipped = [], 0
        return merge_reports(inner, own)

    def round_report(self) -> dict[str, Any]:
        return self.own_report()

    def state_dict(self) -> dict[str, Any]:
        """The releases composed so far: ``{"events": [[q, z_eff], ...]}``."""
        return {"events": [[q, z] for q, z in self._ledger.events]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        events = state.get("events") if isinstance(state, dict) else None
        if not isinstance(events, list) or not all(
            isinstance(e, list)
            and len(e) == 2
            and all(type(v) in (int, float) for v in e)
            for e in events
        ):
            raise ValueError("DPAccountant state must be {'events': [[q, z], ...]}")
        ledger = RdpLedger()
        for q, z in events:
            ledger.compose(float(q), float(z))  # validates every event
        self._ledger, self._epsilon = ledger, ledger.epsilon(self.delta)

    # ------------------------------------------------------------------ internals
    def _bounded_uniform(self, msg: Message, clip: float, weight_key: str) -> Message:
        """``msg`` with its update scaled to norm <= ``clip`` and its weight set to
        1."""
        reference = self._global
        if reference is None:
            raise ValueError(
                "no global arrays (configure_train was not called on DPAccountant)"
            )
        record = single_array_record(msg.content)
        if any(a.stype != DENSE_STYPE for a in record.values()):
            raise ValueError(
                "a compressed reply reached DPAccountant: put Compressed outside it "
                "(Compressed(DPAccountant(...)))"
            )
        check_record(record, reference, dense_only=True)
        arrays = {name: dense_view(record[name]) for name in reference}
        updates = {
            n: np.subtract(a, reference[n], dtype=np.float64)
            for n, a in arrays.items()
            if reference[n].dtype.kind == "f"
        }
        norm = math.sqrt(
            sum(float(np.dot(u.ravel(), u.ravel())) for u in updates.values())
        )
        if not math.isfinite(norm):
            raise ValueError("the update is not finite")
        if norm > clip * (1 + 1e-6):
            self._clipped += 1
            scale = clip / norm
            arrays = {
                n: (
                    (reference[n] + updates[n] * scale).astype(reference[n].dtype)
                    if n in updates
                    else a
                )
                for n, a in arrays.items()
            }
            record = ArrayRecord({n: Array(np.asarray(a)) for n, a in arrays.items()})
        content = RecordDict()
        for key, value in msg.content.items():
            if isinstance(value, ArrayRecord):
                content[key] = record
            elif isinstance(value, MetricRecord):
                metrics = MetricRecord(dict(value))
                metrics[weight_key] = 1
                content[key] = metrics
            else:
                content[key] = value
        return Message(metadata=msg.metadata, content=content)  # type: ignore[call-overload]
