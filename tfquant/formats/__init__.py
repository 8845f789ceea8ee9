"""Number formats for weight quantization, as pure numpy (no TensorFlow import).

One call per direction for a 2-D MatMul weight ``w[K, N]`` (K = input dimension, axis 0;
N = output channel, axis 1)::

    qw = quantize_weight(w, "q4_0")        # -> QuantizedWeight: .arrays (what is stored), .nbytes
    w2 = dequantize_weight(qw)              # -> float32 [K, N]

Groups and blocks always run along K: group / block b of column n is ``w[b*B:(b+1)*B, n]``.
K must be a multiple of the group / block size (else ValueError naming K and the size; padding
is the caller's decision). Stored layouts:

- integer formats (``int*``): codes in the MatMul layout [K, N] (int8, or uint8 when
  asymmetric); 4-bit codes packed along K into [ceil(K/2), N] uint8, byte [i, n] = code[2i, n]
  (low nibble) | code[2i+1, n] << 4; scales / zero points [n_groups, N] (per tensor (1, 1)).
  A TF graph can unpack, Cast and multiply these without a transpose.
- block formats (ggml ``q*``, OCP ``mx*``, paper ``mx4/6/9``): channel-major blocks
  ``blocks[N, K // B, block_bytes]``, i.e. row n holds column n's input vector in K order. For
  ggml types this is exactly a GGUF tensor's data (ggml's ne0 is K), so
  ``blocks.reshape(N, -1)`` equals ``gguf.quants.quantize(w.T, type)``.
- ``bf16`` / ``fp16``: uint16 bit patterns [K, N].

Rules per family: tfquant.formats.integer, .ggml, .mx, .mx_paper, .floats; sub-byte packing:
.packing. ``FORMATS`` lists every named format with its bits per weight (scale overhead
included; per-channel / per-tensor formats add 32/K resp. 32/(K*N) bits for their float32
scales on top of the listed value, see :func:`storage_bits_per_weight`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict

import numpy as np

from . import floats, ggml, integer, mx, mx_paper, packing


@dataclass(frozen=True)
class Format:
    name: str
    family: str  # "int", "ggml", "mx", "mx_paper", "float"
    bits_per_weight: float  # nominal, including per-block / per-group scale overhead
    description: str
    params: tuple = ()  # default options, as (key, value) pairs

    def defaults(self) -> dict:
        return dict(self.params)


def _int(name, bits, gran, group=None, symmetric=True, scale_dtype="float32", desc=""):
    G = group or 0
    sbits = 16 if scale_dtype == "float16" else 32
    bpw = bits + (sbits / G if G else 0) + (8 / G if G and not symmetric else 0)
    params = (("bits", bits), ("granularity", gran), ("group_size", group),
              ("symmetric", symmetric), ("scale_dtype", scale_dtype))
    return Format(name, "int", bpw, desc, params)


_LIST = [
    _int("int8_per_tensor", 8, "per_tensor", desc="int8 symmetric [-127, 127], one float32 scale"),
    _int("int8_per_channel", 8, "per_channel",
         desc="int8 symmetric, one float32 scale per output column (+32/K bits)"),
    _int("int4_per_channel", 4, "per_channel",
         desc="int4 symmetric [-7, 7], one float32 scale per output column (+32/K bits)"),
    _int("int8_g128", 8, "per_group", 128, desc="int8 symmetric, float32 scale per 128 inputs"),
    _int("int4_g32", 4, "per_group", 32, desc="int4 symmetric, float32 scale per 32 inputs"),
    _int("int4_g64", 4, "per_group", 64, desc="int4 symmetric, float32 scale per 64 inputs"),
    _int("int4_g128", 4, "per_group", 128,
         desc="int4 symmetric, float32 scale per 128 inputs (quanto's int4 grouping)"),
    _int("int4_g32_f16", 4, "per_group", 32, scale_dtype="float16",
         desc="int4 symmetric, float16 scale per 32 inputs"),
    _int("int4_g128_f16", 4, "per_group", 128, scale_dtype="float16",
         desc="int4 symmetric, float16 scale per 128 inputs"),
    _int("uint4_g128", 4, "per_group", 128, symmetric=False,
         desc="uint4 asymmetric, float32 scale + uint8 zero point per 128 inputs (MatMulNBits-like)"),
    Format("q4_0", "ggml", 4.5, "ggml q4_0: 32 weights, fp16 d, 4-bit (q - 8) * d (18 bytes)"),
    Format("q4_1", "ggml", 5.0, "ggml q4_1: 32 weights, fp16 d and m, 4-bit q * d + m (20 bytes)"),
    Format("q8_0", "ggml", 8.5, "ggml q8_0: 32 weights, fp16 d, int8 q * d (34 bytes)"),
    Format("mxfp8_e4m3", "mx", 8.25, "OCP MXFP8 E4M3: 32 x FP8 E4M3 + E8M0 scale"),
    Format("mxfp8_e5m2", "mx", 8.25, "OCP MXFP8 E5M2: 32 x FP8 E5M2 + E8M0 scale"),
    Format("mxfp6_e2m3", "mx", 6.25, "OCP MXFP6 E2M3: 32 x FP6 E2M3 + E8M0 scale"),
    Format("mxfp6_e3m2", "mx", 6.25, "OCP MXFP6 E3M2: 32 x FP6 E3M2 + E8M0 scale"),
    Format("mxfp4", "mx", 4.25, "OCP MXFP4: 32 x FP4 E2M1 + E8M0 scale"),
    Format("mxint8", "mx", 8.25, "OCP MXINT8: 32 x int8 * 2^-6 + E8M0 scale"),
    Format("mx9", "mx_paper", 9.0, "arXiv 2302.08007 MX9: 16 x (sign + 7 bits), 8-bit shared + "
           "1-bit per-pair exponent"),
    Format("mx6", "mx_paper", 6.0, "arXiv 2302.08007 MX6: 16 x (sign + 4 bits), shared + pair exponents"),
    Format("mx4", "mx_paper", 4.0, "arXiv 2302.08007 MX4: 16 x (sign + 2 bits), shared + pair exponents"),
    Format("bf16", "float", 16.0, "bfloat16, round to nearest even from float32"),
    Format("fp16", "float", 16.0, "IEEE float16, round to nearest even (overflows to inf > 65504)"),
]
FORMATS: Dict[str, Format] = {f.name: f for f in _LIST}

_BLOCK = {"ggml": ggml.QK, "mx": mx.BLOCK, "mx_paper": mx_paper.BLOCK}


def get_format(fmt) -> Format:
    if isinstance(fmt, Format):
        return fmt
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; known: {sorted(FORMATS)}")
    return FORMATS[fmt]


@dataclass
class QuantizedWeight:
    """A quantized [K, N] weight: the stored arrays plus what is needed to decode them."""

    format: str
    shape: tuple
    arrays: Dict[str, np.ndarray]
    params: dict = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in self.arrays.values()))

    @property
    def bits_per_weight(self) -> float:
        K, N = self.shape
        return 8.0 * self.nbytes / (K * N)

    def tobytes(self) -> bytes:
        """The stored arrays, C order, concatenated in ``arrays`` order."""
        return b"".join(np.ascontiguousarray(a).tobytes() for a in self.arrays.values())


def _check_2d(w) -> np.ndarray:
    w = np.asarray(w, dtype=np.float32)
    if w.ndim != 2:
        raise ValueError(f"expected a 2-D [K, N] weight, got shape {w.shape}")
    return w


def _to_blocks(w: np.ndarray, B: int, fmt: str) -> np.ndarray:
    """[K, N] -> [N * K/B, B]: column n's inputs in K order, cut into blocks of B."""
    K, N = w.shape
    if K % B:
        raise ValueError(f"{fmt} blocks of {B} do not divide the input dimension K={K}")
    return np.ascontiguousarray(w.T).reshape(N * (K // B), B)


def _from_blocks(x: np.ndarray, K: int, N: int) -> np.ndarray:
    return np.ascontiguousarray(x.reshape(N, K).T)


def quantize_weight(w, fmt, **opts) -> QuantizedWeight:
    """Quantize ``w[K, N]`` to a named format; ``opts`` override the format's defaults.

    Options: int formats take bits / granularity / group_size / symmetric / scale_dtype;
    mx and mx_paper formats take rounding ("even" | "away"); fp16 takes saturate.
    """
    f = get_format(fmt)
    w = _check_2d(w)
    K, N = w.shape
    params = {**f.defaults(), **opts}
    allowed = {"int": set(f.defaults()), "ggml": set(), "mx": {"rounding"},
               "mx_paper": {"rounding"}, "float": {"saturate"} if f.name == "fp16" else set()}
    unknown = set(opts) - allowed[f.family]
    if unknown:
        raise TypeError(f"{f.name} does not take options {sorted(unknown)}")
    if f.family == "int":
        q = integer.quantize_int(w, **params)
        arrays = {}
        if q.bits == 4:
            arrays["codes"] = np.ascontiguousarray(packing.pack_int4(q.codes.T).T)
        else:
            arrays["codes"] = q.codes
        arrays["scales"] = q.scales.astype(q.scale_dtype)
        if q.zero_points is not None:
            arrays["zero_points"] = q.zero_points
        params["group_size"] = q.group_size
        return QuantizedWeight(f.name, (K, N), arrays, params)
    if f.family == "float":
        if f.name == "bf16":
            bits = floats.to_bfloat16_bits(w)
        else:
            bits = floats.to_float16_bits(w, saturate=params.get("saturate", False))
        return QuantizedWeight(f.name, (K, N), {"bits": bits}, params)
    B = _BLOCK[f.family]
    x = _to_blocks(w, B, f.name)
    if f.family == "ggml":
        blocks = ggml.QUANTIZE[f.name](x)
    elif f.family == "mx":
        scales, codes = mx.quantize_mx(x, f.name, rounding=params.get("rounding", "even"))
        blocks = mx.to_block_bytes(scales, codes, f.name)
    else:
        e, micro, codes = mx_paper.quantize_mx_paper(x, f.name, rounding=params.get("rounding", "even"))
        blocks = mx_paper.to_block_bytes(e, micro, codes, f.name)
    return QuantizedWeight(f.name, (K, N), {"blocks": blocks.reshape(N, K // B, -1)}, params)


def dequantize_weight(qw: QuantizedWeight) -> np.ndarray:
    """float32 [K, N] from a :class:`QuantizedWeight`."""
    f = get_format(qw.format)
    K, N = qw.shape
    if f.family == "int":
        p = qw.params
        codes = qw.arrays["codes"]
        if p["bits"] == 4:
            codes = packing.unpack_int4(codes.T, K, signed=p["symmetric"]).T
        q = integer.IntQuantized(
            codes=np.ascontiguousarray(codes), scales=qw.arrays["scales"].astype(np.float32),
            zero_points=qw.arrays.get("zero_points"), bits=p["bits"], granularity=p["granularity"],
            group_size=p["group_size"], symmetric=p["symmetric"], scale_dtype=p["scale_dtype"])
        return integer.dequantize_int(q)
    if f.family == "float":
        bits = qw.arrays["bits"]
        return floats.from_bfloat16_bits(bits) if f.name == "bf16" else floats.from_float16_bits(bits)
    blocks = qw.arrays["blocks"].reshape(N * (K // _BLOCK[f.family]), -1)
    if f.family == "ggml":
        x = ggml.DEQUANTIZE[f.name](blocks)
    elif f.family == "mx":
        x = mx.dequantize_mx(*mx.from_block_bytes(blocks, f.name), f.name)
    else:
        x = mx_paper.dequantize_mx_paper(*mx_paper.from_block_bytes(blocks, f.name), f.name)
    return _from_blocks(x, K, N)


def storage_bits_per_weight(fmt, K: int, N: int) -> float:
    """Exact stored bits per weight for a [K, N] weight (what ``QuantizedWeight.nbytes`` gives).

    Equals ``FORMATS[fmt].bits_per_weight`` except for per-channel / per-tensor int formats
    (+32/K, +32/(K*N) for their float32 scales) and odd K with 4-bit codes (a padding nibble).
    """
    f = get_format(fmt)
    if f.family != "int":
        return f.bits_per_weight
    p = f.defaults()
    code_bytes = (K + 1) // 2 * N if p["bits"] == 4 else K * N
    n_scales = {"per_tensor": 1, "per_channel": N}.get(p["granularity"])
    if n_scales is None:
        n_scales = K // p["group_size"] * N
    sbytes = 2 if p["scale_dtype"] == "float16" else 4
    zbytes = 0 if p["symmetric"] else 1
    return 8.0 * (code_bytes + n_scales * (sbytes + zbytes)) / (K * N)


__all__ = ["FORMATS", "Format", "QuantizedWeight", "get_format", "quantize_weight",
           "dequantize_weight", "storage_bits_per_weight", "floats", "ggml", "integer", "mx",
           "mx_paper", "packing"]
