"""Flower's simulation engine with its message loop proportional to the messages in
flight.

flwr 1.42's simulation engine hands messages to the simulated nodes from one loop
(``flwr.server.superlink.fleet.vce.vce_api.add_messages_to_queue``): every 0.1 s it asks
the link state for a message for *every* node of the federation, and each ask scans
every stored message. With 10,000 simulated nodes and 10 messages in flight that is
100,000 checks ten times a second, before the first reply and in every round (issue 32;
the profile is in ``docs/running.md``).

:func:`install` replaces that one function, for the runs ``bouquet-sim`` starts, with
:func:`add_pending_messages_to_queue`: the same loop, the same 0.1 s tick, the same
``get_message_ins(node_id, limit=1)`` calls in the federation's node order, but only for
the nodes that have an undelivered message (read from the in-memory link state under its
lock). It installs only when Flower's function is the one it was written against (its
source's SHA-256) and the state is Flower's in-memory one; otherwise Flower's loop runs
unchanged and a WARNING says why. ``tests/simulations/test_engine_poll.py`` checks that
both loops deliver the same messages in the same order.
"""

from __future__ import annotations

import hashlib
import inspect
import threading
from logging import DEBUG
from logging import WARNING
from queue import Queue
from typing import Any

from flwr.common.logger import log

# inspect.getsource(vce_api.add_messages_to_queue) of flwr 1.42.0
KNOWN_SOURCE_SHA256 = "953f4bd41a931a7779a4a670ab17b633f6e20b08a0128535328674466419777a"
TICK_S = 0.1  # Flower's
_flowers: list[Any] = []  # Flower's own loop, kept when install() replaces it


def flowers_loop() -> Any:
    """Flower's ``add_messages_to_queue`` (also after :func:`install` replaced it)."""
    from flwr.server.superlink.fleet.vce import vce_api

    return _flowers[0] if _flowers else vce_api.add_messages_to_queue


def pending_destinations(state: Any) -> set[int] | None:
    """Destination node ids of the undelivered messages, or None if ``state`` is not
    readable."""
    store = getattr(state, "message_ins_store", None)
    lock = getattr(state, "lock", None)
    if not isinstance(store, dict) or lock is None:
        return None
    with lock:
        return {
            m.metadata.dst_node_id
            for m in store.values()
            if m.metadata.delivered_at == ""
        }


def add_pending_messages_to_queue(
    state: Any,
    queue: Queue[Any],
    nodes_mapping: dict[int, int],
    f_stop: threading.Event,
) -> None:
    """Flower's ``add_messages_to_queue``, asking only for the nodes with a pending
    message."""
    order = {node: i for i, node in enumerate(nodes_mapping)}
    while not f_stop.is_set():
        pending = pending_destinations(state)
        # a state it cannot read: Flower's walk over every node
        nodes = (
            sorted((n for n in pending if n in order), key=order.__getitem__)
            if pending is not None
            else list(nodes_mapping)
        )
        for node_id in nodes:
            for msg in state.get_message_ins(node_id=node_id, limit=1):
                queue.put(msg)
        f_stop.wait(TICK_S)


def install() -> bool:
    """Use :func:`add_pending_messages_to_queue` in Flower's simulation engine; False if
    not."""
    from flwr.server.superlink.fleet.vce import vce_api

    current = vce_api.add_messages_to_queue
    if current is add_pending_messages_to_queue:
        return True
    digest = hashlib.sha256(inspect.getsource(current).encode()).hexdigest()
    if digest != KNOWN_SOURCE_SHA256:
        log(
            WARNING,
            "bouquet: this flwr's simulation message loop is not the one bouquet knows "
            "(vce_api.add_messages_to_queue changed); left as it is: start-up and "
            "rounds grow "
            "with the number of simulated clients",
        )
        return False
    _flowers[:] = [current]
    vce_api.add_messages_to_queue = add_pending_messages_to_queue
    log(
        DEBUG,
        "bouquet: simulation message loop visits only nodes with a pending message",
    )
    return True


# first and longest retry pause for a reply's objects (Flower's: 1 s, 10 s)
REPLY_PULL_BACKOFF_S = (0.02, 0.2)


def shorten_reply_object_retry() -> bool:
    """In a deployed ServerApp: retry a reply's missing objects after 0.02 s instead of
    1 s.

    A node registers its reply with the SuperLink before it has uploaded the reply's
    objects; a ServerApp that pulls in between waits Flower's first retry pause (1 s,
    then 2 s ...) for them. bouquet's grid asks for replies every 0.01-0.1 s, so it
    meets that gap often; this shortens the retry of ``flwr.superlink.grid.http_grid``'s
    object pull (only the pauses: the tries, the time limit and the errors stay
    Flower's). False (and a WARNING) if that module does not look as expected.
    """
    import functools

    from flwr.superlink.grid import http_grid

    pull = getattr(http_grid, "pull_objects", None)
    if isinstance(pull, functools.partial):
        return True  # already shortened
    if (
        not callable(pull)
        or "initial_backoff" not in inspect.signature(pull).parameters
    ):
        log(
            WARNING,
            "bouquet: this flwr's ServerApp grid has no object-pull backoff to "
            "shorten; left as it is",
        )
        return False
    http_grid.pull_objects = functools.partial(  # type: ignore[attr-defined]
        pull,
        initial_backoff=REPLY_PULL_BACKOFF_S[0],
        backoff_cap=REPLY_PULL_BACKOFF_S[1],
    )
    return True
