"""What a client's error reply means, when it is one of the usual set-up mistakes.

Flower turns an exception in a ClientApp into an error reply whose reason is the
exception's text; the run goes on and ends "completed". :func:`explain_client_error`
names the mistake and the fix for the errors that bouquet's pieces cause when they are
put together the wrong way, so that the server can log them once at WARNING instead of
leaving the user with Flower's text.
"""

from __future__ import annotations

import logging

from flwr.common.logger import log

from bouquet import keys

# (what the reason contains, what it means and what to do)
KNOWN: tuple[tuple[tuple[str, ...], str], ...] = (
    (
        ("Unsupported serialization type", "'bouquet."),
        "a mod listed before compression_mod read the compressed reply: list "
        "compression_mod before the mods that read "
        "the reply's arrays (outermost first), e.g. mods=[downlink_mod, "
        "compression_mod('topk', alpha=0.01), "
        "arrays_size_mod], so they see the dense update before it is compressed; for "
        "DP, clip with "
        "bouquet.clients.privacy.dp_clip_mod inside compression_mod, or "
        "PrivateClient around a client that compresses "
        "itself, not Flower's fixedclipping_mod/LocalDpMod outside it "
        "(docs/privacy.md)",
    ),
    (
        ("compression_mod builds a mod",),
        "compression_mod was listed without being called: write "
        "mods=[compression_mod('topk', alpha=0.01)]",
    ),
    (
        ("codec", "takes no option"),
        "compression_mod was given an option its codec does not take (see the reason "
        "for the codec's options)",
    ),
    (
        (keys.DOWNLINK_RESYNC,),
        "the client could not rebuild the compressed broadcast; it gets the dense "
        "model next time",
    ),
)


def explain_client_error(reason: str) -> str | None:
    """The mistake behind a client's error ``reason`` and its fix, or None if it is not
    a known one."""
    text = str(reason)
    for needles, meaning in KNOWN:
        if all(n in text for n in needles):
            return meaning
    return None


def log_client_error(who: str, node: object, reason: str, seen: set[str]) -> None:
    """Log at WARNING, once per mistake (``seen`` remembers), what a client's error
    reply means."""
    meaning = explain_client_error(reason)
    if meaning is not None and meaning not in seen:
        seen.add(meaning)
        log(
            logging.WARNING, "%s: node %s replied with an error: %s", who, node, meaning
        )
