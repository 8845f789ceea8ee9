"""ggml's q4_0, q4_1 and q8_0 blocks, bit-exact with ggml's reference quantizers (pure numpy).

Source checked: ggml/src/ggml-quants.c ``quantize_row_q4_0_ref`` / ``_q4_1_ref`` / ``_q8_0_ref``
and ``dequantize_row_*``; block layouts from ggml-common.h. These ``_ref`` functions are what
llama-quantize runs when no importance matrix is given (``quantize_q4_0`` etc. with
``quant_weights == NULL``); with an imatrix it runs a different, search-based quantizer.

Every function takes float32 blocks of shape [n_blocks, 32] and works in float32 exactly as the C
code does (numpy float32 ops round like C float ops):

q4_0 (18 bytes: fp16 d, then 16 bytes of nibbles)
    max = the element of largest |x|, the first one on ties (C: ``if (amax < fabsf(v))``);
          0.0f for an all-zero block, so d = 0.0f / -8 = -0.0 there.
    d = max / -8 (float32),  id = d ? 1/d : 0 (float32),
    q = min(15, (int8)(x*id + 8.5f)): float32 multiply, float32 add, then truncation toward 0,
    stored d = fp16(d) (round to nearest even). Dequantize: x' = (q - 8) * fp16_to_fp32(d).
q4_1 (20 bytes: fp16 d, fp16 m, 16 bytes)
    min / max in float32 (the first element equal to each, which decides the sign of a zero m),
    d = (max - min) / 15,  id = d ? 1/d : 0,  q = min(15, (int8)((x - min)*id + 0.5f)),
    stored d = fp16(d), m = fp16(min). Dequantize: x' = q * fp16(d) + fp16(m).
q8_0 (34 bytes: fp16 d, then 32 int8)
    amax = max|x|,  d = amax / 127,  id = d ? 1/d : 0,  q = roundf(x*id) (half away from zero),
    stored d = fp16(d). Dequantize: x' = q * fp16(d).

Note the split the C code makes: codes come from the float32 d / id, while dequantization uses
the fp16-rounded d (and m). So a dequantized block is not exactly "round(x/d)*d" for the stored d.

Nibble order (q4_0, q4_1): byte j holds element j in its low nibble and element j + 16 in its
high nibble (not the 2i / 2i+1 order of tfquant.formats.packing).

Differences from the PyPI ``gguf`` package (0.19.0, gguf/quants.py), which mirrors these rules
in numpy: its dequantization is identical; its quantization takes ``max`` (q4_0) and ``min``
(q4_1) from numpy reductions, so only the *sign of a zero* can differ: an all-zero q4_0 block
whose first element is -0.0 gets d bytes 00 00 (+0) from gguf but 00 80 (-0) from C (and from
this module), and then dequantizes to +0 instead of -0; a q4_1 block whose min is a zero can get
m = -0 / +0 differently from C's first-occurrence rule (dequantized values are equal). Nonzero
data gives identical bytes.

Compiler caveat (not a numpy matter): the C expressions ``x*id + 8.5f`` and ``q*d + m`` may be
contracted into one FMA by a compiler allowed to (GCC's default -ffp-contract=fast with
-march=native on an FMA machine), which can move a code or the last bit of a dequantized value.
This module, like gguf-py, follows the uncontracted ISO C evaluation (two roundings).
"""
from __future__ import annotations

import numpy as np

QK = 32
BLOCK_BYTES = {"q4_0": 2 + QK // 2, "q4_1": 4 + QK // 2, "q8_0": 2 + QK}


def _blocks(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != QK:
        raise ValueError(f"expected float32 blocks of shape [n_blocks, {QK}], got {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("blocks have non-finite values (inf/NaN); ggml's result is undefined")
    return x


def _check_bytes(blocks, kind: str) -> np.ndarray:
    b = np.asarray(blocks)
    if b.dtype != np.uint8 or b.ndim != 2 or b.shape[1] != BLOCK_BYTES[kind]:
        raise ValueError(f"{kind} expects uint8 blocks [n, {BLOCK_BYTES[kind]}], "
                         f"got {b.dtype} {b.shape}")
    return b


def _first_equal(x: np.ndarray, value: np.ndarray) -> np.ndarray:
    """x[i, first j with x[i, j] == value[i]]: the element a C scan with a strict compare keeps."""
    idx = np.argmax(x == value[:, None], axis=1)
    return x[np.arange(x.shape[0]), idx]


def _fp16_bytes(v: np.ndarray) -> np.ndarray:
    """float32 [n] -> [n, 2] little-endian fp16 bytes (RNE, as GGML_FP32_TO_FP16)."""
    with np.errstate(over="ignore"):
        return v.astype(np.float32).astype("<f2").view(np.uint8).reshape(-1, 2)


def _fp16_from(b: np.ndarray) -> np.ndarray:
    """[n, 2] bytes -> float32 [n, 1] (GGML_FP16_TO_FP32, exact)."""
    return np.ascontiguousarray(b).view("<f2").astype(np.float32).reshape(-1, 1)


def _inverse(d: np.ndarray) -> np.ndarray:
    """C's ``d ? 1.0f/d : 0.0f`` in float32."""
    with np.errstate(divide="ignore"):
        return np.where(d != 0, np.float32(1) / d, np.float32(0)).astype(np.float32)


def _pack_j_j16(q: np.ndarray) -> np.ndarray:
    """[n, 32] codes 0..15 -> [n, 16] bytes: low nibble element j, high nibble element j + 16."""
    q = q.astype(np.uint8)
    return q[:, :16] | (q[:, 16:] << 4)


def _unpack_j_j16(qs: np.ndarray) -> np.ndarray:
    """[n, 16] bytes -> [n, 32] codes 0..15 in element order."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=1)


def _trunc_to_code(v: np.ndarray) -> np.ndarray:
    """C's ``MIN(15, (int8_t)v)`` for v in [0, 16.5]: truncation toward zero, then cap at 15."""
    return np.minimum(np.trunc(v), 15).astype(np.uint8)


def quantize_q4_0(x_blocks) -> np.ndarray:
    """float32 [n, 32] -> uint8 [n, 18] q4_0 blocks (quantize_row_q4_0_ref)."""
    x = _blocks(x_blocks)
    a = np.abs(x)
    amax = a.max(axis=1)
    # The signed element of largest magnitude, first on ties; an all-zero block keeps C's
    # initial max = 0.0f (so d = -0.0 below, whatever the signs of its zeros).
    mx = np.where(amax > 0, x[np.arange(x.shape[0]), np.argmax(a, axis=1)], np.float32(0))
    d = (mx / np.float32(-8)).astype(np.float32)
    q = _trunc_to_code(x * _inverse(d)[:, None] + np.float32(8.5))
    return np.concatenate([_fp16_bytes(d), _pack_j_j16(q)], axis=1)


def dequantize_q4_0(blocks) -> np.ndarray:
    """uint8 [n, 18] -> float32 [n, 32]: (q - 8) * fp16(d)."""
    b = _check_bytes(blocks, "q4_0")
    d = _fp16_from(b[:, :2])
    q = _unpack_j_j16(b[:, 2:]).astype(np.float32) - np.float32(8)
    return (q * d).astype(np.float32)


def quantize_q4_1(x_blocks) -> np.ndarray:
    """float32 [n, 32] -> uint8 [n, 20] q4_1 blocks (quantize_row_q4_1_ref)."""
    x = _blocks(x_blocks)
    mn = _first_equal(x, x.min(axis=1))
    mx = _first_equal(x, x.max(axis=1))
    d = ((mx - mn) / np.float32(15)).astype(np.float32)
    q = _trunc_to_code((x - mn[:, None]) * _inverse(d)[:, None] + np.float32(0.5))
    return np.concatenate([_fp16_bytes(d), _fp16_bytes(mn), _pack_j_j16(q)], axis=1)


def dequantize_q4_1(blocks) -> np.ndarray:
    """uint8 [n, 20] -> float32 [n, 32]: q * fp16(d) + fp16(m) (two float32 roundings)."""
    b = _check_bytes(blocks, "q4_1")
    d, m = _fp16_from(b[:, :2]), _fp16_from(b[:, 2:4])
    q = _unpack_j_j16(b[:, 4:]).astype(np.float32)
    return (q * d + m).astype(np.float32)


def _roundf(v: np.ndarray) -> np.ndarray:
    """C roundf: nearest integer, halfway cases away from zero (np.round would go to even).

    Evaluated in float64, where |v| + 0.5 is exact for any float32 v: in float32 the addition
    itself could round (0.49999997 + 0.5 -> 1.0) and turn a non-tie into a wrong round-up.
    """
    v = v.astype(np.float64)
    return np.copysign(np.floor(np.abs(v) + 0.5), v)


def quantize_q8_0(x_blocks) -> np.ndarray:
    """float32 [n, 32] -> uint8 [n, 34] q8_0 blocks (quantize_row_q8_0_ref)."""
    x = _blocks(x_blocks)
    d = (np.abs(x).max(axis=1) / np.float32(127)).astype(np.float32)
    q = _roundf(x * _inverse(d)[:, None]).astype(np.int8)
    return np.concatenate([_fp16_bytes(d), q.view(np.uint8)], axis=1)


def dequantize_q8_0(blocks) -> np.ndarray:
    """uint8 [n, 34] -> float32 [n, 32]: q * fp16(d)."""
    b = _check_bytes(blocks, "q8_0")
    d = _fp16_from(b[:, :2])
    q = np.ascontiguousarray(b[:, 2:]).view(np.int8).astype(np.float32)
    return (q * d).astype(np.float32)


QUANTIZE = {"q4_0": quantize_q4_0, "q4_1": quantize_q4_1, "q8_0": quantize_q8_0}
DEQUANTIZE = {"q4_0": dequantize_q4_0, "q4_1": dequantize_q4_1, "q8_0": dequantize_q8_0}
