"""OCP Microscaling (MX) v1.0 formats: MXFP8 / MXFP6 / MXFP4 / MXINT8 (pure numpy).

A block of k = 32 elements shares one E8M0 scale X = 2^(e - 127) (one byte e; e = 255 is NaN);
element i stores P_i and decodes to X * P_i.

Element types (sign bit is always the code's MSB; bias, largest normal):
  e4m3 (MXFP8)  bias 7,  max 448 = 1.75 * 2^8,   no inf, NaN = S.1111.111
  e5m2 (MXFP8)  bias 15, max 57344 = 1.75 * 2^15, inf = S.11111.00, NaN = S.11111.{01,10,11}
  e2m3 (MXFP6)  bias 1,  max 7.5 = 1.875 * 2^2,  no inf/NaN
  e3m2 (MXFP6)  bias 3,  max 28 = 1.75 * 2^4,    no inf/NaN
  e2m1 (MXFP4)  bias 1,  max 6 = 1.5 * 2^2,      no inf/NaN
  int8 (MXINT8) two's complement code c, value c * 2^-6 (max 127/64)
Floats: exponent field 0 is subnormal, (m / 2^M) * 2^(1 - bias); else (1 + m / 2^M) * 2^(E - bias).

Quantization (the conversion of OCP MX v1.0 section 6.3, as emulated by microsoft/microxcaling
mx/mx_ops.py ``_quantize_mx`` with ``shared_exp_method="max"``; the "even_round" scale variant
some tools add, which rounds amax's mantissa before taking its exponent, is not implemented):
  1. shared exponent  E = floor(log2(max_i |x_i|)) - emax_elem, clamped to [-127, 127]
     (emax_elem = exponent of the element's largest normal: e4m3 8, e5m2 15, e3m2 4, e2m3 2,
     e2m1 2, int8 0). floor(log2) is taken exactly from the float's binary exponent (np.frexp).
     ggml / gguf-py (``floor(log2f(amax))``) and microxcaling (``torch.floor(torch.log2(.))``)
     use a float32 log2, which rounds up to the integer k for an amax within an ulp or so below
     2^k (k >= 3): for amax = 1024 - 2^-14 they pick E one higher than the exact rule
     (MXFP4 decodes it to 1024, this module to 768 = 6 * 2^7, saturated).
     An all-zero block gets e = 0 (X = 2^-127) and all-zero elements (microxcaling would pick
     max(-126 - emax, -127); any scale decodes zeros the same).
  2. element P_i = x_i / X (exact: X is a power of two), rounded to the nearest representable
     element value, subnormals included, and *saturated* to +/- the largest normal (never inf
     or NaN). Values in (max normal, 2^(emax+1)) after scaling therefore clamp: that is the
     format's known cost of taking the scale from floor(log2(amax)).
  Ties: ``rounding="even"`` (default) rounds half to even, the OCP spec's roundTiesToEven and
  what hardware casts (e.g. PTX cvt.rn.satfinite) do; ``rounding="away"`` rounds half away from
  zero, microxcaling's default ``round="nearest"`` (sign(x) * floor(|x| + 0.5) on the scaled
  mantissa). ggml's own MXFP4 (``quantize_row_mxfp4_ref``) picks the first table entry on a tie,
  i.e. toward zero; off ties all three agree.
  MXINT8 codes are clamped to [-127, 127] as microxcaling does (symmetric range); the code 0x80
  decodes to -2.0 but is never produced.
  Non-finite inputs raise ValueError (OCP would set the block scale to NaN).

Packing (``pack_mx``): 8-bit elements are one byte each; 6-bit elements four per three bytes and
4-bit elements two per byte, in tfquant.formats.packing's LSB-first order (element 2i in the
low nibble of byte i for MXFP4). OCP v1.0 does not fix a memory layout; this is ours. A stored
block (``to_block_bytes``) is the scale byte followed by the packed elements: 33 / 25 / 17 bytes
for 8 / 6 / 4-bit elements, i.e. 8.25 / 6.25 / 4.25 bits per element.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np

from . import packing

BLOCK = 32
E8M0_BIAS = 127
E8M0_NAN = 255


@dataclass(frozen=True)
class Element:
    name: str
    bits: int
    ebits: int  # 0 for int8
    mbits: int
    bias: int
    emax: int  # unbiased exponent of the largest normal
    max_normal: float
    has_inf: bool = False
    nan_all_ones: bool = False  # e4m3: only S.1111.111 is NaN


ELEMENTS = {
    "e4m3": Element("e4m3", 8, 4, 3, 7, 8, 448.0, nan_all_ones=True),
    "e5m2": Element("e5m2", 8, 5, 2, 15, 15, 57344.0, has_inf=True),
    "e3m2": Element("e3m2", 6, 3, 2, 3, 4, 28.0),
    "e2m3": Element("e2m3", 6, 2, 3, 1, 2, 7.5),
    "e2m1": Element("e2m1", 4, 2, 1, 1, 2, 6.0),
    "int8": Element("int8", 8, 0, 6, 0, 0, 127.0 / 64.0),
}

# OCP format name -> element type.
MX_FORMATS = {
    "mxfp8_e4m3": "e4m3",
    "mxfp8_e5m2": "e5m2",
    "mxfp6_e2m3": "e2m3",
    "mxfp6_e3m2": "e3m2",
    "mxfp4": "e2m1",
    "mxint8": "int8",
}


def element(name) -> Element:
    """The Element for an element name ("e2m1") or an MX format name ("mxfp4")."""
    if isinstance(name, Element):
        return name
    key = MX_FORMATS.get(name, name)
    if key not in ELEMENTS:
        raise ValueError(f"unknown MX element {name!r}; known: {sorted(ELEMENTS) + sorted(MX_FORMATS)}")
    return ELEMENTS[key]


@cache
def _table(name: str) -> np.ndarray:
    """float64 value of every code 0 .. 2^bits - 1 (inf / NaN where the type defines them)."""
    el = ELEMENTS[name]
    codes = np.arange(2 ** el.bits)
    if el.ebits == 0:  # int8: two's complement times 2^-6
        return np.where(codes >= 128, codes - 256, codes) * 2.0 ** -6
    sign = np.where(codes >> (el.bits - 1), -1.0, 1.0)
    e = (codes >> el.mbits) & ((1 << el.ebits) - 1)
    m = codes & ((1 << el.mbits) - 1)
    frac = m / 2.0 ** el.mbits
    mag = np.where(e == 0, frac * 2.0 ** (1 - el.bias), (1 + frac) * 2.0 ** (e - el.bias))
    vals = sign * mag
    top = e == (1 << el.ebits) - 1
    if el.has_inf:  # IEEE-like: all-ones exponent is inf (m = 0) or NaN
        vals = np.where(top & (m == 0), sign * np.inf, vals)
        vals = np.where(top & (m != 0), np.nan, vals)
    if el.nan_all_ones:
        vals = np.where(top & (m == (1 << el.mbits) - 1), np.nan, vals)
    vals.setflags(write=False)
    return vals


def element_values(name) -> np.ndarray:
    """The decode table of an element type: float64 [2^bits], indexed by code."""
    return _table(element(name).name)


def decode_elements(codes, name) -> np.ndarray:
    """Element codes (uint8 bit patterns) -> float32 element values, unscaled."""
    return _table(element(name).name)[np.asarray(codes, dtype=np.uint8)].astype(np.float32)


@cache
def _positive_grid(name: str):
    """Finite non-negative values in code order (increasing), their codes."""
    el = ELEMENTS[name]
    t = _table(name)
    half = 2 ** (el.bits - 1)
    codes = np.arange(half)
    keep = np.isfinite(t[:half])
    if el.ebits == 0:  # int8 magnitudes 0..127
        keep = codes <= 127
    return t[:half][keep], codes[keep]


def _check_rounding(rounding: str):
    if rounding not in ("even", "away"):
        raise ValueError(f"rounding must be 'even' or 'away', got {rounding!r}")


def encode_elements(v, name, rounding: str = "even") -> np.ndarray:
    """Round already-scaled values to element codes (uint8), saturating at the max normal.

    Nearest representable value, subnormals included; a tie goes to the code with an even last
    bit (``"even"``) or to the larger magnitude (``"away"``). The sign is taken from the sign bit
    of ``v``, so -0.0 and small negatives that round to zero give the negative-zero code
    (int8 has no negative zero: code 0).
    """
    _check_rounding(rounding)
    el = element(name)
    v = np.asarray(v, dtype=np.float64)
    if not np.all(np.isfinite(v)):
        raise ValueError("values to encode must be finite")
    a = np.abs(v)
    if el.ebits == 0:
        # int8: the grid is the integers / 64, so scale and round directly.
        s = a * 64.0
        fl = np.floor(s)
        frac = s - fl
        up = (frac > 0.5) | ((frac == 0.5) & ((fl % 2 == 1) if rounding == "even" else True))
        q = np.minimum(fl + up, 127).astype(np.int64)
        q = np.where(np.signbit(v), -q, q)
        return (q & 0xFF).astype(np.uint8)
    vals, codes = _positive_grid(el.name)
    hi = np.minimum(np.searchsorted(vals, a, side="left"), len(vals) - 1)
    lo = np.maximum(hi - 1, 0)
    d_lo, d_hi = a - vals[lo], vals[hi] - a
    if rounding == "even":
        tie_hi = codes[hi] % 2 == 0  # adjacent codes: exactly one of lo/hi is even
    else:
        tie_hi = np.ones(a.shape, bool)
    pick_hi = (d_hi < d_lo) | ((d_hi == d_lo) & tie_hi)
    c = np.where(pick_hi, codes[hi], codes[lo])
    c = np.where(a >= vals[-1], codes[-1], c)  # saturate: never inf / NaN
    return (c | np.where(np.signbit(v), 1 << (el.bits - 1), 0)).astype(np.uint8)


def shared_exponent(x_blocks, name) -> np.ndarray:
    """Unbiased shared exponent per block: floor(log2(amax)) - emax_elem, clamped to [-127, 127].

    An all-zero block gets -127 (E8M0 code 0).
    """
    el = element(name)
    amax = np.abs(np.asarray(x_blocks, dtype=np.float64)).max(axis=-1)
    _, e = np.frexp(amax)  # amax = f * 2^e with f in [0.5, 1): floor(log2 amax) = e - 1
    shared = np.where(amax > 0, e - 1 - el.emax, -E8M0_BIAS)
    return np.clip(shared, -E8M0_BIAS, E8M0_BIAS).astype(np.int32)


def e8m0_to_float(scale_codes) -> np.ndarray:
    """E8M0 codes -> float64 2^(e - 127); 255 -> NaN."""
    e = np.asarray(scale_codes, dtype=np.int64)
    return np.where(e == E8M0_NAN, np.nan, np.ldexp(1.0, e - E8M0_BIAS))


def quantize_mx(x_blocks, name, rounding: str = "even"):
    """float32 [n, k] blocks -> (E8M0 scale codes uint8 [n], element codes uint8 [n, k])."""
    x = np.asarray(x_blocks, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"expected blocks [n_blocks, k], got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("MX blocks have non-finite values (inf/NaN)")
    el = element(name)
    shared = shared_exponent(x, el)
    # Dividing by a power of two is exact in float64 (no float32 overflow / underflow either).
    scaled = np.ldexp(x.astype(np.float64), -shared[:, None])
    codes = encode_elements(scaled, el, rounding=rounding)
    return (shared + E8M0_BIAS).astype(np.uint8), codes


def dequantize_mx(scale_codes, codes, name) -> np.ndarray:
    """(scale codes [n], element codes [n, k]) -> float32 [n, k] = 2^(e - 127) * P_i.

    A NaN scale (255) makes its whole block NaN. The product is formed in float64 and rounded
    once to float32; for scales the quantizer produces it is exact.
    """
    vals = element_values(name)[np.asarray(codes, dtype=np.uint8)]
    return (vals * e8m0_to_float(scale_codes)[:, None]).astype(np.float32)


def pack_mx(codes, name) -> np.ndarray:
    """Pack element codes along the last axis (8-bit: as is; 6-bit: 4 per 3 bytes; 4-bit: 2 per byte)."""
    el = element(name)
    codes = np.asarray(codes, dtype=np.uint8)
    return codes.copy() if el.bits == 8 else packing.pack_bits(codes, el.bits)


def unpack_mx(packed, name, n: int = BLOCK) -> np.ndarray:
    """Inverse of :func:`pack_mx`: ``n`` element codes (uint8) per row of ``packed``."""
    el = element(name)
    packed = np.asarray(packed, dtype=np.uint8)
    if el.bits == 8:
        if packed.shape[-1] != n:
            raise ValueError(f"expected {n} bytes of 8-bit codes, got {packed.shape[-1]}")
        return packed.copy()
    return packing.unpack_bits(packed, el.bits, n)


def block_bytes(name, k: int = BLOCK) -> int:
    """Bytes of one stored block: 1 scale byte + k packed elements."""
    return 1 + packing.packed_size(k, element(name).bits)


def to_block_bytes(scale_codes, codes, name) -> np.ndarray:
    """(scales [n], codes [n, k]) -> uint8 [n, block_bytes]: scale byte, then packed elements."""
    scale_codes = np.asarray(scale_codes, dtype=np.uint8).reshape(-1, 1)
    return np.concatenate([scale_codes, pack_mx(codes, name)], axis=1)


def from_block_bytes(blocks, name, k: int = BLOCK):
    """Inverse of :func:`to_block_bytes`: (scale codes [n], element codes [n, k])."""
    b = np.asarray(blocks, dtype=np.uint8)
    if b.ndim != 2 or b.shape[1] != block_bytes(name, k):
        raise ValueError(f"{name} blocks of {k} need shape [n, {block_bytes(name, k)}], got {b.shape}")
    return b[:, 0].copy(), unpack_mx(b[:, 1:], name, k)
