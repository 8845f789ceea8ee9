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
