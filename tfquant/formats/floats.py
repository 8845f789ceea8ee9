"""bfloat16 and float16 down-casting of float32 weights (pure numpy).

bfloat16 (1 sign, 8 exponent, 7 mantissa bits) is the top half of a float32, so the conversion is
integer arithmetic on the float32 bit pattern:

- finite values and infinities: round to nearest, ties to even, on the 16 dropped bits
  (add 0x7FFF plus the lowest kept bit, then shift), as TensorFlow's and ggml's RNE casts do.
  bfloat16 has float32's exponent range, so only values within half a bf16 ulp of float32's max
  (|x| >= 0x7F7F_8000 as bits, about 3.39e38) round up to infinity; +/-inf stay inf.
- NaN: stays NaN with its sign; the quiet bit (0x0040) is forced because truncating a NaN whose
  payload sits only in the dropped bits would otherwise give an infinity.

float16 (1, 5, 10) goes through numpy's IEEE cast (round to nearest even, gradual underflow to
subnormals and zero). It does NOT saturate: |x| >= 65520 (halfway between 65504, the max finite
half, and the next power of two) becomes +/-inf, and |x| in (65504, 65520) rounds down to 65504.
Pass ``saturate=True`` to clamp finite values to +/-65504 first instead.
"""
from __future__ import annotations

import numpy as np

FP16_MAX = 65504.0


def _as_float32(x) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(x, dtype=np.float32))


def to_bfloat16_bits(x) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), round to nearest even; NaN kept (made quiet)."""
    u = _as_float32(x).view(np.uint32).astype(np.uint64)
    is_nan = (u & 0x7FFFFFFF) > 0x7F800000
    # RNE on the low 16 bits: adding 0x7FFF rounds up past the halfway point, and the extra
    # lowest-kept-bit turns an exact tie into "round up only if that makes the result even".
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    quiet_nan = (u >> 16) | 0x0040
    return np.where(is_nan, quiet_nan, rounded).astype(np.uint16)


def from_bfloat16_bits(bits) -> np.ndarray:
    """bfloat16 bit patterns (uint16) -> float32 (exact: the bits become the float32 high half)."""
    b = np.asarray(bits, dtype=np.uint16)
    return (b.astype(np.uint32) << 16).view(np.float32)


def to_bfloat16(x) -> np.ndarray:
    """float32 values rounded to the nearest bfloat16 (ties to even), returned as float32."""
    return from_bfloat16_bits(to_bfloat16_bits(x))


def to_float16_bits(x, saturate: bool = False) -> np.ndarray:
    """float32 -> IEEE half bit patterns (uint16), round to nearest even.

    Without ``saturate``, magnitudes >= 65520 become inf (IEEE overflow); with it, finite values
    are first clamped to +/-65504 so only inf/NaN inputs give inf/NaN.
    """
    f = _as_float32(x)
    if saturate:
        f = np.where(np.isfinite(f), np.clip(f, -FP16_MAX, FP16_MAX), f)
    with np.errstate(over="ignore"):  # overflow to inf is the documented behaviour
        return f.astype(np.float16).view(np.uint16)


def from_float16_bits(bits) -> np.ndarray:
    """IEEE half bit patterns (uint16) -> float32 (exact)."""
    return np.asarray(bits, dtype=np.uint16).view(np.float16).astype(np.float32)


def to_float16(x, saturate: bool = False) -> np.ndarray:
    """float32 values rounded to the nearest half (see :func:`to_float16_bits`), as float32."""
    return from_float16_bits(to_float16_bits(x, saturate=saturate))
