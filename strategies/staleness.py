"""Staleness policies for asynchronous federated training (method S4 and its relatives).

In asynchronous training an update computed from model version :math:`v_c` is applied
when the server is already at version :math:`v`; its **staleness** is
:math:`\\tau = v - v_c \\ge 0`. A policy maps :math:`\\tau` to a scale
:math:`s(\\tau) \\in [0, s_{max}]` that multiplies the server's mixing rate (see
:mod:`bouquet.strategies.async_fedavg` for the update rules).

* **constant**: :math:`s(\\tau) = 1` (plain asynchronous training).
* **polynomial** (FedAsync, Xie, Koyejo & Gupta 2019, "Asynchronous Federated
  Optimization"):

  .. math:: s(\\tau) = (1 + \\tau)^{-a}

* **hinge** (FedAsync):

  .. math:: s(\\tau) = 1 \\text{ if } \\tau \\le b, \\quad
            s(\\tau) = \\frac{1}{a (\\tau - b) + 1} \\text{ otherwise}

* **fedbuff** (Nguyen et al. 2022, "Federated Learning with Buffered Asynchronous
  Aggregation"): the server buffers :math:`K` updates, each scaled by
  :math:`(1 + \\tau)^{-a}` (:math:`a = 0.5` in the paper, :math:`a = 0` switches scaling
  off), and applies their mean at once (one new model version per :math:`K` updates).
* **sliding_window** (S4; in the spirit of staleness-aware async-SGD, Zhang, Gupta, Lian
  & Liu 2016, "Staleness-aware Async-SGD for Distributed Deep Learning", which divides
  the learning rate by the staleness): keep the last :math:`W` staleness samples
  :math:`\\tau_{t-W}, \\dots, \\tau_{t-1}`, compute a staleness context value
  :math:`c_t` from them (their mean, or median), and scale the update by its staleness
  *relative to that context*:

  .. math::
      c_t = \\frac{1}{|\\mathcal{W}_t|} \\sum_{\\tau' \\in \\mathcal{W}_t} \\tau',
          \\qquad
      s(\\tau_t) = \\min\\Big(s_{max}, \\Big(\\frac{1 + c_t}{1 +
          \\tau_t}\\Big)^{a}\\Big)

  An update as stale as is usual right now gets the full rate, a staler one is damped, a
  fresher one gets up to :math:`s_{max}` (1 by default: never boosted). With an empty
  window :math:`c_t = \\tau_t` (scale 1). The sample is added to the window *after* it
  is scaled. The rule's functions are :mod:`bouquet.staleness_window`'s, which the
  learners use too.

  Where the window lives (``window_side`` of
  :class:`~bouquet.strategies.async_fedavg.AsyncFedAvg`):

  - ``learner`` (the default; S4's "each learner keeps a sliding window of its own
    staleness samples, adjusts its learning rate, the server applies the update with
    that rate"): the server sends each node the staleness :math:`\\tau_k` of its
    previous applied update; the node (:func:`bouquet.clients.staleness_window_mod`)
    keeps its own window of these samples in ``context.state`` and, when a new one
    arrives, computes

    .. math::
        c = \\operatorname{ctx}(\\tau_{k-W}, \\dots, \\tau_{k-1}), \\qquad
        s = \\min\\Big(s_{max}, \\Big(\\frac{1 + c}{1 + \\tau_k}\\Big)^{a}\\Big),
            \\qquad
        \\eta_{local} = s\\, \\eta

    (the same rule, with the last applied staleness as the estimate of the next one:
    **our reading**), trains with :math:`\\eta_{local}` and reports :math:`s`; the
    server applies the update with the reported :math:`s` (bounded to
    :math:`[0, s_{max}]`; otherwise this class's rule is the fallback). This class then
    only keeps the server's fallback window.
  - ``server``: this class keeps the window and its :math:`s(\\tau_t)` is applied. With
    ``per_node=True`` every node has its own window here, otherwise one window is shared
    by the whole federation.

Every policy also has a **max-staleness cutoff**: an update with :math:`\\tau >`
``max_staleness`` is rejected (scale 0; the strategy drops it and re-dispatches the
node).
"""

from __future__ import annotations

import math
from collections import deque
from inspect import signature
from typing import Any

from bouquet.staleness_window import CONTEXTS
from bouquet.staleness_window import DEFAULT_WINDOW
from bouquet.staleness_window import staleness_context
from bouquet.staleness_window import window_scale


def _check_staleness(staleness: float) -> float:
    if not (
        isinstance(staleness, (int, float))
        and math.isfinite(staleness)
        and staleness >= 0
    ):
        raise ValueError(f"staleness={staleness!r} must be a finite number >= 0")
    return float(staleness)


def polynomial_scale(staleness: float, exponent: float) -> float:
    """FedAsync polynomial scale :math:`(1 + \\tau)^{-a}`."""
    return (1.0 + _check_staleness(staleness)) ** (-exponent)


def hinge_scale(staleness: float, a: float, b: float) -> float:
    """FedAsync hinge scale: 1 up to ``b``, then :math:`1 / (a (\\tau - b) + 1)`."""
    tau = _check_staleness(staleness)
    return 1.0 if tau <= b else 1.0 / (a * (tau - b) + 1.0)


class StalenessPolicy:
    """Base policy: scale 1 (``constant``) and the max-staleness cutoff.

    Parameters
    ----------
    max_staleness : int, optional
        Updates staler than this are rejected (``None``: no cutoff).

    Attributes
    ----------
    buffer_size : int
        Number of updates the server buffers before applying them (1: apply each at
        once).
    server_lr : float or None
        Server learning rate of buffered policies (``None``: the strategy's mixing
        rate).
    """

    name = "constant"

    def __init__(self, *, max_staleness: int | None = None) -> None:
        if max_staleness is not None and int(max_staleness) < 0:
            raise ValueError(f"max_staleness={max_staleness} must be >= 0 or null")
        self.max_staleness = None if max_staleness is None else int(max_staleness)
        self.buffer_size = 1
        self.server_lr: float | None = None

    def accepts(self, staleness: float) -> bool:
        """Whether an update this stale passes the max-staleness cutoff."""
        return (
            self.max_staleness is None
            or _check_staleness(staleness) <= self.max_staleness
        )

    def scale(self, staleness: float, context: float | None = None) -> float:
        """Pure scale of an update this stale (``context``: windowed policies only)."""
        _check_staleness(staleness)
        return 1.0

    def context(self, node_id: int | None = None) -> float | None:
        """Current staleness context value (``None`` for policies without a window)."""
        return None

    def observe(self, staleness: float, node_id: int | None = None) -> None:
        """Record a staleness sample (no-op unless the policy keeps a window)."""

    def __call__(self, staleness: float, node_id: int | None = None) -> float:
        """Scale of ``node_id``'s next update (0 if cut off), then records it."""
        if not self.accepts(staleness):
            return 0.0
        value = self.scale(staleness, self.context(node_id))
        self.observe(staleness, node_id)
        return value

    def describe(self) -> dict[str, Any]:
        """The policy's name and settings (for logs)."""
        return {
            "policy": self.name,
            **{k: v for k, v in vars(self).items() if not k.startswith("_")},
        }

    def state_dict(self) -> dict[str, Any]:
        """What the policy learned in a run, as plain data (memoryless: none)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (a checkpoint of a run with the same policy)."""
        if state:
            raise ValueError(
                f"policy {self.name!r} keeps no state, got keys {sorted(state)}"
            )


class ConstantPolicy(StalenessPolicy):
    """Plain asynchronous training: every update gets scale 1."""


class PolynomialPolicy(StalenessPolicy):
    """FedAsync polynomial :math:`(1 + \\tau)^{-a}`."""

    name = "polynomial"

    def __init__(
        self, *, exponent: float = 0.5, max_staleness: int | None = None
    ) -> None:
        super().__init__(max_staleness=max_staleness)
        if not exponent >= 0:
            raise ValueError(f"exponent={exponent} must be >= 0")
        self.exponent = float(exponent)

    def scale(self, staleness: float, context: float | None = None) -> float:
        return polynomial_scale(staleness, self.exponent)


class HingePolicy(StalenessPolicy):
    """FedAsync hinge: 1 for :math:`\\tau \\le b`, then
    :math:`1 / (a(\\tau - b) + 1)`."""

    name = "hinge"

    def __init__(
        self,
        *,
        hinge_a: float = 10.0,
        hinge_b: float = 4.0,
        max_staleness: int | None = None,
    ) -> None:
        super().__init__(max_staleness=max_staleness)
        if not hinge_a > 0:
            raise ValueError(f"hinge_a={hinge_a} must be > 0")
        if not hinge_b >= 0:
            raise ValueError(f"hinge_b={hinge_b} must be >= 0")
        self.a = float(hinge_a)
        self.b = float(hinge_b)

    def scale(self, staleness: float, context: float | None = None) -> float:
        return hinge_scale(staleness, self.a, self.b)


class FedBuffPolicy(PolynomialPolicy):
    """FedBuff: buffer ``buffer_size`` updates scaled by :math:`(1+\\tau)^{-a}`, apply
    their mean."""

    name = "fedbuff"

    def __init__(
        self,
        *,
        buffer_size: int = 5,
        exponent: float = 0.5,
        server_lr: float = 1.0,
        max_staleness: int | None = None,
    ) -> None:
        super().__init__(exponent=exponent, max_staleness=max_staleness)
        if int(buffer_size) < 1:
            raise ValueError(f"buffer_size={buffer_size} must be >= 1")
        if not server_lr > 0:
            raise ValueError(f"server_lr={server_lr} must be > 0")
        self.buffer_size = int(buffer_size)
        self.server_lr = float(server_lr)


class SlidingWindowPolicy(StalenessPolicy):
    """S4: scale by staleness relative to the context value of the last ``window``
    samples."""

    name = "sliding_window"

    def __init__(
        self,
        *,
        window: int = DEFAULT_WINDOW,
        exponent: float = 1.0,
        context: str = "mean",
        max_scale: float = 1.0,
        per_node: bool = False,
        max_staleness: int | None = None,
    ) -> None:
        super().__init__(max_staleness=max_staleness)
        if int(window) < 1:
            raise ValueError(f"window={window} must be >= 1")
        if not exponent >= 0:
            raise ValueError(f"exponent={exponent} must be >= 0")
        if context not in CONTEXTS:
            raise ValueError(
                f"context={context!r} is unknown; allowed: {', '.join(CONTEXTS)}"
            )
        if not max_scale > 0:
            raise ValueError(f"max_scale={max_scale} must be > 0")
        self.window = int(window)
        self.exponent = float(exponent)
        self.context_kind = context
        self.max_scale = float(max_scale)
        self.per_node = bool(per_node)
        self._windows: dict[int | None, deque[float]] = {}

    def _window(self, node_id: int | None) -> deque[float]:
        key = node_id if self.per_node else None
        if key not in self._windows:
            self._windows[key] = deque(maxlen=self.window)
        return self._windows[key]

    def samples(self, node_id: int | None = None) -> list[float]:
        """The staleness samples currently in the (node's) window."""
        return list(self._window(node_id))

    def scale(self, staleness: float, context: float | None = None) -> float:
        staleness = _check_staleness(staleness)
        return window_scale(staleness, context, self.exponent, self.max_scale)

    def context(self, node_id: int | None = None) -> float | None:
        return staleness_context(self._window(node_id), self.context_kind)

    def observe(self, staleness: float, node_id: int | None = None) -> None:
        self._window(node_id).append(_check_staleness(staleness))

    def state_dict(self) -> dict[str, Any]:
        """The windows as ``{"windows": [[node or None (shared), [samples]], ...]}``."""
        windows = [[key, list(samples)] for key, samples in self._windows.items()]
        return {"windows": windows}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the windows of :meth:`state_dict` (each cut to this policy's
        ``window``)."""
        windows = state.get("windows")
        if set(state) != {"windows"} or not isinstance(windows, list):
            raise ValueError(
                "sliding_window state must be {'windows': [[node, samples], "
                f"...]}}, got keys {sorted(state)}"
            )
        restored: dict[int | None, deque[float]] = {}
        for entry in windows:
            if not (
                isinstance(entry, (list, tuple))
                and len(entry) == 2
                and (entry[0] is None or isinstance(entry[0], int))
                and isinstance(entry[1], (list, tuple))
            ):
                raise ValueError(
                    f"sliding_window state: {entry!r} is not [node_id or None, "
                    "[samples]]"
                )
            restored[entry[0]] = deque(
                (_check_staleness(s) for s in entry[1]), maxlen=self.window
            )
        self._windows = restored


POLICY_CLASSES: dict[str, type[StalenessPolicy]] = {
    "constant": ConstantPolicy,
    "polynomial": PolynomialPolicy,
    "hinge": HingePolicy,
    "fedbuff": FedBuffPolicy,
    "sliding_window": SlidingWindowPolicy,
}
POLICIES = tuple(POLICY_CLASSES)
# every setting some policy takes (the keyword arguments of its class)
SETTINGS = frozenset(
    name for cls in POLICY_CLASSES.values() for name in signature(cls).parameters
)


def make_policy(policy: str, **settings: Any) -> StalenessPolicy:
    """Build a policy by name (one of :data:`POLICIES`) from flat keyword arguments.

    Each policy takes the settings its class has and ignores the others (the caller may
    pass them all, as :class:`~bouquet.strategies.async_fedavg.AsyncFedAvg` does); a
    setting that is absent or ``None`` takes the policy's default (``exponent``: 0.5
    for polynomial/fedbuff, 1 for the sliding window). ``TypeError`` for a setting no
    policy has.
    """
    cls = POLICY_CLASSES.get(policy)
    if cls is None:
        raise ValueError(
            f"policy={policy!r} is unknown; allowed: {', '.join(POLICIES)}"
        )
    unknown = sorted(set(settings) - SETTINGS)
    if unknown:
        raise TypeError(f"make_policy() got unknown settings {unknown}")
    takes = signature(cls).parameters
    return cls(**{k: v for k, v in settings.items() if k in takes and v is not None})
