"""The compressor of each codec: no compression (:class:`DenseCompressor`), top-k
(:class:`TopKCompressor`), STC (:class:`STCCompressor`) and TernGrad
(:class:`TernaryCompressor`), on :class:`~bouquet.codecs.compressor.UpdateCompressor`
(error feedback, DGC's options, the method's sources: see that module)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING
from typing import TypedDict

import numpy as np

from bouquet.codecs import stc
from bouquet.codecs import ternary
from bouquet.codecs import topk
from bouquet.codecs.compressor import UpdateCompressor
from bouquet.codecs.stc import encode_stc
from bouquet.codecs.ternary import PACKINGS
from bouquet.codecs.ternary import encode_ternary
from bouquet.codecs.ternary import encode_ternary_sparse
from bouquet.codecs.ternary import ternarize
from bouquet.codecs.ternary import ternarize_sparse
from bouquet.codecs.topk import VALUE_DTYPES
from bouquet.codecs.topk import encode_topk
from bouquet.codecs.topk import select_topk
from bouquet.codecs.topk import select_topk_model
from bouquet.codecs.topk import topk_count
from bouquet.codecs.wire import Decoded
from bouquet.codecs.wire import Encoded

SCOPES = ("tensor", "model")

if TYPE_CHECKING:
    from typing_extensions import Unpack


class SelectionOptions(TypedDict, total=False):
    """The options of top-k selection besides ``alpha`` (:class:`TopKCompressor`,
    :class:`STCCompressor` and the clients that build them), declared once."""

    rho: float
    min_k: int
    scope: str
    residual_decay: float
    momentum_correction: float
    clip_norm: float | None
    warmup_rounds: int


class DenseCompressor(UpdateCompressor):
    """No compression: every tensor as ``bouquet.dense/1``."""


class _TopKSelection(UpdateCompressor):
    checks_finite = True  # select_topk checks every block it scans

    def __init__(
        self,
        *,
        alpha: float,
        rho: float = 1.0,
        min_k: int = 1,
        scope: str = "tensor",
        residual_decay: float = 1.0,
        momentum_correction: float = 0.0,
        clip_norm: float | None = None,
        warmup_rounds: int = 0,
    ) -> None:
        super().__init__(residual_decay=residual_decay)
        topk_count(1, alpha, rho=rho, min_k=min_k)  # validates alpha, rho, min_k
        if scope not in SCOPES:
            raise ValueError(f"scope={scope!r} is not allowed; allowed: {list(SCOPES)}")
        self.alpha, self.rho, self.min_k, self.scope = (
            float(alpha),
            float(rho),
            int(min_k),
            scope,
        )
        if not 0.0 <= momentum_correction < 1.0:
            raise ValueError(
                f"momentum_correction={momentum_correction} must be in [0, 1)"
            )
        if momentum_correction > 0 and self.residual_decay == 0:
            raise ValueError(
                f"momentum_correction={momentum_correction} needs error feedback "
                "(residual_decay > 0): "
                "the momentum-corrected velocity accumulates in the residual"
            )
        if clip_norm is not None and not (math.isfinite(clip_norm) and clip_norm > 0):
            raise ValueError(f"clip_norm={clip_norm} must be finite and > 0, or None")
        if (
            isinstance(warmup_rounds, bool)
            or int(warmup_rounds) != warmup_rounds
            or warmup_rounds < 0
        ):
            raise ValueError(f"warmup_rounds={warmup_rounds} must be an integer >= 0")
        self.momentum_correction = float(momentum_correction)
        self.clip_norm = None if clip_norm is None else float(clip_norm)
        self.warmup_rounds = int(warmup_rounds)

    def density(self, round_index: int) -> float:
        """Fraction kept in round ``round_index + 1``:
        :math:`d_r = \\alpha \\rho^{r-1}`, or
        :math:`d_r^{\\,r/(W+1)}` during the warm-up (:math:`r \\le W`)."""
        target = self.alpha * self.rho**round_index
        r = round_index + 1
        return (
            target ** (r / (self.warmup_rounds + 1))
            if r <= self.warmup_rounds
            else target
        )

    def select(self, tensors: list[np.ndarray], round_index: int) -> list[np.ndarray]:
        """Flat kept indices of each tensor for this round."""
        # warm-up: the round's density, no further decay
        if round_index + 1 <= self.warmup_rounds:
            alpha, rho, j = self.density(round_index), 1.0, 0
        else:
            alpha, rho, j = self.alpha, self.rho, round_index
        if self.scope == "model":
            total = sum(t.size for t in tensors)
            m = topk_count(total, alpha, rho=rho, round_index=j, min_k=self.min_k)
            return select_topk_model(tensors, m)
        return [
            select_topk(
                t.reshape(-1),
                topk_count(t.size, alpha, rho=rho, round_index=j, min_k=self.min_k),
            )
            for t in tensors
        ]


class TopKCompressor(_TopKSelection):
    """Top-k sparsification with error feedback (``bouquet.topk/1``)."""

    codec = topk.NAME

    def __init__(
        self,
        *,
        alpha: float,
        value_dtype: str = "float32",
        **options: Unpack[SelectionOptions],
    ) -> None:
        super().__init__(alpha=alpha, **options)
        if value_dtype not in VALUE_DTYPES:
            raise ValueError(
                f"value_dtype={value_dtype!r} is not allowed; allowed: "
                f"{sorted(VALUE_DTYPES)}"
            )
        self.value_dtype = value_dtype

    def encode(
        self, tensors: list[np.ndarray], round_index: int, rng: np.random.Generator
    ) -> list[tuple[Encoded, Decoded]]:
        return [
            encode_topk(t, idx, value_dtype=self.value_dtype)
            for t, idx in zip(tensors, self.select(tensors, round_index), strict=True)
        ]


class STCCompressor(_TopKSelection):
    """Sparse ternary compression with error feedback (``bouquet.stc/1``)."""

    codec = stc.NAME

    def encode(
        self, tensors: list[np.ndarray], round_index: int, rng: np.random.Generator
    ) -> list[tuple[Encoded, Decoded]]:
        return [
            encode_stc(t, idx)
            for t, idx in zip(tensors, self.select(tensors, round_index), strict=True)
        ]


class TernaryCompressor(UpdateCompressor):
    """TernGrad ternarisation (``bouquet.ternary/1``); error feedback off by default."""

    codec = ternary.NAME
    checks_finite = True  # ternarize / ternarize_sparse refuse NaN and inf

    def __init__(
        self,
        *,
        stochastic: bool = True,
        clip_c: float | None = None,
        packing: str = "auto",
        residual_decay: float = 0.0,
    ) -> None:
        super().__init__(residual_decay=residual_decay)
        if clip_c is not None and not clip_c > 0:
            raise ValueError(f"clip_c={clip_c} must be > 0 or None")
        if packing not in PACKINGS:
            raise ValueError(
                f"packing={packing!r} is not allowed; allowed: {list(PACKINGS)}"
            )
        self.stochastic, self.clip_c, self.packing = bool(stochastic), clip_c, packing

    def encode(
        self, tensors: list[np.ndarray], round_index: int, rng: np.random.Generator
    ) -> list[tuple[Encoded, Decoded]]:
        out = []
        for t in tensors:
            if self.stochastic and self.packing in ("auto", "sparse"):
                idx, negative, scale = ternarize_sparse(t, clip_c=self.clip_c, rng=rng)
                out.append(
                    encode_ternary_sparse(
                        idx,
                        negative,
                        scale,
                        tuple(t.shape),
                        dtype=str(t.dtype),
                        packing_form=self.packing,
                    )
                )
                continue
            trits, scale = ternarize(
                t, stochastic=self.stochastic, clip_c=self.clip_c, rng=rng
            )
            if not np.isfinite(scale):
                raise ValueError("update holds NaN or inf: not sent")
            out.append(
                encode_ternary(
                    trits, scale, dtype=str(t.dtype), packing_form=self.packing
                )
            )
        return out
