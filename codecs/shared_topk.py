"""Shared-support sparsification and pairwise masking: the pieces of
``client=shared_topk``.

Secure aggregation can only add vectors that every client lays out the same way;
per-client top-k positions are not. Here the *server* picks the :math:`k` coordinates of
the round (a seeded random set: :func:`shared_indices`, the same on every client from
the seed and round in the train config), and every client uploads the values of its
update plus error-feedback residual at exactly those coordinates, as one dense vector of
length :math:`k` (rand-k with error feedback, Stich et al. 2018, arXiv:1809.07599):

.. math::

    a = u + \\beta e, \\qquad v = a[S], \\qquad e \\leftarrow a, \\; e[S] = 0.

For secure aggregation each value is put in fixed point modulo :math:`2^{32}` and masked
with pairwise masks that cancel in the sum (Bonawitz et al. 2017, arXiv:1611.04482, the
masking without its secret-sharing recovery of dropped clients):

.. math::

    y_i = q(v_i) + \\sum_{j > i} \\mathrm{PRG}(s_{ij}) - \\sum_{j < i}
        \\mathrm{PRG}(s_{ij}) \\pmod{2^{32}},
    \\qquad \\sum_i y_i = \\sum_i q(v_i) \\pmod{2^{32}},

:math:`s_{ij}` the X25519 Diffie-Hellman secret of :math:`i` and :math:`j` through
HKDF-SHA256 (bound to the round), the PRG ChaCha20's key stream. Our reading:
``FRACTION_BITS`` = 16 bits of fraction; a client's values are clipped to
:math:`\\pm 2^{31-16} / n` so that the sum of :math:`n` clients cannot wrap.
"""

from __future__ import annotations

import math

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher
from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

FRACTION_BITS = 16
SCALE = float(2**FRACTION_BITS)
KEY_BYTES = 32


def shared_k(total: int, alpha: float, min_k: int = 1) -> int:
    """:math:`k = \\min(M, \\max(\\text{min\\_k}, \\lceil \\alpha M \\rceil))`
    coordinates of a model of :math:`M` values."""
    if not (isinstance(total, int) and total >= 1) or not (0 < alpha <= 1) or min_k < 0:
        raise ValueError(
            f"shared_k needs total >= 1, alpha in (0, 1], min_k >= 0; got {total}, "
            f"{alpha}, {min_k}"
        )
    return min(total, max(int(min_k), math.ceil(alpha * total)))


def shared_indices(total: int, k: int, seed: int, server_round: int) -> np.ndarray:
    """The round's :math:`k` coordinates of :math:`M` = ``total`` (sorted int64), the
    same for
    every client given the same seed and round."""
    if not (1 <= k <= total):
        raise ValueError(f"k={k} must be in [1, total={total}]")
    rng = np.random.default_rng([int(seed) % 2**32, int(server_round) % 2**32, 4242])
    return np.sort(rng.choice(total, size=k, replace=False)).astype(np.int64)


def value_bound(clients: int) -> float:
    """The largest magnitude a client's value may have so that the sum of ``clients``
    does not wrap."""
    return (2.0 ** (31 - FRACTION_BITS) - 1.0) / max(int(clients), 1)


def to_fixed(values: np.ndarray, clients: int) -> tuple[np.ndarray, int]:
    """``values`` clipped to :func:`value_bound` and rounded to fixed point, as uint32
    (mod 2^32),
    and how many were clipped."""
    bound = value_bound(clients)
    v = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(v)):
        raise ValueError("shared values are not finite: not uploaded")
    clipped = int(np.count_nonzero(np.abs(v) > bound))
    q = np.rint(np.clip(v, -bound, bound) * SCALE).astype(np.int64)
    return (q & 0xFFFFFFFF).astype(np.uint32), clipped


def from_fixed(total: np.ndarray) -> np.ndarray:
    """The float64 value of a uint32 fixed-point sum (two's complement)."""
    return np.asarray(total, dtype=np.uint32).view(np.int32).astype(np.float64) / SCALE


def new_keypair() -> tuple[bytes, bytes]:
    """A fresh X25519 key pair as raw bytes: (private, public)."""
    private = X25519PrivateKey.generate()
    raw = private.private_bytes(
        serialization.Encoding.Raw,
        serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )
    return raw, private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )


def pair_key(private: bytes, peer_public: bytes, server_round: int) -> bytes:
    """The 32-byte key two clients share for this round (X25519 + HKDF-SHA256)."""
    if len(private) != KEY_BYTES or len(peer_public) != KEY_BYTES:
        raise ValueError(
            f"X25519 keys are {KEY_BYTES} bytes; got {len(private)} and "
            f"{len(peer_public)}"
        )
    secret = X25519PrivateKey.from_private_bytes(private).exchange(
        X25519PublicKey.from_public_bytes(peer_public)
    )
    return HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=None,
        info=b"bouquet-secagg/1 round " + str(int(server_round)).encode(),
    ).derive(secret)


def prg(key: bytes, k: int) -> np.ndarray:
    """``k`` uint32 words of ChaCha20's key stream under ``key``."""
    encryptor = Cipher(algorithms.ChaCha20(key, b"\0" * 16), mode=None).encryptor()
    return np.frombuffer(encryptor.update(b"\0" * (4 * k)), dtype="<u4").astype(
        np.uint32
    )


def mask(
    node: int, private: bytes, peers: dict[int, bytes], k: int, server_round: int
) -> np.ndarray:
    """This node's pairwise mask (uint32, length ``k``): :math:`+\\mathrm{PRG}(s_{ij})`
    for peers with a larger id, :math:`-` for smaller ones; the masks of all nodes sum
    to 0 mod 2^32."""
    out = np.zeros(k, dtype=np.uint32)
    for peer, public in sorted(peers.items()):
        if peer == node:
            continue
        stream = prg(pair_key(private, public, server_round), k)
        # uint32 arithmetic wraps mod 2^32
        out = out + stream if node < peer else out - stream
    return out
