"""tfquant.formats.tfdecode: TF-graph decoders equal formats.dequantize_weight bit for bit."""
import numpy as np
import pytest
import tensorflow as tf

from tfquant.formats import FORMATS, QuantizedWeight, dequantize_weight, quantize_weight, tfdecode

N = 24
IDS = np.array([[N - 1, 0, 5], [5, N - 1, 0]], np.int32)  # repeats and the last column

CASES = [(name, {}) for name in FORMATS] + [
    ("int4_g32", {"symmetric": False}),
    ("int8_per_channel", {"symmetric": False}),
    ("int4_per_channel", {"granularity": "per_tensor"}),
    ("int4_g32", {"group_size": 64}),
    ("int8_per_tensor", {"symmetric": False}),
    ("uint4_g128", {"scale_dtype": "float16"}),
    ("int4_per_channel", {"bits": 3}),
    ("mxfp4", {"rounding": "away"}),
]


def _case_id(case):
    name, opts = case
    return name + "".join(f"-{k}={v}" for k, v in opts.items())


def _k_values(name, opts):
    """K = 64 and 96 where the group / block size divides them (else a multiple of the group)."""
    f = FORMATS[name]
    group = {**f.defaults(), **opts}.get("group_size") if f.family == "int" else None
    if {**f.defaults(), **opts}.get("granularity", "per_group") != "per_group":
        group = None
    group = group or {"ggml": 32, "mx": 32, "mx_paper": 16}.get(f.family)
    ks = [k for k in (64, 96) if group is None or k % group == 0]
    return ks or [group]


def _weight(K, tiny_column, seed):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((K, N)).astype(np.float32) * 0.05
    w[:, 1] = 0.0  # an all-zero column
    w[3, 4] = 7.0e4  # a huge outlier (overflows fp16)
    w[::5, 6] = -0.0  # negative zeros
    w[1, 7], w[2, 7], w[9, 7] = 1e-40, -3e-39, 1.2e-38  # subnormal / near-subnormal entries
    if tiny_column:  # a column of tiny values: subnormal int scales, tiny MX / MX4-9 scales
        w[:, 2] = rng.standard_normal(K).astype(np.float32) * 1e-38
    return w


def _same_bits(got, want):
    got = np.asarray(got)
    assert got.dtype == np.float32 and got.shape == want.shape
    bad = np.nonzero(got.view(np.uint32) != want.view(np.uint32))
    assert bad[0].size == 0, (
        f"{bad[0].size} mismatches, first at {tuple(int(b[0]) for b in bad)}: "
        f"got {got[bad][0]!r} ({got.view(np.uint32)[bad][0]:#x}) want {want[bad][0]!r} "
        f"({want.view(np.uint32)[bad][0]:#x})")


def _check(qw, ids=IDS, traced=True):
    """decode (eager, and traced with decode_columns) == dequantize_weight, bit for bit."""
    meta = tfdecode.meta_of(qw)
    values = tfdecode.to_variables_values(qw)
    tensors = {k: tf.constant(v) for k, v in values.items()}
    with np.errstate(all="ignore"):  # arbitrary bytes overflow / make NaNs in numpy too
        want = dequantize_weight(qw)
    _same_bits(tfdecode.decode(meta, tensors).numpy(), want)
    if not traced:
        return

    @tf.function
    def both(arrays, ids):
        return tfdecode.decode(meta, arrays), tfdecode.decode_columns(meta, arrays, ids)

    full, rows = both(tensors, tf.constant(ids))
    _same_bits(full.numpy(), want)
    _same_bits(rows.numpy(), np.ascontiguousarray(want[:, ids].transpose(1, 2, 0)))


@pytest.mark.parametrize("name", ["int4_g32", "uint4_g128", "q4_1", "mxfp6_e2m3", "mx6", "fp16"])
def test_decode_columns_eager_int64_ids(name):
    with np.errstate(all="ignore"):
        qw = quantize_weight(_weight(128, True, 4), name)
    meta = tfdecode.meta_of(qw)
    tensors = {k: tf.constant(v) for k, v in tfdecode.to_variables_values(qw).items()}
    want = dequantize_weight(qw)
    for ids in (IDS.astype(np.int64), np.int64(N - 1), np.array([2, 2], np.int32)):
        _same_bits(tfdecode.decode_columns(meta, tensors, ids).numpy(),
                   np.ascontiguousarray(np.moveaxis(want[:, ids], 0, -1)))


@pytest.mark.parametrize("tiny", [False, True], ids=["plain", "tiny"])
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_decode_matches_numpy(case, tiny):
    """plain: the float32 fast paths; tiny: a column of ~1e-38 values takes the exact paths."""
    name, opts = case
    ks = _k_values(name, opts)
    K = ks[-1] if tiny else ks[0]
    with np.errstate(all="ignore"):  # ggml: 1/d overflows for the tiny column's blocks
        qw = quantize_weight(_weight(K, tiny, seed=K), name, **opts)
    _check(qw)


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_storage_dtypes_and_bytes(case):
    name, opts = case
    K = _k_values(name, opts)[0]
    qw = quantize_weight(_weight(K, False, 0), name, **opts)
    values = tfdecode.to_variables_values(qw)
    dtypes = tfdecode.stored_dtypes(qw)
    assert list(values) == list(qw.arrays) == list(dtypes)
    assert sum(v.nbytes for v in values.values()) == qw.nbytes
    for k, v in values.items():
        var = tf.Variable(v)
        assert var.dtype == dtypes[k] and var.shape == qw.arrays[k].shape
        assert dtypes[k] not in (tf.uint16, tf.float64)
    if FORMATS[name].family == "float":
        assert dtypes["bits"] == (tf.bfloat16 if name == "bf16" else tf.float16)


def test_decode_from_variables():
    qw = quantize_weight(_weight(64, True, 1), "int4_g32")
    meta = tfdecode.meta_of(qw)
    variables = {k: tf.Variable(v) for k, v in tfdecode.to_variables_values(qw).items()}
    fn = tf.function(lambda: tfdecode.decode(meta, variables))
    _same_bits(fn().numpy(), dequantize_weight(qw))


@pytest.mark.parametrize("name", ["bf16", "fp16"])
def test_every_16_bit_pattern(name):
    bits = np.arange(65536, dtype=np.uint16).reshape(256, 256)  # incl. NaN payloads, sNaN, inf
    qw = QuantizedWeight(name, bits.shape, {"bits": bits}, {})
    _check(qw, ids=np.array([[255, 0], [7, 255]]))
    meta = tfdecode.meta_of(qw)  # uint16 bit patterns are accepted as they are
    _same_bits(tfdecode.decode(meta, {"bits": tf.constant(bits)}).numpy(), dequantize_weight(qw))


BLOCK_FORMATS = [n for n, f in FORMATS.items() if f.family in ("ggml", "mx", "mx_paper")]


@pytest.mark.parametrize("name", BLOCK_FORMATS)
def test_random_block_bytes(name):
    """Arbitrary bytes: every element code, every scale byte (E8M0 0 and NaN 255 included)."""
    K = 96 if FORMATS[name].family == "mx_paper" else 64
    shape = quantize_weight(np.zeros((K, N), np.float32), name).arrays["blocks"].shape
    rng = np.random.default_rng(7)
    blocks = rng.integers(0, 256, shape, dtype=np.uint8)
    if FORMATS[name].family != "ggml":
        blocks[:, :, 0] = rng.choice([0, 1, 2, 5, 9, 120, 127, 200, 254, 255], shape[:2])
    else:  # fp16 d: also subnormal, inf and signalling-NaN halves
        d = rng.choice([0x0001, 0x03FF, 0x8000, 0x3C00, 0x7C00, 0x7C01, 0xFE00, 0x1234], shape[:2])
        blocks[:, :, 0], blocks[:, :, 1] = d & 0xFF, d >> 8
    _check(QuantizedWeight(name, (K, N), {"blocks": blocks}, {}), traced=False)


SCALED = [n for n in BLOCK_FORMATS if FORMATS[n].family != "ggml"]
FAST_CASES = ([(n, "fast") for n in SCALED] + [(n, "one_huge_scale") for n in SCALED]
              + [(n, v) for n in ("mxfp8_e4m3", "mxfp8_e5m2") for v in ("nan_code", "neg_nan_code")])


@pytest.mark.parametrize("name,variant", FAST_CASES)
def test_random_block_bytes_fast_path(name, variant):
    """Every element code (NaN codes aside) under ordinary scales takes the float32 fast path;
    a single huge scale or NaN element code must switch the whole weight to the exact path."""
    K = 96 if FORMATS[name].family == "mx_paper" else 64
    shape = quantize_weight(np.zeros((K, N), np.float32), name).arrays["blocks"].shape
    rng = np.random.default_rng(5)
    blocks = rng.integers(0, 256, shape, dtype=np.uint8)
    blocks[:, :, 0] = rng.integers(100, 150, shape[:2])
    if name in ("mxfp8_e4m3", "mxfp8_e5m2"):
        limit = 0x7E if name == "mxfp8_e4m3" else 0x7C
        elems = blocks[:, :, 1:]
        elems[(elems & 0x7F) > limit] &= 0xF0
        if variant.endswith("nan_code"):
            blocks[3, 1, 5] = 0xFF if variant.startswith("neg") else 0x7F
    if variant == "one_huge_scale":
        blocks[2, 1, 0] = 250
    _check(QuantizedWeight(name, (K, N), {"blocks": blocks}, {}), traced=False)


def test_exact_ldexp_matches_numpy():
    """The integer-only float builder used by the exact paths rounds like numpy (RNE, subnormals)."""
    rng = np.random.default_rng(2)
    bits = rng.integers(0, 2 ** 32, 4000, dtype=np.uint64).astype(np.uint32)
    bits[:500] &= 0x807FFFFF  # subnormal inputs
    bits[500:520] = [0, 0x80000000, 0x7F800000, 0xFF800000, 0x7FC00000] * 4
    v = bits.view(np.float32)
    k = rng.integers(-300, 300, v.shape).astype(np.int32)
    k[:1000] = rng.integers(-30, 5, 1000)  # land in / near the subnormal range
    with np.errstate(all="ignore"):
        want = np.where(np.isfinite(v), np.ldexp(v.astype(np.float64), k).astype(np.float32), v)
    _same_bits(tfdecode._ldexp(tf.constant(v), tf.constant(k)).numpy(), want)


@pytest.mark.parametrize("case", [("int8_per_channel", {}), ("int4_g32", {}),
                                  ("uint4_g128", {}), ("int4_g32_f16", {}),
                                  ("int8_per_tensor", {"symmetric": False})], ids=_case_id)
def test_random_int_codes_and_scales(case):
    """Random codes, zero points and scales over the whole positive float range (subnormals too)."""
    name, opts = case
    K = 128
    qw = quantize_weight(_weight(K, False, 3), name, **opts)
    rng = np.random.default_rng(11)
    arrays = {}
    for k, a in qw.arrays.items():
        if k == "scales":
            if a.dtype == np.float16:
                arrays[k] = rng.integers(1, 0x7C00, a.shape).astype(np.uint16).view(np.float16)
            else:
                raw = rng.integers(1, 0x7F800000, a.shape, dtype=np.uint32)
                raw.flat[::3] &= 0x7FFFFF  # a third subnormal
                arrays[k] = raw.view(np.float32)
        else:
            arrays[k] = rng.integers(0, 256, a.shape).astype(a.dtype)
    _check(QuantizedWeight(qw.format, qw.shape, arrays, qw.params), traced=False)


def test_wrong_dtype_is_rejected():
    qw = quantize_weight(_weight(64, False, 0), "int8_per_channel")
    meta = tfdecode.meta_of(qw)
    arrays = {"codes": tf.constant(qw.arrays["codes"].astype(np.int32)),
              "scales": tf.constant(qw.arrays["scales"])}
    with pytest.raises(TypeError, match="codes"):
        tfdecode.decode(meta, arrays)


def test_meta_is_hashable_python():
    qw = quantize_weight(_weight(64, False, 0), "int4_g32_f16")
    meta = tfdecode.meta_of(qw)
    assert hash(meta) == hash(tfdecode.meta_of(qw))
    assert meta.shape == (64, N) and meta.param("group_size") == 32
