"""Rényi-DP accounting of the releases of Flower's central-DP wrappers (for
:class:`~bouquet.strategies.privacy.DPAccountant`).

:class:`RdpLedger` composes releases in the RDP accountant of Google's
``dp-accounting`` (the backend of Flower's own ``RdpAccountant``; imported when a ledger
is built, so the package is needed only with DP): each a Gaussian of noise multiplier
:math:`z` Poisson-subsampled at rate :math:`q`, add-or-remove-one neighbouring, over
the integer orders :data:`ORDERS`. :func:`epsilon_of` is the epsilon of a list of
releases, :func:`adaptive_release_multiplier` the one Gaussian that stands for an
adaptive-clipping round's two releases. What :math:`q` and :math:`z` are for a round:
:mod:`bouquet.strategies.privacy`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

# integer RDP orders: closed form, fast
ORDERS = tuple(range(2, 65)) + (80, 96, 128, 192, 256, 512, 1024)


def adaptive_release_multiplier(z_update: float, count_stddev: float) -> float:
    r"""The noise multiplier of one adaptive-clipping release, accounted as one
    Gaussian.

    Flower's adaptive wrappers release two things per round on the same sample: the
    aggregate with noise multiplier ``z_update`` (already scaled to the replies
    aggregated, see :class:`DPAccountant`) and the count of clipped updates (0/1 bits,
    sensitivity 1 under add-or-remove) with noise of standard deviation
    ``count_stddev``. Two Gaussians on the same sample compose as one of multiplier
    :math:`(z_u^{-2} + \sigma_b^{-2})^{-1/2}` (Andrew et al. 2021, arXiv:1905.03871,
    Sec. 3). Our reading: the paper counts centred bits (sensitivity 1/2, hence the
    :math:`2\sigma_b` Flower uses to set ``z_update``); Flower sums uncentred bits over
    the replies that arrived, so we take sensitivity 1, which gives a larger (safe)
    epsilon.
    """
    if not (math.isfinite(count_stddev) and count_stddev > 0):
        raise ValueError(
            f"clipped_count_stddev={count_stddev!r}: the clipped count is released "
            "without noise, "
            "epsilon is infinite (> 0 needed)"
        )
    return float((z_update**-2 + count_stddev**-2) ** -0.5)


class RdpLedger:
    """Releases composed in the RDP accountant of ``dp-accounting`` (add-or-remove-one
    neighbouring), each a Gaussian of noise multiplier ``z`` Poisson-subsampled at rate
    ``q``."""

    def __init__(self) -> None:
        from dp_accounting.rdp import RdpAccountant

        self._accountant = RdpAccountant(orders=list(ORDERS))
        self.events: list[tuple[float, float]] = []

    def compose(self, q: float, z: float) -> None:
        """Add one release; ``ValueError`` unless ``q`` in (0, 1] and ``z`` finite and >
        0."""
        from dp_accounting import dp_event

        if (
            isinstance(q, bool)
            or not (0 < q <= 1)
            or isinstance(z, bool)
            or not (math.isfinite(z) and z > 0)
        ):
            raise ValueError(
                "a release needs a sampling rate q in (0, 1] and a noise multiplier "
                f"z > 0, got q={q!r}, z={z!r}"
            )
        gaussian = dp_event.GaussianDpEvent(float(z))
        self._accountant.compose(
            gaussian if q == 1 else dp_event.PoissonSampledDpEvent(float(q), gaussian)
        )
        self.events.append((float(q), float(z)))

    def epsilon(self, delta: float) -> float:
        """Epsilon at ``delta`` in (0, 1) (0.0 before any release)."""
        if isinstance(delta, bool) or not 0 < delta < 1:
            raise ValueError(f"delta={delta!r} must be in (0, 1)")
        return float(self._accountant.get_epsilon(delta)) if self.events else 0.0


def epsilon_of(events: Iterable[tuple[float, float]], delta: float) -> float:
    """Epsilon at ``delta`` after the ``(q, z)`` releases (see :class:`RdpLedger`)."""
    ledger = RdpLedger()
    for q, z in events:
        ledger.compose(q, z)
    return ledger.epsilon(delta)
