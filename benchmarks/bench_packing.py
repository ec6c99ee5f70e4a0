"""Bits per transmitted non-zero against the information limit of positions and values.

For a tensor of ``n`` elements with ``k`` transmitted non-zeros, the position set cannot
be coded in fewer than :math:`\\log_2 \\binom{n}{k}` bits on average (all subsets
equally likely); the values carry at least their empirical entropy. The script encodes

* top-k of a Gaussian update (positions uniform at random) with float32 / float16 values
  (sent raw),
* STC (positions + 1 sign bit),
* dense ternary (TernGrad, stochastic; trit packing vs the entropy of the trit
  distribution),

and reports the measured payload bits per non-zero next to these bounds, and which
position coding the encoder chose. Writes the ``packing`` section of
``benchmarks/RESULTS.md``.

Run: ``nice -n 10 .venv/bin/python benchmarks/bench_packing.py``
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._results import markdown_table  # noqa: E402
from benchmarks._results import write_section  # noqa: E402
from bouquet.codecs import encode_stc  # noqa: E402
from bouquet.codecs import encode_ternary  # noqa: E402
from bouquet.codecs import encode_topk  # noqa: E402
from bouquet.codecs import packing  # noqa: E402  # noqa: E402
from bouquet.codecs import select_topk  # noqa: E402
from bouquet.codecs import ternarize  # noqa: E402


def entropy_bits(values: np.ndarray) -> float:
    """Empirical entropy (bits per symbol) of a discrete array."""
    _, counts = np.unique(values, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def header_bytes(ndim: int) -> int:
    return 2 + 4 + 4 * ndim


def position_rows(rng: np.random.Generator) -> list[dict]:
    rows = []
    for n in (100_000, 1_000_000):
        for density in (0.1, 0.01, 0.001, 0.0001):
            k = max(1, int(n * density))
            idx = np.sort(rng.choice(n, size=k, replace=False))
            bound = packing.position_entropy_bits(n, k) / k
            sizes = {
                name: 8 * len(packing.encode_positions(idx, n, c)[1]) / k
                for c, name in packing.POS_CODING_NAMES.items()
                if c != packing.POS_ALL
            }
            chosen, block = packing.encode_positions(idx, n)
            rows.append(
                {
                    "n": n,
                    "density": density,
                    "k": k,
                    "bound bits/pos": round(bound, 3),
                    **{f"{name}": round(v, 3) for name, v in sizes.items()},
                    "chosen": packing.POS_CODING_NAMES[chosen],
                    "chosen / bound": round(8 * len(block) / k / bound, 4),
                }
            )
    return rows


def codec_rows(rng: np.random.Generator) -> list[dict]:
    n = 1_000_000
    x = rng.normal(size=n).astype(np.float32)
    rows = []
    for density in (0.01, 0.001):
        k = int(n * density)
        idx = select_topk(x, k)
        pos_bound = packing.position_entropy_bits(n, k) / k
        for value_dtype, vbits in (("float32", 32), ("float16", 16)):
            enc, _ = encode_topk(x, idx, value_dtype=value_dtype)
            body = 8 * (len(enc.data) - header_bytes(1)) / k
            rows.append(
                {
                    "codec": f"topk {density:.1%} {value_dtype}",
                    "non-zeros": k,
                    "bits / non-zero": round(body, 3),
                    "position bound": round(pos_bound, 3),
                    "value bits": vbits,
                    "bound total": round(pos_bound + vbits, 3),
                }
            )
        enc, _ = encode_stc(x, idx)
        body = 8 * (len(enc.data) - header_bytes(1) - 4) / k
        rows.append(
            {
                "codec": f"STC {density:.1%}",
                "non-zeros": k,
                "bits / non-zero": round(body, 3),
                "position bound": round(pos_bound, 3),
                "value bits": 1,
                "bound total": round(pos_bound + 1.0, 3),
            }
        )
    for clip in (None, 2.5):
        t, s = ternarize(x, rng=rng, clip_c=clip)
        k = int(np.count_nonzero(t))
        h = entropy_bits(t)
        for form in ("trit", "2bit", "sparse", "auto"):
            enc, _ = encode_ternary(t, s, packing_form=form)
            bits = 8 * (len(enc.data) - header_bytes(1) - 5)
            rows.append(
                {
                    "codec": f"ternary clip={clip} {form}",
                    "non-zeros": k,
                    "bits / non-zero": round(bits / k, 3),
                    "bits / element": round(bits / n, 3),
                    "trit entropy / element": round(h, 3),
                    "bound total": round(h * n / k, 3),
                }
            )
    return rows


def main() -> None:
    rng = np.random.default_rng(0)
    pos = position_rows(rng)
    codecs = codec_rows(rng)
    pos_cols = [
        "n",
        "density",
        "k",
        "bound bits/pos",
        "bitmap",
        "varint",
        "rice",
        "raw",
        "chosen",
        "chosen / bound",
    ]
    codec_cols = [
        "codec",
        "non-zeros",
        "bits / non-zero",
        "position bound",
        "value bits",
        "bits / element",
        "trit entropy / element",
        "bound total",
    ]
    body = (
        "Positions uniform at random (top-k of a Gaussian update); bits per position "
        "for each coding, against "
        "`log2 C(n,k) / k`. The encoder picks the smallest coding per tensor.\n\n"
        + markdown_table(pos, pos_cols)
        + "\nWhole payload bodies (without the 10-byte header) on a 1M-element "
        "Gaussian update: bits per transmitted "
        "non-zero against the bound: position bound + value bits (top-k values are "
        "continuous floats sent raw, 32 or 16 "
        "bits; STC values are one sign bit); for ternary the empirical trit entropy "
        "per element times n / k.\n\n" + markdown_table(codecs, codec_cols)
    )
    write_section(
        "packing",
        "Packing: bits per transmitted non-zero vs the information limit",
        body,
    )
    print(markdown_table(pos, pos_cols))
    print(markdown_table(codecs, codec_cols))


if __name__ == "__main__":
    main()
