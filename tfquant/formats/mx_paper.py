"""MX4 / MX6 / MX9: the shared-microexponent formats of arXiv 2302.08007 (pure numpy).

Rouhani et al., "With Shared Microexponents, A Little Shifting Goes a Long Way" (ISCA 2023)
define a two-level block format (their "BDR" framework with two scaling levels):
k1 = 16 elements share a d1 = 8-bit exponent, each sub-block of k2 = 2 elements (a pair) has a
d2 = 1-bit micro-exponent, and every element is sign + m magnitude bits, m = 7 / 4 / 2 for
MX9 / MX6 / MX4. Bits per element: 8/16 + 1/2 + (1 + m) = 9 / 6 / 4. These are NOT the OCP
MX formats of tfquant.formats.mx (which share one E8M0 scale over 32 FP/INT elements).

The rule implemented (per block of 16; all arithmetic exact, in float64):
  1. E = floor(log2(max_i |x_i|)), the block's largest exponent, clamped to [-127, 127] and
     stored biased, E + 127, in one byte. An all-zero block stores 0 (E = -127).
  2. For pair j (elements 2j, 2j+1): e_j = floor(log2(max |x| of the pair)) (-inf if both are 0)
     and micro-exponent tau_j = min(E - e_j, 1). So tau_j = 1 exactly when both elements of the
     pair are below 2^E; such a pair's grid is one binade finer: one extra bit of precision.
     (Below 2^E, not "below half the block max": a block max of 1.5 has E = 0 and a pair with
     max 0.9 < 1 still shifts.)
  3. Element magnitude q = round(|x| / 2^(E - tau_j + 1 - m)), clamped to 2^m - 1; the element
     code is sign << m | q ((1 + m) bits, sign-magnitude, no implicit leading bit). A block's
     largest element has |x| / step in [2^(m-1), 2^m), so it keeps m significant bits; it can
     round up to 2^m and is then clamped, as is a shifted pair's value in
     [2^E - step/2, 2^E).
  Dequantize: x' = (-1)^s * q * 2^(E - tau_j + 1 - m).
  Rounding: ``"even"`` (default) = round half to even, the mode AMD Quark's reference
  configurations for MX4/MX6/MX9 use (BFPQuantizeDequantize, bfp_method="to_bfp_prime",
  rounding_mode=2); ``"away"`` = half away from zero.
  The same grid (step 2^(E - (m - 1)), max 2^(E+1) - step at the unshifted level) is what the
  Vitis/Quark BFP emulation uses (``_min_max_at_exp``).

Stored block (``to_block_bytes``): byte 0 = E + 127; byte 1 = the 8 micro-exponent bits, pair j
in bit j; then the 16 element codes of (1 + m) bits packed LSB-first
(tfquant.formats.packing.pack_bits): 18 / 12 / 8 bytes for MX9 / MX6 / MX4.
"""
from __future__ import annotations

import numpy as np

from . import packing

BLOCK = 16
PAIR = 2
EXP_BIAS = 127
MANTISSA_BITS = {"mx9": 7, "mx6": 4, "mx4": 2}


def mantissa_bits(fmt: str) -> int:
    if fmt not in MANTISSA_BITS:
        raise ValueError(f"unknown shared-microexponent format {fmt!r}; known: {sorted(MANTISSA_BITS)}")
    return MANTISSA_BITS[fmt]


def bits_per_element(fmt: str) -> float:
    """8/16 (shared exponent) + 1/2 (micro-exponent per pair) + 1 + m."""
    return 8 / BLOCK + 1 / PAIR + 1 + mantissa_bits(fmt)


def block_bytes(fmt: str) -> int:
    return 2 + packing.packed_size(BLOCK, 1 + mantissa_bits(fmt))


def _floor_log2(a: np.ndarray) -> np.ndarray:
    """Exact floor(log2(a)) for a > 0 from the binary exponent; a very small number for a = 0."""
    _, e = np.frexp(a)
    return np.where(a > 0, e - 1, -10 ** 6)


def _round(s: np.ndarray, rounding: str) -> np.ndarray:
    """Non-negative s to an integer: nearest, ties to even or away from zero."""
    fl = np.floor(s)
    frac = s - fl
    if rounding == "even":
        tie_up = fl % 2 == 1
    elif rounding == "away":
        tie_up = np.ones(s.shape, bool)
    else:
        raise ValueError(f"rounding must be 'even' or 'away', got {rounding!r}")
    return fl + ((frac > 0.5) | ((frac == 0.5) & tie_up))


def quantize_mx_paper(x_blocks, fmt: str, rounding: str = "even"):
    """float32 [n, 16] -> (exponent codes uint8 [n], micro-exponents uint8 [n, 8] in {0, 1},
    element codes uint8 [n, 16] = sign << m | magnitude)."""
    m = mantissa_bits(fmt)
    x = np.asarray(x_blocks, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != BLOCK:
        raise ValueError(f"expected blocks [n_blocks, {BLOCK}], got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("blocks have non-finite values (inf/NaN)")
    a = np.abs(x.astype(np.float64))
    E = np.clip(_floor_log2(a.max(axis=1)), -EXP_BIAS, EXP_BIAS)
    e_pair = _floor_log2(a.reshape(-1, BLOCK // PAIR, PAIR).max(axis=2))
    tau = np.minimum(E[:, None] - e_pair, 1).astype(np.int64)  # >= 0: pair max <= block max
    exp_step = np.repeat(E[:, None] - tau + 1 - m, PAIR, axis=1)
    q = np.minimum(_round(np.ldexp(a, -exp_step), rounding), 2 ** m - 1).astype(np.uint8)
    codes = q | np.where(np.signbit(x), 1 << m, 0).astype(np.uint8)
    return (E + EXP_BIAS).astype(np.uint8), tau.astype(np.uint8), codes


def dequantize_mx_paper(exp_codes, micro, codes, fmt: str) -> np.ndarray:
    """Inverse: float32 [n, 16] = (-1)^s * q * 2^(E - tau + 1 - m)."""
    m = mantissa_bits(fmt)
    E = np.asarray(exp_codes, dtype=np.int64) - EXP_BIAS
    tau = np.asarray(micro, dtype=np.int64)
    c = np.asarray(codes, dtype=np.uint8)
    q = (c & ((1 << m) - 1)).astype(np.float64)
    sign = np.where(c >> m, -1.0, 1.0)
    exp_step = np.repeat(E[:, None] - tau + 1 - m, PAIR, axis=1)
    return (sign * np.ldexp(q, exp_step)).astype(np.float32)


def to_block_bytes(exp_codes, micro, codes, fmt: str) -> np.ndarray:
    """uint8 [n, block_bytes]: exponent byte, micro-exponent byte (pair j -> bit j), packed codes."""
    m = mantissa_bits(fmt)
    exp_codes = np.asarray(exp_codes, dtype=np.uint8).reshape(-1, 1)
    micro_byte = packing.pack_bits(np.asarray(micro, dtype=np.uint8), 1)
    return np.concatenate([exp_codes, micro_byte, packing.pack_bits(codes, 1 + m)], axis=1)


def from_block_bytes(blocks, fmt: str):
    """Inverse of :func:`to_block_bytes`: (exponent codes [n], micro [n, 8], codes [n, 16])."""
    m = mantissa_bits(fmt)
    b = np.asarray(blocks, dtype=np.uint8)
    if b.ndim != 2 or b.shape[1] != block_bytes(fmt):
        raise ValueError(f"{fmt} blocks need shape [n, {block_bytes(fmt)}], got {b.shape}")
    micro = packing.unpack_bits(b[:, 1:2], 1, BLOCK // PAIR)
    return b[:, 0].copy(), micro, packing.unpack_bits(b[:, 2:], 1 + m, BLOCK)
