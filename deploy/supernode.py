"""``flower-supernode`` with a shorter idle poll: Flower's own SuperNode, one constant
changed.

Flower 1.42's SuperNode main loop (``flwr.supernode.start_client_internal``) asks the
SuperLink for a message, and when there is none sleeps a fixed 3 s before asking again;
while a ClientApp works it checks for the reply every 0.5 s. A deployed round therefore
waits up to 3 s before a node even sees its message (both fixed in the code, no option
or environment variable). This launcher runs Flower's ``flower_supernode()`` entry point
unchanged, with every sleep in that one module shortened (:class:`CappedSleepTime`):
after each message the node asks again after 0.02 s, then 0.04, 0.08 ... up to
``BOUQUET_SUPERNODE_POLL_S`` seconds (default 0.25) while it stays idle, instead of a
fixed 3 s. A second change follows from the first: a node that asks that often can see a
message before the ServerApp has finished uploading its objects, and Flower's SuperNode
retries a missing object after 1 s, 2 s, 4 s ...; the launcher retries after 0.02 s,
doubling up to 0.2 s. That is a load a SuperLink on loopback serving a few dozen nodes
does not notice; a real deployment with thousands of nodes should keep Flower's 3 s (run
``flower-supernode`` itself).

If Flower's module no longer looks as described (a new flwr), the launcher says so at
WARNING and runs the SuperNode unpatched. Arguments are ``flower-supernode``'s own::

    python -m deploy.supernode --insecure --superlink 127.0.0.1:9092 \\
        --isolation process ...
"""

from __future__ import annotations

import functools
import inspect
import os
import sys
import time
import types
from logging import INFO
from logging import WARNING

ENV_POLL = "BOUQUET_SUPERNODE_POLL_S"
DEFAULT_POLL_S = 0.25
# first and longest retry pause for a message's objects (Flower's: 1 s, 10 s)
PULL_BACKOFF_S = (0.02, 0.2)


class CappedSleepTime(types.ModuleType):
    """A stand-in for the ``time`` module of Flower's SuperNode loop.

    The loop's idle sleep (3 s, between two pulls that found no message) becomes a
    backoff: the first idle sleep after activity is ``MIN_S``, each following one
    doubles, up to ``cap_s``. Activity is a gap of more than ``cap_s`` between two idle
    sleeps (the node received a message and worked on it). Every shorter sleep (the 0.5
    s checks for the ClientApp's reply, which read the node's local state) is capped at
    ``MIN_S``.
    """

    MIN_S = 0.02

    def __init__(self, cap_s: float) -> None:
        super().__init__("time")
        self.cap_s = cap_s
        self._next_idle = self.MIN_S
        self._last_idle_end = 0.0

    def __getattr__(self, name: str) -> object:
        return getattr(time, name)

    def sleep(self, seconds: float) -> None:
        seconds = float(seconds)
        if seconds < 1.0:  # waiting for a local reply
            time.sleep(min(seconds, self.MIN_S))
            return
        if time.monotonic() - self._last_idle_end > self.cap_s + 0.5:
            self._next_idle = self.MIN_S  # something happened since the last idle sleep
        pause = min(seconds, self._next_idle)
        time.sleep(pause)
        self._next_idle = min(self._next_idle * 2, self.cap_s)
        self._last_idle_end = time.monotonic()


def poll_from_env() -> float:
    """``BOUQUET_SUPERNODE_POLL_S`` as seconds in [0.01, 3]; raises ValueError naming
    it."""
    raw = os.environ.get(ENV_POLL, str(DEFAULT_POLL_S))
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{ENV_POLL}={raw!r} is not a number of seconds") from None
    if not 0.01 <= value <= 3.0:
        raise ValueError(f"{ENV_POLL}={raw!r} must be in [0.01, 3] seconds")
    return value


def cap_idle_poll(cap_s: float) -> bool:
    """Cap the sleeps of Flower's SuperNode loop at ``cap_s``; False (and a WARNING) if
    it cannot."""
    from flwr.common.logger import log
    from flwr.supernode import start_client_internal as loop

    source = inspect.getsource(loop)
    if getattr(loop, "time", None) is not time or "time.sleep(3)" not in source:
        log(
            WARNING,
            "deploy.supernode: flwr %s's SuperNode loop is not the one this launcher "
            "knows "
            "(no `time.sleep(3)` in %s); running it unpatched (idle poll stays "
            "Flower's)",
            _flwr_version(),
            loop.__name__,
        )
        return False
    loop.time = CappedSleepTime(cap_s)  # type: ignore[attr-defined]
    pull = getattr(loop, "pull_objects", None)
    if callable(pull) and "initial_backoff" in inspect.signature(pull).parameters:
        loop.pull_objects = functools.partial(
            pull, initial_backoff=PULL_BACKOFF_S[0], backoff_cap=PULL_BACKOFF_S[1]
        )  # type: ignore[attr-defined]
    else:
        log(
            WARNING,
            "deploy.supernode: the SuperNode's pull_objects takes no "
            "initial_backoff; left as it is",
        )
    log(
        INFO,
        "deploy.supernode: idle poll backs off to %.2f s (Flower's default: 3 s); "
        "message objects "
        "not yet on the SuperLink are asked again after %.2f s (Flower's: 1 s, "
        "doubling)",
        cap_s,
        PULL_BACKOFF_S[0],
    )
    return True


def _flwr_version() -> str:
    from importlib.metadata import version

    return version("flwr")


def main() -> None:
    cap_idle_poll(poll_from_env())
    from flwr.supernode.cli import flower_supernode

    sys.argv[0] = "flower-supernode"
    flower_supernode()


if __name__ == "__main__":
    main()
