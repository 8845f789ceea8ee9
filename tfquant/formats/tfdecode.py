"""Decode tfquant.formats' stored arrays inside a TensorFlow graph (stock TF 2.15 ops only).

A quantized model keeps ``QuantizedWeight.arrays`` as ``tf.Variable`` s and rebuilds the float32
weight in its graph right before the MatMul. This module holds those decoders as plain TF
functions (no numpy, py_function or custom op at run time) that ``tf.function`` traces from a
:class:`DecodeMeta` and the stored tensors::

    meta = meta_of(qw)                              # frozen, hashable, Python values only
    arrays = {k: tf.Variable(v) for k, v in to_variables_values(qw).items()}
    w = decode(meta, arrays)                        # float32 [K, N]
    rows = decode_columns(meta, arrays, ids)        # ids.shape + [K]: w[:, ids] moved to the end

Both equal :func:`tfquant.formats.dequantize_weight` bit for bit (signed zeros, NaN payloads,
subnormals). Decoders work K-major, channel last: integer codes are stored that way; block formats
``blocks[N, K//B, bytes]`` are first transposed as uint8 to ``[K//B, bytes, N]`` so every unpacking
slice is contiguous and the result needs no float32 transpose. ``decode_columns`` gathers the
stored columns (block rows) of the requested channels and decodes only those.

Exactness. TF runs CPU kernels with flush-to-zero / denormals-are-zero, so a float32 op with a
subnormal input or result does not do what numpy does. Each decoder has a float32 fast path that
only multiplies normal numbers into normal results, and a cheap test (of the scales, rarely of
the element bytes), made once on the stored arrays by :func:`meta_of`, that switches the whole
weight to an integer-only exact path otherwise: an int scale below 2^-126; an MX / MX4-9 block whose scale code is tiny and that holds
a nonzero element (all-zero blocks stay fast), or whose scale is so large the fast multiplier
would overflow; an MXFP8 NaN element code. MX elements go fast as float16 bit patterns (the
element's sign / exponent / mantissa placed at float16's, exact for subnormal elements too), one
Cast, one multiply by a power of two. fp16 weights are one Cast plus a fix-up, run only when the
sum is NaN, for signalling NaNs the Cast quiets (numpy keeps them). Quantizer output always takes
the fast paths except for columns of tiny (< ~1e-30) or astronomical (> ~1e33) values.

Cost: decode of a [576, 1536] weight inside ``tf.function``, median of 50 calls after warm-up,
microseconds, three runs on a shared machine (measured on Intel(R) Xeon(R) Processor, 2 threads):
int8_per_channel 960-1020, int4_g32 1510-1630, mxfp6_e2m3 3560-4120, q4_1 2210-2310,
bf16 520-730 (also fp16 ~1100, q4_0 ~2000, mxfp4 ~3000, mxfp8_e4m3 3400-3700, mx6 3200-3900).
For scale: reading the float32 variable is ~240 and one float32 multiply of it ~790. TF CPU
elementwise ops cost about the same per element whatever the dtype, so the cost is the count of
full-size passes (cast, multiply, unpack shifts, the uint8 transpose).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from math import gcd

import numpy as np
import tensorflow as tf

from . import QuantizedWeight, get_format, ggml, mx, mx_paper, packing

_BLOCK = {"ggml": ggml.QK, "mx": mx.BLOCK, "mx_paper": mx_paper.BLOCK}
_F32_SIGN = 0x80000000
_F32_INF = 0x7F800000
_F32_NAN = 0x7FC00000  # numpy's float32(np.nan)


@dataclass(frozen=True)
class DecodeMeta:
    """What a decoder needs besides the tensors: format, (K, N), options, stored dtypes."""

    format: str
    family: str
    shape: tuple  # (K, N)
    params: tuple  # sorted (key, value) pairs of QuantizedWeight.params
    dtypes: tuple  # (array name, tf dtype name) in storage order
    exact: bool = False  # the stored values need the integer-only exact path (measured by meta_of)

    def param(self, key, default=None):
        return dict(self.params).get(key, default)


def stored_dtypes(qw: QuantizedWeight) -> dict:
    """The tf.DType each array of ``qw`` is stored as (uint16 bit patterns -> bfloat16 / float16)."""
    out = {}
    for name, a in qw.arrays.items():
        if a.dtype == np.uint16:
            out[name] = tf.bfloat16 if qw.format == "bf16" else tf.float16
        else:
            out[name] = tf.as_dtype(a.dtype)
    return out


def to_variables_values(qw: QuantizedWeight) -> dict:
    """``qw.arrays`` as numpy arrays of :func:`stored_dtypes` (same bytes, reinterpreted)."""
    dtypes = stored_dtypes(qw)
    return {name: np.ascontiguousarray(a).view(dtypes[name].as_numpy_dtype)
            for name, a in qw.arrays.items()}


def meta_of(qw: QuantizedWeight) -> DecodeMeta:
    """The decode parameters of ``qw``, including whether its values need the exact path: decided
    here, once, on the stored arrays (an eager decode), so that a traced decoder is straight-line ops."""
    f = get_format(qw.format)
    meta = DecodeMeta(f.name, f.family, tuple(int(s) for s in qw.shape),
                      tuple(sorted(qw.params.items())),
                      tuple((k, d.name) for k, d in stored_dtypes(qw).items()))
    _PROBE.append([])
    try:
        with tf.init_scope():  # eager even when called while something is being traced
            decode(meta, {k: tf.constant(v) for k, v in to_variables_values(qw).items()})
    finally:
        seen = _PROBE.pop()
    return replace(meta, exact=any(seen))


_PROBE: list = []  # meta_of's record of the paths an eager decode chose


def _choose(meta: DecodeMeta, unsafe, exact, fast):
    """The exact path or the fast one (callables).  Eagerly the data decide (and meta_of records it);
    traced, ``meta.exact`` does, so the graph has no tf.cond: a cond's branch functions are named with
    a per-process counter, and a spliced graph must be the same bytes on every run."""
    if tf.executing_eagerly():
        use = bool(unsafe())
        if _PROBE:
            _PROBE[-1].append(use)
        return exact() if use else fast()
    return exact() if meta.exact else fast()


def decode(meta: DecodeMeta, arrays) -> tf.Tensor:
    """float32 [K, N], bit-identical to ``dequantize_weight(qw)``."""
    return _DECODERS[meta.family](meta, _as_stored(meta, arrays))


def decode_columns(meta: DecodeMeta, arrays, ids) -> tf.Tensor:
    """float32 ``ids.shape + [K]``: ``dequantize_weight(qw)[:, ids]`` transposed (embedding rows).

    Only the stored columns (block rows) of ``ids`` are gathered and decoded.
    """
    ids = tf.convert_to_tensor(ids)
    w = _decode_gathered(meta, arrays, tf.reshape(ids, [-1]))  # [K, len(ids)]
    return tf.reshape(tf.transpose(w), tf.concat([tf.shape(ids), [meta.shape[0]]], 0))


def decode_column_range(meta: DecodeMeta, arrays, start: int, stop: int) -> tf.Tensor:
    """float32 [K, stop - start], bit-identical to ``dequantize_weight(qw)[:, start:stop]``: one slice of a
    weight decoded without the rest (the decode is elementwise per column)."""
    return _decode_gathered(meta, arrays, tf.range(start, stop))


def _decode_gathered(meta: DecodeMeta, arrays, flat) -> tf.Tensor:
    """The stored columns (block rows) ``flat`` gathered and decoded: float32 [K, len(flat)]."""
    t = _as_stored(meta, arrays)
    if meta.family in _BLOCK:
        cols = {"blocks": tf.gather(t["blocks"], flat, axis=0)}
    else:  # [rows, N] arrays; per-tensor scales (1, 1) apply to every column
        cols = {k: v if v.shape[1] == 1 and meta.shape[1] != 1 else tf.gather(v, flat, axis=1)
                for k, v in t.items()}
    return _DECODERS[meta.family](meta, cols)


def _as_stored(meta: DecodeMeta, arrays) -> dict:
    """Tensors of the stored dtypes; uint16 bit patterns are accepted and bitcast."""
    out = {}
    for name, dname in meta.dtypes:
        want = tf.as_dtype(dname)
        x = tf.convert_to_tensor(arrays[name])
        if x.dtype == tf.uint16 and want in (tf.bfloat16, tf.float16):
            x = tf.bitcast(x, want)
        if x.dtype != want:
            raise TypeError(f"{meta.format} array {name!r} must be {dname}, got {x.dtype.name}")
        out[name] = x
    return out


# ---------------------------------------------------------------- exact float32 bit building

def _bits_to_f32(bits_u32):
    return tf.bitcast(bits_u32, tf.float32)


def _compose(neg, a, x):
    """float32 (-1)^neg * a * 2^x, rounded to nearest even as numpy would (subnormals kept).

    ``a``: int64 >= 0 (below 2^40), ``x``: int64 exponent; integer ops only, so it is exact under
    TF's flush-to-zero mode.
    """
    a = tf.cast(a, tf.int64)
    x = tf.clip_by_value(tf.cast(x, tf.int64), -400, 400)
    fa = tf.cast(tf.bitcast(tf.cast(a, tf.float32), tf.int32), tf.int64)  # a rounded to 24 bits
    e_new = tf.bitwise.right_shift(fa, 23) + x
    normal = fa + tf.bitwise.left_shift(x, 23)
    # Subnormal: field = RNE(a * 2^(x + 149)).
    t = x + 149
    s = tf.clip_by_value(-t, 0, 62)
    q = tf.bitwise.right_shift(a, s)
    rem = a - tf.bitwise.left_shift(q, s)
    half = tf.bitwise.right_shift(tf.bitwise.left_shift(tf.ones_like(s), s), 1)
    odd = tf.equal(tf.bitwise.bitwise_and(q, 1), 1)
    up = (s > 0) & ((rem > half) | (tf.equal(rem, half) & odd))
    sub = tf.bitwise.left_shift(q + tf.cast(up, tf.int64), tf.clip_by_value(t, 0, 31))
    mag = tf.where(e_new >= 255, tf.constant(_F32_INF, tf.int64), tf.where(e_new >= 1, normal, sub))
    mag = tf.where(tf.equal(a, 0), tf.zeros_like(mag), mag)
    sign = tf.where(neg, tf.constant(_F32_SIGN, tf.uint32), tf.constant(0, tf.uint32))
    return _bits_to_f32(tf.bitwise.bitwise_or(tf.cast(mag, tf.uint32), sign))


def _ldexp(v, k):
    """float32(v * 2^k) exactly (RNE, subnormals kept); inf / NaN pass through."""
    b = tf.cast(tf.bitcast(v, tf.uint32), tf.int64)
    ef = tf.bitwise.bitwise_and(tf.bitwise.right_shift(b, 23), 0xFF)
    mf = tf.bitwise.bitwise_and(b, 0x7FFFFF)
    a = tf.where(tf.equal(ef, 0), mf, tf.bitwise.bitwise_or(mf, 0x800000))
    x = tf.where(tf.equal(ef, 0), tf.constant(-149, tf.int64), ef - 150) + tf.cast(k, tf.int64)
    out = _compose(b >= _F32_SIGN, a, x)
    return tf.where(tf.equal(ef, 255), v, out)


def _pow2(e):
    """float32 2^e for int e in [-126, 127] (built from bits, so it is exact)."""
    return _bits_to_f32(tf.bitwise.left_shift(tf.cast(e + 127, tf.uint32), 23))


def _half_to_f32(meta, h):
    """float16 -> float32 as numpy does it: one Cast, then signalling NaNs un-quieted.

    The fix-up runs only when the sum is NaN (one pass; a NaN anywhere makes it NaN).
    """
    y = tf.cast(h, tf.float32)

    def fix():
        u = tf.cast(tf.bitcast(h, tf.uint16), tf.uint32)
        bits = tf.bitwise.bitwise_or(
            tf.bitwise.left_shift(tf.bitwise.bitwise_and(u, 0x8000), 16),
            tf.bitwise.bitwise_or(tf.constant(_F32_INF, tf.uint32),
                                  tf.bitwise.left_shift(tf.bitwise.bitwise_and(u, 0x3FF), 13)))
        return tf.where(tf.math.is_nan(y), _bits_to_f32(bits), y)

    return _choose(meta, lambda: tf.math.is_nan(tf.reduce_sum(y)), fix, lambda: y)


# ---------------------------------------------------------------- unpacking (K-major)

def _k_major_blocks(blocks):
    """Channel-major uint8 blocks [C, nb, bytes] -> [nb, bytes, C] (a 2-D transpose: faster)."""
    nb, bb = blocks.shape[1], blocks.shape[2]
    flat = tf.transpose(tf.reshape(blocks, [-1, nb * bb]))
    return tf.reshape(flat, [nb, bb, -1])


def _top_aligned(b, width, first, nbytes):
    """Codes of ``width`` bits, LSB-first in bytes [first, first + nbytes) of axis 1 of uint8
    [R, bytes, C] -> uint8 [R, n, C], each code shifted to the top of its byte (<< 8 - width).

    The bit pattern repeats every ``per`` codes (``width * per / 8`` bytes), so each of those
    positions is a shift (and mask) of one or two byte slices.
    """
    if width == 8:
        return b[:, first:first + nbytes]
    per = 8 // gcd(width, 8)
    wb = width * per // 8
    R, C = tf.shape(b)[0], tf.shape(b)[2]
    x = tf.reshape(b[:, first:first + nbytes], [R, nbytes // wb, wb, C])
    byte = [x[:, :, k] for k in range(wb)]  # [R, nbytes / wb, C] (unit strides: fast slices)
    top = (0xFF << (8 - width)) & 0xFF
    parts = []
    for i in range(per):
        j, o = divmod(i * width, 8)
        if o + width <= 8:  # inside byte j
            part = tf.bitwise.left_shift(byte[j], 8 - width - o) if o + width < 8 else byte[j]
            parts.append(tf.bitwise.bitwise_and(part, top) if o else part)
        else:  # low bits from byte j, high bits from byte j + 1
            low = tf.bitwise.bitwise_and(tf.bitwise.right_shift(byte[j], o + width - 8), top)
            parts.append(tf.bitwise.bitwise_or(
                low, tf.bitwise.left_shift(byte[j + 1], 16 - o - width)))
    return tf.reshape(tf.stack(parts, axis=2), [R, -1, C])


def _codes(top, width):
    """int32 codes from :func:`_top_aligned` bytes (for table look-ups on the exact paths)."""
    return tf.bitwise.right_shift(tf.cast(top, tf.int32), 8 - width)


def _magnitude_mask(width, n, mag):
    """uint8 [bytes, 1]: the magnitude bits of ``n`` packed ``width``-bit codes (sign bits clear)."""
    m = packing.pack_bits(np.full(n, mag, np.int64), width) if width < 8 else np.full(n, mag)
    return tf.constant(m.astype(np.uint8).reshape(-1, 1))


def _live_tiny_blocks(e, thr, b, first, mask):
    """True when a block with scale code e < thr holds a nonzero element (e: int32 [nb, C];
    the elements are bytes ``first:`` of the K-major blocks ``b``)."""
    live = tf.reduce_max(tf.bitwise.bitwise_and(b[:, first:], mask), axis=1) > 0
    return tf.reduce_any((e < thr) & live)


def _signed_to_half(top, shift, mask):
    """Top-aligned sign-magnitude codes -> float16 bit patterns, via int8 sign extension:
    int16(int8(top)) << shift, keeping only the bits in ``mask`` (the sign is bit 15)."""
    h = tf.cast(tf.bitcast(top, tf.int8), tf.int16)
    if shift:
        h = tf.bitwise.left_shift(h, shift)
    if mask != 0xFFFF:
        h = tf.bitwise.bitwise_and(h, mask - 0x10000 if mask & 0x8000 else mask)
    return tf.bitcast(h, tf.float16)


# ---------------------------------------------------------------- family decoders -> [K, C]

def _unpack_int4(p, K, signed):
    """uint8 [ceil(K/2), C], element 2i in the low nibble -> int8 / uint8 codes [K, C]."""
    if signed:  # arithmetic shifts sign-extend the nibbles
        s = tf.bitcast(p, tf.int8)
        lo = tf.bitwise.right_shift(tf.bitcast(tf.bitwise.left_shift(p, 4), tf.int8), 4)
        pair = [lo, tf.bitwise.right_shift(s, 4)]
    else:
        pair = [tf.bitwise.bitwise_and(p, 15), tf.bitwise.right_shift(p, 4)]
    return tf.reshape(tf.stack(pair, axis=1), [-1, tf.shape(p)[1]])[:K]


def _decode_int(meta, t):
    K = meta.shape[0]
    codes = t["codes"]
    if meta.param("bits") == 4:
        codes = _unpack_int4(codes, K, meta.param("symmetric"))
    scales = t["scales"]  # float16 scales: the Cast is exact (a NaN scale is quieted by * anyway)
    scales = tf.cast(scales, tf.float32) if scales.dtype == tf.float16 else scales
    n_groups = K // meta.param("group_size") if meta.param("granularity") == "per_group" else 1
    q = tf.reshape(codes, [n_groups, K // n_groups, -1])
    s = scales[:, None, :]
    g = tf.cast(q, tf.float32)
    zp = t.get("zero_points")
    if zp is not None:
        g = g - tf.cast(zp, tf.float32)[:, None, :]
    y = g * s  # numpy's order: (q - z) * s, float32

    def exact():  # some scale is subnormal: s * g with integers only
        gi = tf.cast(q, tf.int64)
        if zp is not None:
            gi = gi - tf.cast(zp, tf.int64)[:, None, :]
        sb = tf.cast(tf.bitcast(s, tf.uint32), tf.int64)
        a = tf.abs(gi) * tf.bitwise.bitwise_and(sb, 0x7FFFFF)
        neg = tf.not_equal(gi < 0, sb >= _F32_SIGN)
        return tf.where(tf.equal(tf.bitwise.bitwise_and(sb, _F32_INF), 0),
                        _compose(neg, a, tf.constant(-149, tf.int64)), y)

    sbits = tf.bitwise.bitwise_and(tf.bitcast(scales, tf.uint32), _F32_INF)
    y = _choose(meta, lambda: tf.reduce_any(tf.equal(sbits, 0)), exact, lambda: y)
    return tf.reshape(y, [K, -1])


def _half_at(b, i):
    """float32 [nb, 1, C] from the little-endian fp16 at bytes i, i+1 of K-major blocks.

    A plain Cast: it quiets a signalling NaN, which the multiply that follows would do anyway.
    """
    pair = tf.stack([b[:, i], b[:, i + 1]], axis=-1)
    return tf.cast(tf.bitcast(pair, tf.float16), tf.float32)[:, None, :]


def _decode_ggml(meta, t):
    K, fmt = meta.shape[0], meta.format
    b = _k_major_blocks(t["blocks"])
    d = _half_at(b, 0)
    if fmt == "q8_0":
        y = tf.cast(tf.bitcast(b[:, 2:], tf.int8), tf.float32) * d
    else:
        qs = b[:, 4:] if fmt == "q4_1" else b[:, 2:]
        q = tf.concat([tf.bitwise.bitwise_and(qs, 15), tf.bitwise.right_shift(qs, 4)], axis=1)
        if fmt == "q4_1":
            y = tf.cast(q, tf.float32) * d + _half_at(b, 2)
        else:  # float(q - 8) == float(q) - 8 exactly
            y = tf.cast(tf.bitcast(q, tf.int8) - 8, tf.float32) * d
    return tf.reshape(y, [K, -1])


@dataclass(frozen=True)
class _MXPlan:
    table: np.ndarray  # float32 value of every element code (exact paths)
    thr: int  # scale codes below thr may make a nonzero product subnormal
    hi: int  # scale codes above hi overflow the fast path's float32 multiplier
    bias: int  # the fast multiplier is 2^(e - bias); bias absorbs the element's own offset
    mask: tf.Tensor  # magnitude bits of the packed elements


def _mx_plan(fmt) -> _MXPlan:
    el = mx.element(fmt)
    table = mx.element_values(fmt).astype(np.float32)
    tiny = np.abs(table[np.isfinite(table) & (table != 0)]).min()
    thr = int(1 - (np.frexp(tiny)[1] - 1))  # e >= thr: tiny * 2^(e - 127) >= 2^-126
    # Fast element values: int8 -> c (value c * 2^-6); floats -> the float16 whose bits are the
    # element's (sign and exponent/mantissa placed at float16's), value * 2^(el.bias - 15).
    bias = 127 + 6 if el.ebits == 0 else 127 + el.bias - 15
    mag = 0xFF if el.ebits == 0 else (1 << (el.bits - 1)) - 1
    return _MXPlan(table, thr, min(254, bias + 127), bias, _magnitude_mask(el.bits, mx.BLOCK, mag))


def _decode_mx(meta, t):
    K, fmt = meta.shape[0], meta.format
    el, plan = mx.element(fmt), _mx_plan(fmt)
    b = _k_major_blocks(t["blocks"])
    e = tf.cast(b[:, 0:1], tf.int32)  # [nb, 1, C]
    nan = tf.equal(e, mx.E8M0_NAN)
    top = _top_aligned(b, el.bits, 1, b.shape[1] - 1)  # [nb, 32, C]
    if el.ebits == 0:
        v = tf.cast(tf.bitcast(top, tf.int8), tf.float32)
    else:
        keep = 0x8000 | ((1 << (10 + el.ebits)) - 1)
        v = tf.cast(_signed_to_half(top, 2 - el.mbits + el.bits, keep), tf.float32)
    mult = _bits_to_f32(tf.where(nan, tf.constant(_F32_NAN, tf.uint32), tf.bitwise.left_shift(
        tf.cast(tf.clip_by_value(e - plan.bias + 127, 1, 254), tf.uint32), 23)))
    y = v * mult

    def exact():
        vals = tf.gather(tf.constant(plan.table), _codes(top, el.bits))
        return tf.where(nan, tf.constant(np.nan, tf.float32), _ldexp(vals, e - mx.E8M0_BIAS))

    def unsafe():
        e2 = e[:, 0]
        tests = [tf.reduce_any((e2 > plan.hi) & (e2 != mx.E8M0_NAN)),
                 _live_tiny_blocks(e2 + tf.cast(nan[:, 0], tf.int32) * 1024, plan.thr, b, 1, plan.mask)]
        if el.name in ("e4m3", "e5m2"):  # NaN codes: e4m3's decode to 1.875 on the fast path,
            # e5m2's keep their payload (numpy's NaN is canonical)
            # (two reductions, no elementwise pass: the largest positive and negative codes)
            limit = 0x7E if el.name == "e4m3" else 0x7C
            tests += [tf.reduce_max(tf.bitcast(top, tf.int8)) > limit, tf.reduce_max(top) > 0x80 + limit]
        return tf.reduce_any(tf.stack(tests))

    return tf.reshape(_choose(meta, unsafe, exact, lambda: y), [K, -1])


def _decode_mx_paper(meta, t):
    K, fmt = meta.shape[0], meta.format
    m = mx_paper.mantissa_bits(fmt)
    b = _k_major_blocks(t["blocks"])
    code = tf.cast(b[:, 0:1], tf.int32)  # [nb, 1, C]
    E = code - mx_paper.EXP_BIAS
    tau = tf.bitwise.bitwise_and(tf.bitwise.right_shift(
        tf.cast(b[:, 1:2], tf.int32), tf.constant(np.arange(8).reshape(8, 1), tf.int32)), 1)
    top = _top_aligned(b, m + 1, 2, b.shape[1] - 2)  # [nb, 16, C]
    nb, C = tf.shape(b)[0], tf.shape(b)[2]
    pairs = [nb, mx_paper.BLOCK // mx_paper.PAIR, mx_paper.PAIR, C]
    step = (E - tau + 1 - m)[:, :, None, :]  # [nb, 8, 1, C]
    # Fast: the float16 subnormal with sign and bits (q << (7 - m)) is +-q * 2^(7 - m - 24).
    v = tf.reshape(tf.cast(_signed_to_half(top, 0, 0x807F), tf.float32), pairs)
    y = v * _pow2(tf.clip_by_value(step + 17 + m, -126, 127))

    def exact():
        c = np.arange(2 ** (m + 1))
        table = (np.where(c >> m, -1.0, 1.0) * (c & ((1 << m) - 1))).astype(np.float32)  # -0.0
        vals = tf.gather(tf.constant(table), _codes(top, m + 1))
        return _ldexp(tf.reshape(vals, pairs), step)

    # code >= m + 1: every nonzero product is a normal float; code <= 236: 2^(step+17+m) finite.
    mask = _magnitude_mask(m + 1, mx_paper.BLOCK, (1 << m) - 1)

    def unsafe():
        return tf.logical_or(tf.reduce_any(code > 236), _live_tiny_blocks(code[:, 0], m + 1, b, 2, mask))

    return tf.reshape(_choose(meta, unsafe, exact, lambda: y), [K, -1])


def _decode_float(meta, t):
    x = t["bits"]
    if x.dtype == tf.bfloat16:
        return tf.cast(x, tf.float32)  # exact for every bit pattern (a 16-bit shift)
    return _half_to_f32(meta, x)


_DECODERS = {"int": _decode_int, "ggml": _decode_ggml, "mx": _decode_mx,
             "mx_paper": _decode_mx_paper, "float": _decode_float}

__all__ = ["DecodeMeta", "meta_of", "stored_dtypes", "to_variables_values", "decode",
           "decode_columns"]
