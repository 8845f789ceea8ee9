"""Statistics -> the min/max constants a QuantizeV2 node is given.

TensorFlow's QuantizeV2 is parameterised by a float range rather than scale/zero-point.
These functions compute the range exactly as the kernel will use it, so that later passes
(the int8 lowering, which folds the range into a qint32 bias) agree with it bit for bit.
"""
from __future__ import annotations

import numpy as np

# QuantizeV2's ensure_minimum_range attribute default.
ENSURE_MINIMUM_RANGE = 0.01


def activation_range(lo: float, hi: float, mode: str, dtype: str):
    """The (min, max) to freeze into the QuantizeV2 min/max inputs."""
    if mode == "MIN_FIRST":
        # quantize_op.cc: the range always contains 0 and is at least `epsilon` wide.
        lo = min(0.0, lo)
        epsilon = max(1.0, abs(lo), abs(hi)) * ENSURE_MINIMUM_RANGE
        hi = max(hi, lo + epsilon)
        return float(np.float32(lo)), float(np.float32(hi))
    # SCALED is symmetric: one magnitude covers both ends.
    m = float(np.float32(max(abs(lo), abs(hi), 1e-8)))
    return (0.0, m) if dtype == "quint8" else (-m, m)


def weight_scale_range(w: np.ndarray, per_channel: bool):
    """Symmetric qint8 range of a [in, out] MatMul weight: +/-max|w| per tensor or per output column."""
    if per_channel:
        m = np.maximum(np.abs(w).max(axis=0), 1e-8).astype(np.float32)
        return -m, m
    m = np.float32(max(float(np.abs(w).max()), 1e-8))
    return np.float32(-m), m


def quantize_weight(w: np.ndarray, max_abs, levels: int = 127) -> np.ndarray:
    """Symmetric int8 values of ``w`` in [-levels, levels] (np.round is half to even, like HALF_TO_EVEN)."""
    q = np.round(w.astype(np.float32) * (np.float32(levels) / max_abs))
    return np.clip(q, -levels, levels).astype(np.int8)


# oneDNN's u8 x s8 kernel on CPUs without VNNI (AVX2, AVX-512 without VNNI) multiplies with vpmaddubsw: the
# products of input k = 2i and 2i + 1 are added in int16 with saturation, before the int32 accumulation.  With
# u8 activations up to 255, a pair of int8 weights is exact on every CPU iff |w[2i]| + |w[2i+1]| <= 128
# (255 * 128 = 32640 <= 32767).  Measured with ONEDNN_MAX_CPU_ISA=AVX2 (tests/test_pairs.py): pairs summing to
# 128 exact, 129 saturate, and the pairs are (0, 1), (2, 3), ... along the input axis.
PAIR_LIMIT = 128


def pair_magnitudes(w: np.ndarray) -> np.ndarray:
    """|w[2i]| + |w[2i+1]| per pair of input rows of a [in, out] weight ([in // 2, out]; an odd last row alone)."""
    a = np.abs(np.asarray(w, np.float64))
    k = a.shape[0]
    pairs = a[: k - k % 2].reshape(k // 2, 2, -1).sum(axis=1)
    return np.concatenate([pairs, a[k - 1:]]) if k % 2 else pairs


def pair_safe_max_abs(w: np.ndarray, max_abs, levels: int, limit: int = PAIR_LIMIT):
    """The smallest range >= ``max_abs`` (per output column, or one scalar) at which every pair's codes fit
    ``limit``: the scale grows only for the columns whose largest pair needs it."""
    pairs = pair_magnitudes(w)
    need = (pairs.max(axis=0) if np.ndim(max_abs) else pairs.max()) * levels / limit
    return np.maximum(max_abs, need).astype(np.float32)


def fit_pairs(codes: np.ndarray, exact: np.ndarray, limit: int = PAIR_LIMIT) -> np.ndarray:
    """Codes with every pair's |q[2i]| + |q[2i+1]| <= ``limit``: where rounding (or GPTQ) went over, the pair's
    code that was rounded furthest away from zero (``exact`` = w / scale) moves one step towards zero, until it fits."""
    q = codes.astype(np.int64)
    exact = np.asarray(exact, np.float64)
    k = q.shape[0] - q.shape[0] % 2
    while True:
        a, b = q[0:k:2], q[1:k:2]
        over = np.abs(a) + np.abs(b) > limit
        if not over.any():
            return q.astype(np.int8)
        # how far each code is beyond its exact value, away from zero: shrink the larger
        push_a = np.abs(a) - np.abs(exact[0:k:2])
        push_b = np.abs(b) - np.abs(exact[1:k:2])
        shrink_a = over & (push_a >= push_b)
        shrink_b = over & ~shrink_a
        a -= np.sign(a) * shrink_a  # a and b are views: q moves with them
        b -= np.sign(b) * shrink_b
