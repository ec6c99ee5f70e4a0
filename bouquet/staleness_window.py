"""The sliding-window staleness rule of S4, shared by the server and the learners.

Method S4 (asynchronous training with sliding-window staleness sampling; in the spirit
of Zhang, Gupta, Lian & Liu 2016, "Staleness-aware Async-SGD for Distributed Deep
Learning"): a window keeps the last :math:`W` staleness samples (:data:`DEFAULT_WINDOW`
by default), its context value :math:`c` is their mean or median
(:func:`staleness_context`), and an update of staleness :math:`\\tau` is scaled relative
to it (:func:`window_scale`):

.. math::
    s = \\min\\Big(s_{max}, \\Big(\\frac{1 + c}{1 + \\tau}\\Big)^{a}\\Big)
    \\qquad (s = \\min(s_{max}, 1) \\text{ while the window is empty})

The server's window (:class:`bouquet.strategies.staleness.SlidingWindowPolicy`) and the
learner's (:func:`bouquet.clients.staleness_window_mod`) both use these functions, so
the two sides compute the same rule; each checks its own inputs. Pure Python, no state:
here because both ``strategies`` and ``clients`` may import it (as they do
:mod:`bouquet.keys`).
"""

from __future__ import annotations

from collections.abc import Iterable

# W, staleness samples a window keeps (conf/strategy/async.yaml's `window`; a test
# checks)
DEFAULT_WINDOW = 20
CONTEXTS = ("mean", "median")  # the context value of a window


def staleness_context(samples: Iterable[float], kind: str = "mean") -> float | None:
    """The staleness context value of a window (``None`` for an empty window)."""
    values = sorted(float(s) for s in samples)
    if not values:
        return None
    if kind == "mean":
        return sum(values) / len(values)
    if kind == "median":
        mid = len(values) // 2
        return values[mid] if len(values) % 2 else 0.5 * (values[mid - 1] + values[mid])
    raise ValueError(f"context={kind!r} is unknown; allowed: {', '.join(CONTEXTS)}")


def window_scale(
    staleness: float,
    context: float | None,
    exponent: float = 1.0,
    max_scale: float = 1.0,
) -> float:
    """S4 scale :math:`\\min(s_{max}, ((1 + c) / (1 + \\tau))^a)`; ``context=None``
    gives :math:`\\min(s_{max}, 1)`.

    ``staleness`` is not checked here (the callers do).
    """
    if context is None:
        return min(max_scale, 1.0)
    return min(
        max_scale, ((1.0 + float(context)) / (1.0 + float(staleness))) ** exponent
    )
