"""``ReplyChecking``: the base of the wrappers that check a round's replies against
what the round sent.

:class:`~bouquet.strategies.Compressed` and :class:`~bouquet.strategies.ReplyGuard`
need, in ``aggregate_train``, the global arrays this round's ``configure_train``
broadcast (``self._reference``: zero-copy views of the bytes sent, by
:func:`~bouquet.strategies.decoding.reference_arrays`) and the messages it sent
(``self._sent``: a reply is accepted only as the answer to one of them,
:class:`~bouquet.strategies.screening.SentMessages`). This base keeps both.
:class:`~bouquet.strategies.ServerMomentum` reads only the arrays; the metadata of the
round's messages that it keeps unused is one small list per round.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from flwr.app import ArrayRecord
from flwr.app import ConfigRecord
from flwr.app import Message
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from bouquet.strategies.decoding import reference_arrays
from bouquet.strategies.screening import SentMessages
from bouquet.strategies.wrapper import StrategyWrapper


class ReplyChecking(StrategyWrapper):
    """Keep each round's global arrays and sent messages (see module docstring)."""

    def __init__(self, strategy: Strategy) -> None:
        super().__init__(strategy)
        self._reference: dict[str, np.ndarray] | None = None
        self._sent = SentMessages()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._reference = reference_arrays(arrays)
        return self._sent.remember(
            super().configure_train(server_round, arrays, config, grid)
        )
