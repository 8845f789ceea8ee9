"""Linear integer quantization of a 2-D MatMul weight ``w[K, N]`` (pure numpy).

Layout: K (input dimension) is axis 0, N (output channel) is axis 1, as in a TF MatMul.

Granularity (the set of elements sharing one scale):
  - ``per_tensor``: all K*N elements; scales shape (1, 1).
  - ``per_channel``: one output column ``w[:, n]``; scales shape (1, N).
  - ``per_group``: G consecutive input elements of one column, ``w[g*G:(g+1)*G, n]``;
    scales shape (K // G, N). K must be a multiple of G (else ValueError; the caller pads or
    falls back, this module never pads silently).
Scales always broadcast against ``w`` once repeated G times along K (``np.repeat(s, G, 0)``).

Symmetric (signed codes, int8 array), narrow range: qmax = 2^(b-1) - 1,
    s = max|x| / qmax,   q = clamp(rint(x / s), -qmax, qmax),   x' = s * q.
  The code -2^(b-1) (-128 for int8, -8 for int4) is never produced, so the grid is symmetric
  around 0 and negation is exact.

Asymmetric (unsigned codes, uint8 array), qmax = 2^b - 1:
    lo = min(min x, 0), hi = max(max x, 0)        (the range is widened to contain 0)
    s = (hi - lo) / qmax,   z = clamp(rint(-lo / s), 0, qmax),
    q = clamp(rint(x / s) + z, 0, qmax),           x' = s * (q - z).
  Widening to contain 0 is what PyTorch's observers and ONNX do: 0 is then exactly
  representable (x' = 0 at q = z), and z lands inside [0, qmax] by construction. Without it,
  a group whose values are all positive (lo > 0) would get z clamped to 0 and every value
  above hi - lo clamped to the top code.

Rounding: ``np.rint``, round half to even (TF's HALF_TO_EVEN, like tfquant.qparams). All
arithmetic is float32, and codes are computed with the *stored* scale (after an optional
float16 rounding, ``scale_dtype="float16"``), so dequantizing the stored scale reproduces the
values the codes were chosen for.

Degenerate ranges: an all-zero set (max|x| = 0, or hi = lo = 0) gets scale 1.0 (and z = 0), so
codes are 0 and dequantize to exact zeros. A nonzero range whose scale underflows the scale dtype
gets that dtype's smallest positive value (2^-149 float32, 2^-24 float16), so division stays
finite. A float16 scale that overflows (> 65504) raises.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

GRANULARITIES = ("per_tensor", "per_channel", "per_group")
_SCALE_DTYPES = {"float32": np.float32, "float16": np.float16}


@dataclass
class IntQuantized:
    """Integer codes of a [K, N] weight plus the parameters to dequantize them.

    codes: [K, N]; int8 in [-qmax, qmax] (symmetric) or uint8 in [0, 2^b - 1] (asymmetric).
    scales: float32 (values exactly representable in ``scale_dtype``), shape (1, 1), (1, N)
        or (K // G, N) by granularity.
    zero_points: uint8, same shape as scales (asymmetric only, else None).
    """

    codes: np.ndarray
    scales: np.ndarray
    zero_points: Optional[np.ndarray]
    bits: int
    granularity: str
    group_size: Optional[int]
    symmetric: bool
    scale_dtype: str = "float32"

    @property
    def shape(self):
        return self.codes.shape

    @property
    def qmin(self) -> int:
        return -(2 ** (self.bits - 1) - 1) if self.symmetric else 0

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.symmetric else 2 ** self.bits - 1


def _check_weight(w) -> np.ndarray:
    w = np.asarray(w, dtype=np.float32)
    if w.ndim != 2:
        raise ValueError(f"expected a 2-D [K, N] weight, got shape {w.shape}")
    if not np.all(np.isfinite(w)):
        raise ValueError("weight has non-finite values (inf/NaN)")
    return w


def _group_rows(K: int, granularity: str, group_size: Optional[int]) -> int:
    """Rows of w (along K) that share a scale: K for per_channel, G for per_group."""
    if granularity == "per_channel":
        return K
    if granularity == "per_group":
        if group_size is None or int(group_size) <= 0:
            raise ValueError(f"per_group needs a positive group_size, got {group_size!r}")
        G = int(group_size)
        if K % G:
            raise ValueError(f"group size G={G} does not divide the input dimension K={K}")
        return G
    raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")


def _grouped(w: np.ndarray, granularity: str, group_size: Optional[int]) -> np.ndarray:
    """View w as [n_groups, rows_per_group, columns_per_scale] so reductions run over axis 1."""
    K, N = w.shape
    if granularity == "per_tensor":
        return w.reshape(1, K * N, 1)
    G = _group_rows(K, granularity, group_size)
    return w.reshape(K // G, G, N)


def _store_scale(s: np.ndarray, nonzero: np.ndarray, scale_dtype: str) -> np.ndarray:
    """Round the float32 scale to the storage dtype and apply the degenerate-range rules."""
    if scale_dtype not in _SCALE_DTYPES:
        raise ValueError(f"scale_dtype must be one of {tuple(_SCALE_DTYPES)}, got {scale_dtype!r}")
    dt = _SCALE_DTYPES[scale_dtype]
    with np.errstate(over="ignore"):
        stored = s.astype(dt)
    if not np.all(np.isfinite(stored)):
        raise ValueError(f"a scale overflows {scale_dtype} (max |scale| {float(s.max()):.6g})")
    tiny = np.float32(np.finfo(dt).smallest_subnormal)
    stored = stored.astype(np.float32)
    stored = np.where(nonzero & (stored == 0), tiny, stored)
    return np.where(nonzero, stored, np.float32(1.0)).astype(np.float32)


def quantize_int(w, bits: int, granularity: str, group_size: Optional[int] = None,
                 symmetric: bool = True, scale_dtype: str = "float32") -> IntQuantized:
    """Quantize ``w[K, N]`` to ``bits``-bit integer codes (rules in the module docstring)."""
    w = _check_weight(w)
    if not 2 <= int(bits) <= 8:
        raise ValueError(f"bits must be 2..8, got {bits}")
    bits = int(bits)
    K, N = w.shape
    g = _grouped(w, granularity, group_size)
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        amax = np.abs(g).max(axis=1)
        s = _store_scale(amax / np.float32(qmax), amax > 0, scale_dtype)
        q = np.clip(np.rint(g / s[:, None, :]), -qmax, qmax).astype(np.int8)
        zp = None
    else:
        qmax = 2 ** bits - 1
        lo = np.minimum(g.min(axis=1), np.float32(0))
        hi = np.maximum(g.max(axis=1), np.float32(0))
        s = _store_scale((hi - lo) / np.float32(qmax), hi > lo, scale_dtype)
        z = np.clip(np.rint(-lo / s), 0, qmax)
        q = np.clip(np.rint(g / s[:, None, :]) + z[:, None, :], 0, qmax).astype(np.uint8)
        zp = z.astype(np.uint8)
    return IntQuantized(
        codes=q.reshape(K, N), scales=s, zero_points=zp, bits=bits, granularity=granularity,
        group_size=None if granularity == "per_tensor" else _group_rows(K, granularity, group_size),
        symmetric=bool(symmetric), scale_dtype=scale_dtype)


def dequantize_int(q: IntQuantized) -> np.ndarray:
    """float32 [K, N]: s * q (symmetric) or s * (q - z) (asymmetric), in float32."""
    K, N = q.codes.shape
    g = _grouped(q.codes.astype(np.float32), q.granularity, q.group_size)
    if q.zero_points is not None:
        g = g - q.zero_points.astype(np.float32)[:, None, :]
    return (g * q.scales[:, None, :]).reshape(K, N).astype(np.float32)
