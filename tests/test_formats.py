"""Known-answer tests for tfquant.formats (pure numpy; the whole file runs in seconds)."""
import subprocess
import sys

import numpy as np
import pytest

import tfquant.formats as F
from tfquant.formats import floats, ggml, integer, mx, mx_paper, packing

f32 = np.float32


def bits32(x):
    """Bit patterns, so that -0.0 vs +0.0 and NaN payloads count as differences."""
    return np.ascontiguousarray(np.asarray(x, dtype=np.float32)).view(np.uint32)


# --------------------------------------------------------------------------- packing


def test_pack_int4_known_bytes_and_signed_nibbles():
    # element 2i in the low nibble, 2i+1 in the high nibble; odd length pads a zero nibble
    assert packing.pack_int4(np.array([1, 2, 3], np.uint8)).tolist() == [0x21, 0x03]
    assert packing.pack_int4(np.array([-1, 7, -8], np.int8)).tolist() == [0x7F, 0x08]
    assert packing.unpack_int4(np.array([0x7F, 0x08], np.uint8), 3, signed=True).tolist() == [-1, 7, -8]
    assert packing.unpack_int4(np.array([0x7F, 0x08], np.uint8), 3).tolist() == [15, 7, 8]


def test_pack_6bit_is_a_little_endian_24bit_word():
    c = [1, 2, 3, 63]
    word = c[0] | c[1] << 6 | c[2] << 12 | c[3] << 18
    assert packing.pack_6bit(np.array(c, np.uint8)).tolist() == list(word.to_bytes(3, "little"))
    # 5 codes -> 30 bits -> 4 bytes, the last two bits zero
    assert packing.pack_6bit(np.full(5, 63, np.uint8)).tolist() == [255, 255, 255, 0x3F]


@pytest.mark.parametrize("width", range(1, 9))
@pytest.mark.parametrize("n", [1, 2, 3, 5, 7, 8, 31, 32, 33])
def test_pack_bits_round_trip_including_odd_lengths(width, n):
    rng = np.random.default_rng(width * 100 + n)
    codes = rng.integers(0, 2 ** width, size=(3, n)).astype(np.uint8)
    packed = packing.pack_bits(codes, width)
    assert packed.shape == (3, packing.packed_size(n, width)) == (3, (n * width + 7) // 8)
    assert np.array_equal(packing.unpack_bits(packed, width, n), codes)


def test_named_packers_round_trip_and_reject_out_of_range():
    rng = np.random.default_rng(0)
    for n in (1, 2, 7, 64):
        s4 = rng.integers(-8, 8, n).astype(np.int8)
        assert np.array_equal(packing.unpack_int4(packing.pack_int4(s4), n, signed=True), s4)
        c6 = rng.integers(0, 64, n).astype(np.uint8)
        assert np.array_equal(packing.unpack_6bit(packing.pack_6bit(c6), n), c6)
    with pytest.raises(ValueError):
        packing.pack_int4(np.array([16], np.int32))
    with pytest.raises(ValueError):
        packing.pack_int4(np.array([-9], np.int32))
    with pytest.raises(ValueError):
        packing.unpack_6bit(np.zeros(2, np.uint8), 4)  # 4 codes need 3 bytes


# --------------------------------------------------------------------------- floats


def test_bfloat16_round_to_nearest_even_known_bits():
    u = np.array([0x3F800000,  # 1.0
                  0x3F808000,  # 1 + 2^-8: tie, 0x3F80 is even -> stays
                  0x3F818000,  # tie, 0x3F81 odd -> rounds up to 0x3F82
                  0x3F808001,  # just above the tie -> up
                  0x3F807FFF,  # just below -> down
                  0x80000000,  # -0.0
                  0x7F800000,  # inf
                  0x7F7FFFFF,  # float32 max -> rounds to inf
                  0x7F7F7FFF,  # below the halfway point -> bf16 max
                  0xC0490FDB], np.uint32)  # -pi
    want = [0x3F80, 0x3F80, 0x3F82, 0x3F81, 0x3F80, 0x8000, 0x7F80, 0x7F80, 0x7F7F, 0xC049]
    assert floats.to_bfloat16_bits(u.view(np.float32)).tolist() == want


def test_bfloat16_keeps_nan_even_when_payload_is_in_dropped_bits():
    nan_low = np.array([0x7F800001, 0xFF800001, 0x7FC00000], np.uint32).view(np.float32)
    b = floats.to_bfloat16_bits(nan_low)
    assert np.all(np.isnan(floats.from_bfloat16_bits(b)))
    assert (b >> 15).tolist() == [0, 1, 0]  # sign kept


def test_bfloat16_matches_ml_dtypes_and_gguf():
    rng = np.random.default_rng(3)
    x = (rng.standard_normal(20000) * np.exp(rng.uniform(-30, 30, 20000))).astype(np.float32)
    ours = floats.to_bfloat16_bits(x)
    ml_dtypes = pytest.importorskip("ml_dtypes")
    assert np.array_equal(ours, x.astype(ml_dtypes.bfloat16).view(np.uint16))
    import gguf

    ref = gguf.quants.quantize(x.reshape(-1, 32), gguf.GGMLQuantizationType.BF16).view(np.uint16)
    assert np.array_equal(ours, ref.reshape(-1))
    assert np.array_equal(floats.from_bfloat16_bits(ours), x.astype(ml_dtypes.bfloat16).astype(np.float32))


def test_float16_overflows_to_inf_above_65504_unless_saturating():
    x = np.array([65504, 65519, 65520, -70000, 1e30, 2.0 ** -24, 2.0 ** -25, 3 * 2.0 ** -25], np.float32)
    h = floats.to_float16(x)
    assert h[:2].tolist() == [65504, 65504]  # (65504, 65520) rounds down to the max
    assert h[2] == np.inf and h[3] == -np.inf and h[4] == np.inf
    assert floats.to_float16_bits(x[5:]).tolist() == [0x0001, 0x0000, 0x0002]  # subnormals, RNE
    sat = floats.to_float16(x, saturate=True)
    assert sat[:5].tolist() == [65504, 65504, 65504, -65504, 65504]
    assert np.isinf(floats.to_float16(np.array([np.inf], np.float32), saturate=True)[0])


# --------------------------------------------------------------------------- integer


def test_symmetric_per_tensor_known_codes_ties_to_even():
    # amax = 31.75 = 127 * 0.25, so s = 0.25 exactly and x / s is exact
    w = np.array([[31.75, -0.125], [0.375, 0.625], [-31.75, 0.0]], np.float32)
    q = integer.quantize_int(w, 8, "per_tensor")
    assert q.scales.shape == (1, 1) and q.scales[0, 0] == 0.25
    assert q.codes.dtype == np.int8
    assert q.codes.tolist() == [[127, 0], [2, 2], [-127, 0]]  # -0.5 -> 0, 1.5 -> 2, 2.5 -> 2
    assert integer.dequantize_int(q).tolist() == [[31.75, 0], [0.5, 0.5], [-31.75, 0]]


def test_symmetric_narrow_range_never_uses_minus_2_pow_b_minus_1():
    w = np.array([[-1.0, 1.0], [-1.0, 0.2]], np.float32)
    for bits, qmax in ((8, 127), (4, 7), (2, 1)):
        q = integer.quantize_int(w, bits, "per_tensor")
        assert q.codes.min() == -qmax and q.codes.max() == qmax


def test_int4_per_channel_scales_per_output_column():
    # column 0: amax 3.5 -> s = 0.5; column 1: amax 14 -> s = 2
    w = np.array([[3.5, -14.0], [1.25, 3.0], [-0.75, 5.0]], np.float32)
    q = integer.quantize_int(w, 4, "per_channel")
    assert q.scales.shape == (1, 2) and q.scales.tolist() == [[0.5, 2.0]]
    assert q.codes.tolist() == [[7, -7], [2, 2], [-2, 2]]  # 2.5 -> 2, 1.5 -> 2, -1.5 -> -2
    assert integer.dequantize_int(q).tolist() == [[3.5, -14], [1, 4], [-1, 4]]


def test_per_group_runs_along_k_within_each_column():
    # K = 4, G = 2: rows {0, 1} and {2, 3} of each column share a scale
    w = np.array([[7.0, 0.875], [1.0, -0.875], [-70.0, 7.0], [10.0, 3.0]], np.float32)
    q = integer.quantize_int(w, 4, "per_group", group_size=2)
    assert q.scales.shape == (2, 2)
    assert q.scales.tolist() == [[1.0, 0.125], [10.0, 1.0]]
    assert q.codes.tolist() == [[7, 7], [1, -7], [-7, 7], [1, 3]]


def test_group_size_that_does_not_divide_k_names_k_and_g():
    with pytest.raises(ValueError, match=r"G=4.*K=10"):
        integer.quantize_int(np.ones((10, 3), np.float32), 4, "per_group", group_size=4)
    with pytest.raises(ValueError):
        integer.quantize_int(np.ones((8, 3), np.float32), 4, "per_group")  # no group size
    with pytest.raises(ValueError):
        integer.quantize_int(np.ones((8, 3), np.float32), 4, "per_row")


def test_asymmetric_known_codes_zero_point_and_uint8():
    # lo = -1.25, hi = 2.5 -> s = 3.75 / 15 = 0.25, z = 5
    w = np.array([[-1.25], [0.0], [2.5], [0.125], [0.375]], np.float32)
    q = integer.quantize_int(w, 4, "per_tensor", symmetric=False)
    assert q.codes.dtype == np.uint8 and q.zero_points.dtype == np.uint8
    assert q.scales[0, 0] == 0.25 and q.zero_points[0, 0] == 5
    assert q.codes[:, 0].tolist() == [0, 5, 15, 5, 7]  # 0.5 -> 0 and 1.5 -> 2 (ties to even)
    assert integer.dequantize_int(q)[:, 0].tolist() == [-1.25, 0, 2.5, 0, 0.5]


def test_asymmetric_range_is_widened_to_contain_zero():
    # all-positive group: without widening, z would clamp to 0 and everything saturate
    w = np.array([[10.0], [10.5], [11.0]], np.float32)
    q = integer.quantize_int(w, 8, "per_channel", symmetric=False)
    assert q.zero_points[0, 0] == 0
    s = q.scales[0, 0]
    assert s == np.float32(np.float32(11.0) / np.float32(255))
    assert np.max(np.abs(integer.dequantize_int(q) - w)) <= s / 2 * 1.0001


def test_zero_width_ranges_get_scale_one_and_exact_zeros():
    w = np.zeros((4, 3), np.float32)
    w[:, 1] = [1.0, -2.0, 0.5, 0.0]
    for sym in (True, False):
        q = integer.quantize_int(w, 8, "per_channel", symmetric=sym)
        assert q.scales[0, 0] == 1.0 and q.scales[0, 2] == 1.0
        out = integer.dequantize_int(q)
        assert np.all(out[:, [0, 2]] == 0)
        assert np.all(q.codes[:, 0] == (0 if sym else q.zero_points[0, 0]))


def test_float16_scales_are_the_scales_the_codes_use():
    rng = np.random.default_rng(5)
    w = rng.standard_normal((64, 8)).astype(np.float32)
    q = integer.quantize_int(w, 4, "per_group", group_size=32, scale_dtype="float16")
    assert np.array_equal(q.scales, q.scales.astype(np.float16).astype(np.float32))
    s = np.repeat(q.scales, 32, axis=0)
    assert np.all(np.abs(integer.dequantize_int(q) - w) <= s / 2 * (1 + 1e-6) + 1e-7)


def test_error_bounded_by_half_a_step():
    rng = np.random.default_rng(6)
    w = rng.standard_normal((128, 16)).astype(np.float32)
    for gran, G in (("per_tensor", None), ("per_channel", None), ("per_group", 32)):
        q = integer.quantize_int(w, 8, gran, group_size=G)
        reps = 128 // q.scales.shape[0]
        s = np.repeat(q.scales, reps, axis=0) if gran != "per_tensor" else q.scales
        assert np.all(np.abs(integer.dequantize_int(q) - w) <= s * 0.5 * (1 + 1e-5))


def test_finer_granularity_has_lower_error():
    rng = np.random.default_rng(7)
    K, N, G = 256, 16, 32
    col = np.logspace(-2, 1, N).astype(np.float32)  # very different output columns
    grp = np.repeat(np.logspace(-2, 0, K // G), G).astype(np.float32)  # and K groups
    w = (rng.standard_normal((K, N)) * col[None, :] * grp[:, None]).astype(np.float32)

    def mse(gran, G=None):
        return float(np.mean((integer.dequantize_int(integer.quantize_int(w, 4, gran, G)) - w) ** 2))

    t, c, g = mse("per_tensor"), mse("per_channel"), mse("per_group", G)
    assert g < c < t
    assert c < t / 2 and g < c / 2  # not a marginal win


# --------------------------------------------------------------------------- ggml


def _ggml_cases():
    rng = np.random.default_rng(11)
    x = rng.standard_normal((256, 32)).astype(np.float32)
    x *= np.exp(rng.uniform(-8, 8, (256, 1))).astype(np.float32)
    special = np.zeros((12, 32), np.float32)
    special[0] = (np.arange(32) - 16) * 0.5  # d = 1 (max -8): every odd element a .5 tie
    special[1] = 1.25  # all equal (positive)
    special[2] = -3.0  # all equal (negative)
    special[3] = rng.uniform(-1, 0.1, 32)  # negative-dominant
    special[3, 7] = -1.5
    special[4] = rng.uniform(-1, 1, 32)
    special[4, [3, 9]] = [2.0, -2.0]  # +a and -a tie for the largest magnitude: the first wins
    special[5] = rng.uniform(-1, 1, 32) * 1e-6  # fp16 d is subnormal
    special[6] = np.arange(32) * 15 / 31  # q4_1 d = 0.5 ... ties near .5
    special[7] = np.linspace(-127, 127, 32).round()  # q8_0 d = 1, integer codes
    special[8] = (np.arange(32) - 16) + 0.5  # q8_0 ties away from zero
    special[8, 0] = 127.0
    special[9, 0] = -8.0  # q4_0 d = 1 and x*id + 8.5 rounds in float32:
    special[9, 1] = np.float32(0.49999997)  # 8.99999997 -> 9.0f -> code 9 (not 8)
    special[10, :] = 0.0  # all zero (+0 only: the -0 cases are tested separately)
    special[11] = rng.uniform(1000, 60000, 32)  # large, fp16 d still finite
    return np.concatenate([x, special])


GGUF_TYPES = {"q4_0": "Q4_0", "q4_1": "Q4_1", "q8_0": "Q8_0"}


@pytest.mark.parametrize("kind", ["q4_0", "q4_1", "q8_0"])
def test_ggml_bytes_and_dequant_bit_exact_with_gguf(kind):
    import gguf

    t = getattr(gguf.GGMLQuantizationType, GGUF_TYPES[kind])
    x = _ggml_cases()
    ours = ggml.QUANTIZE[kind](x)
    assert ours.dtype == np.uint8 and ours.shape == (len(x), ggml.BLOCK_BYTES[kind])
    ref = gguf.quants.quantize(x, t)
    assert np.array_equal(ours, ref)
    assert np.array_equal(bits32(ggml.DEQUANTIZE[kind](ours)), bits32(gguf.quants.dequantize(ref, t)))


def test_ggml_block_sizes_are_4_5_and_5_and_8_5_bits():
    assert {k: 8 * v / 32 for k, v in ggml.BLOCK_BYTES.items()} == {"q4_0": 4.5, "q4_1": 5.0, "q8_0": 8.5}


def test_q4_0_known_block_and_nibble_order():
    x = np.zeros((1, 32), np.float32)
    x[0, :6] = [-8.0, 0.5, -0.5, 2.5, 7.0, 7.6]  # max = -8 -> d = 1, id = 1
    x[0, 16] = 1.0
    b = ggml.quantize_q4_0(x)
    assert b[0, :2].view("<f2")[0] == 1.0
    q = np.concatenate([b[0, 2:] & 0xF, b[0, 2:] >> 4])  # element j low, j + 16 high
    # trunc(x + 8.5) capped at 15: ties go up, 7.6 -> 16 -> 15
    assert q[:6].tolist() == [0, 9, 8, 11, 15, 15]
    assert q[16] == 9 and b[0, 2] == 0 | (9 << 4)
    assert ggml.dequantize_q4_0(b)[0, :6].tolist() == [-8, 1, 0, 3, 7, 7]


def test_q4_0_uses_float32_add_before_truncation():
    x = np.zeros((1, 32), np.float32)
    x[0, 0], x[0, 1] = -8.0, np.float32(0.49999997)  # d = 1
    q1 = ggml.quantize_q4_0(x)[0, 2 + 1] & 0xF  # element 1: low nibble of byte 1
    assert q1 == 9  # 0.49999997f + 8.5f == 9.0f; exact arithmetic would truncate 8.99999997 to 8


def test_q4_0_positive_max_and_all_zero_block_follow_the_c_reference():
    x = np.zeros((2, 32), np.float32)
    x[0, :2] = [8.0, -8.0]  # max = +8 -> d = -1: +8 -> code 0, -8 -> 16.5 -> 15 -> -7 * -1
    assert ggml.dequantize_q4_0(ggml.quantize_q4_0(x))[0, :2].tolist() == [8.0, -7.0]
    x[1, 0] = -0.0  # all zero: C keeps max = 0.0f, so d = 0.0f / -8 = -0.0
    b = ggml.quantize_q4_0(x)
    assert b[1, :2].tolist() == [0x00, 0x80]
    assert np.all(np.signbit(ggml.dequantize_q4_0(b)[1]))  # (8 - 8) * -0.0
    import gguf

    # gguf-py takes the sign of that zero from x[0] instead: +0 bytes (documented difference)
    t = gguf.GGMLQuantizationType.Q4_0
    g = gguf.quants.quantize(x[1:], t)
    assert g[0, :2].tolist() == [0x00, 0x00]
    assert np.array_equal(ggml.dequantize_q4_0(b)[1], gguf.quants.dequantize(g, t)[0])  # -0 == +0


def test_q4_1_known_block_and_fp16_min_in_dequant():
    x = np.linspace(0, 15, 32).astype(np.float32)[None, :]
    x[0, 1] = 2.5  # d = 1, m = 0: trunc(2.5 + 0.5) = 3
    b = ggml.quantize_q4_1(x)
    assert b[0, :2].view("<f2")[0] == 1.0 and b[0, 2:4].view("<f2")[0] == 0.0
    assert (b[0, 4] >> 4) == round(float(x[0, 16]))
    assert (b[0, 5] & 0xF) == 3
    # min 0.1 is not an fp16 value: the quantizer uses 0.1f, dequant uses fp16(0.1)
    y = np.full((1, 32), 0.1, np.float32)
    y[0, 5] = 1.6
    out = ggml.dequantize_q4_1(ggml.quantize_q4_1(y))
    assert out[0, 0] == np.float32(np.float16(0.1)) != np.float32(0.1)


def test_q4_1_zero_min_sign_follows_c_first_occurrence():
    x = np.linspace(0.5, 2, 32).astype(np.float32)[None, :]
    x[0, 3], x[0, 20] = 0.0, -0.0  # C's strict '<' scan keeps the first zero: +0
    assert ggml.quantize_q4_1(x)[0, 2:4].tolist() == [0x00, 0x00]
    x[0, 3], x[0, 20] = -0.0, 0.0
    assert ggml.quantize_q4_1(x)[0, 2:4].tolist() == [0x00, 0x80]


def test_q8_0_known_block_roundf_and_fp16_d():
    x = np.zeros((1, 32), np.float32)
    x[0, :6] = [127.0, 2.5, -2.5, 1.5, np.float32(0.49999997), -0.5]  # d = 1
    b = ggml.quantize_q8_0(x)
    q = b[0, 2:].view(np.int8)
    assert q[:6].tolist() == [127, 3, -3, 2, 0, -1]  # half away from zero; 0.49999997 -> 0
    # amax/127 not an fp16 value: codes from float32 id, dequant with fp16 d
    y = np.linspace(-1, 1, 32).astype(np.float32)[None, :] * np.float32(0.3)
    b = ggml.quantize_q8_0(y)
    d32 = np.float32(np.abs(y).max()) / np.float32(127)
    d16 = np.float32(np.float16(d32))
    assert d16 != d32 and b[0, :2].view("<f2")[0] == np.float16(d32)
    q = b[0, 2:].view(np.int8).astype(np.float32)
    assert np.array_equal(ggml.dequantize_q8_0(b)[0], q * d16)


def test_ggml_rejects_bad_shapes_and_non_finite():
    with pytest.raises(ValueError):
        ggml.quantize_q4_0(np.zeros((2, 16), np.float32))
    with pytest.raises(ValueError):
        ggml.quantize_q8_0(np.full((1, 32), np.nan, np.float32))
    with pytest.raises(ValueError):
        ggml.dequantize_q4_1(np.zeros((1, 18), np.uint8))


# --------------------------------------------------------------------------- OCP MX

E2M1 = [0, 0.5, 1, 1.5, 2, 3, 4, 6]
E2M3 = [0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875,  # subnormal: m/8 * 2^(1-1)
        1, 1.125, 1.25, 1.375, 1.5, 1.625, 1.75, 1.875,
        2, 2.25, 2.5, 2.75, 3, 3.25, 3.5, 3.75,
        4, 4.5, 5, 5.5, 6, 6.5, 7, 7.5]
E3M2 = [0, 0.0625, 0.125, 0.1875,  # subnormal: m/4 * 2^(1-3)
        0.25, 0.3125, 0.375, 0.4375, 0.5, 0.625, 0.75, 0.875, 1, 1.25, 1.5, 1.75,
        2, 2.5, 3, 3.5, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 24, 28]


@pytest.mark.parametrize("name,half", [("e2m1", E2M1), ("e2m3", E2M3), ("e3m2", E3M2)])
def test_full_decode_tables_by_hand(name, half):
    t = mx.element_values(name)
    assert len(t) == 2 * len(half)
    assert t[: len(half)].tolist() == half  # sign bit 0
    assert t[len(half):].tolist() == [-v for v in half]  # sign bit (MSB) 1
    assert np.all(np.signbit(t[len(half):]))  # including -0


def test_fp8_tables_special_codes_and_ml_dtypes():
    e4, e5 = mx.element_values("e4m3"), mx.element_values("e5m2")
    assert e4[0x7E] == 448 and np.isnan(e4[0x7F]) and np.isnan(e4[0xFF]) and e4[0xFE] == -448
    assert e4[0x01] == 2.0 ** -9 and e4[0x08] == 2.0 ** -6 and e4[0x38] == 1.0
    assert np.sum(np.isnan(e4)) == 2 and not np.any(np.isinf(e4))
    assert e5[0x7B] == 57344 and e5[0x7C] == np.inf and e5[0xFC] == -np.inf
    assert np.all(np.isnan(e5[[0x7D, 0x7E, 0x7F, 0xFD, 0xFE, 0xFF]]))
    assert e5[0x01] == 2.0 ** -16 and e5[0x3C] == 1.0
    ml_dtypes = pytest.importorskip("ml_dtypes")
    codes = np.arange(256, dtype=np.uint8)
    np.testing.assert_array_equal(e4, codes.view(ml_dtypes.float8_e4m3fn).astype(np.float64))
    np.testing.assert_array_equal(e5, codes.view(ml_dtypes.float8_e5m2).astype(np.float64))


def test_mxint8_table():
    t = mx.element_values("int8")
    assert t[0x01] == 1 / 64 and t[0x7F] == 127 / 64 and t[0x80] == -2.0 and t[0x81] == -127 / 64


def test_saturation_to_max_normal_never_inf():
    big = np.array([1e6, -1e6, 7.0, 6.5], np.float64)
    assert mx.encode_elements(big, "e2m1").tolist() == [0x7, 0xF, 0x7, 0x7]
    assert mx.encode_elements([500.0, -1e9], "e4m3").tolist() == [0x7E, 0xFE]
    assert mx.encode_elements([1e9, 60000.0], "e5m2").tolist() == [0x7B, 0x7B]
    assert mx.encode_elements([100.0], "e3m2").tolist() == [0x1F]
    assert mx.encode_elements([8.0], "e2m3").tolist() == [0x1F]
    assert mx.encode_elements([3.0, -3.0], "int8").tolist() == [0x7F, 0x81]  # never 0x80


def test_subnormal_encodings_and_ties():
    e = mx.encode_elements
    assert e([0.5, 0.26, 0.25, 0.24], "e2m1").tolist() == [1, 1, 0, 0]  # 0.25 tie -> even (0)
    assert e([0.25], "e2m1", rounding="away").tolist() == [1]
    assert e([2.5, 5.0, 1.75], "e2m1").tolist() == [4, 6, 4]  # ties to even codes: 2, 4, 2
    assert e([2.5, 5.0, 1.75], "e2m1", rounding="away").tolist() == [5, 7, 4]
    assert e([2.0 ** -9, 1.5 * 2.0 ** -9, 2.0 ** -10], "e4m3").tolist() == [0x01, 0x02, 0x00]
    assert e([0.0625, 0.03125, 0.09375], "e3m2").tolist() == [0x01, 0x00, 0x02]
    assert e([0.125, -0.0625], "e2m3").tolist() == [0x01, 0x20]  # -0.0625 ties to -0
    assert e([1.5 / 64, 2.5 / 64, -0.5 / 64], "int8").tolist() == [2, 2, 0]
    assert e([2.5 / 64], "int8", rounding="away").tolist() == [3]


@pytest.mark.parametrize("name", sorted(mx.ELEMENTS))
def test_every_finite_code_round_trips(name):
    t = mx.element_values(name)
    codes = np.flatnonzero(np.isfinite(t)).astype(np.uint8)  # -0 included: the sign bit is kept
    if name == "int8":
        codes = codes[codes != 0x80]  # -2.0 is decodable but saturates to -127/64 on encode
    assert np.array_equal(mx.encode_elements(t[codes], name), codes)


@pytest.mark.parametrize("name", ["e4m3", "e5m2"])
def test_fp8_rounding_matches_ml_dtypes_in_range(name):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    dt = {"e4m3": ml_dtypes.float8_e4m3fn, "e5m2": ml_dtypes.float8_e5m2}[name]
    rng = np.random.default_rng(21)
    v = (rng.standard_normal(50000) * np.exp(rng.uniform(-12, 8, 50000))).astype(np.float32)
    v = np.clip(v, -mx.ELEMENTS[name].max_normal, mx.ELEMENTS[name].max_normal)
    v[:8] = [2.0 ** -10, 1.5 * 2.0 ** -9, 1.0625, 1.1875, -1.0625, 0.0, 448, -448]  # ties, subnormals
    assert np.array_equal(mx.encode_elements(v, name), v.astype(dt).view(np.uint8))


def test_shared_scale_choice_on_constructed_blocks():
    x = np.zeros((6, 32), np.float32)
    x[0, 0] = 1.0  # floor(log2 1) - emax(e2m1)=2 -> -2
    x[1, 0] = 6.0  # 2 - 2 = 0: 6.0 exact
    x[2, :2] = [7.0, 1.0]  # still 0: 7 saturates to 6
    x[3, 0] = np.nextafter(f32(1.0), f32(0))  # just below 1: exponent -1 (exact, not log2f)
    x[5, 0] = 1e-40  # float32 subnormal: clamped to -127
    s, c = mx.quantize_mx(x, "mxfp4")
    assert (s.astype(int) - 127).tolist() == [-2, 0, 0, -3, -127, -127]  # row 4: all zero -> code 0
    out = mx.dequantize_mx(s, c, "mxfp4")
    assert out[0, 0] == 1.0 and out[1, 0] == 6.0 and out[2, :2].tolist() == [6.0, 1.0]
    assert out[3, 0] == 0.75  # 0.99999994 * 8 = 7.99999952 saturates to 6 * 2^-3
    assert np.all(out[4] == 0) and c[4].max() == 0
    # e4m3: 448 sits exactly at scale 1; MXINT8: 1.99 -> 127/64
    assert mx.quantize_mx(np.full((1, 32), 448.0, np.float32), "mxfp8_e4m3")[0][0] == 127
    s, c = mx.quantize_mx(np.full((1, 32), 1.99, np.float32), "mxint8")
    assert s[0] == 127 and c[0, 0] == 0x7F


def test_nan_scale_decodes_nan_block():
    out = mx.dequantize_mx(np.array([255, 127], np.uint8), np.ones((2, 32), np.uint8), "mxfp4")
    assert np.all(np.isnan(out[0])) and np.all(out[1] == 0.5)


@pytest.mark.parametrize("fmt,nbytes", [("mxfp8_e4m3", 33), ("mxfp8_e5m2", 33), ("mxint8", 33),
                                        ("mxfp6_e2m3", 25), ("mxfp6_e3m2", 25), ("mxfp4", 17)])
def test_mx_packing_and_block_round_trip(fmt, nbytes):
    rng = np.random.default_rng(8)
    x = (rng.standard_normal((64, 32)) * np.exp(rng.uniform(-5, 5, (64, 1)))).astype(np.float32)
    s, c = mx.quantize_mx(x, fmt)
    blocks = mx.to_block_bytes(s, c, fmt)
    assert blocks.shape == (64, nbytes) == (64, mx.block_bytes(fmt))
    s2, c2 = mx.from_block_bytes(blocks, fmt)
    assert np.array_equal(s2, s) and np.array_equal(c2, c)
    assert np.array_equal(mx.unpack_mx(mx.pack_mx(c, fmt), fmt), c)
    out = mx.dequantize_mx(s, c, fmt)
    # codes are a fixed point: quantizing the dequantized block gives the same codes
    s3, c3 = mx.quantize_mx(out, fmt)
    assert np.array_equal(c3[s3 == s], c[s3 == s])


def test_mxfp4_nibble_order_and_mxfp6_layout():
    c = np.arange(32, dtype=np.uint8) % 16
    p = mx.pack_mx(c, "mxfp4")
    assert p[0] == 0x10 and p[1] == 0x32  # element 2i low nibble, 2i+1 high nibble
    c6 = np.arange(32, dtype=np.uint8) + 1
    p6 = mx.pack_mx(c6, "mxfp6_e2m3")
    assert int.from_bytes(p6[:3].tobytes(), "little") == 1 | 2 << 6 | 3 << 12 | 4 << 18


def test_mxfp4_matches_gguf_off_ties():
    import gguf

    t = gguf.GGMLQuantizationType.MXFP4
    rng = np.random.default_rng(9)
    x = (rng.standard_normal((500, 32)) * np.exp(rng.uniform(-6, 6, (500, 1)))).astype(np.float32)
    ours = mx.dequantize_mx(*mx.quantize_mx(x, "mxfp4"), "mxfp4")
    assert np.array_equal(ours, gguf.quants.dequantize(gguf.quants.quantize(x, t), t))


def test_exact_floor_log2_and_ggml_mxfp4_tie_rule_differences():
    import gguf

    t = gguf.GGMLQuantizationType.MXFP4
    x = np.zeros((2, 32), np.float32)
    x[0, 0] = 1024 - 2.0 ** -14  # one ulp below 2^10: exact floor(log2) = 9 -> E = 7
    x[1, :2] = [6.0, 1.75]  # scale 1; 1.75 is a tie between 1.5 (code 3) and 2 (code 4)
    s, c = mx.quantize_mx(x, "mxfp4")
    ours = mx.dequantize_mx(s, c, "mxfp4")
    assert s[0] == 127 + 7 and ours[0, 0] == 768.0  # 7.99... saturates to 6 * 2^7
    assert ours[1, 1] == 2.0  # ties to the even code
    ref = gguf.quants.dequantize(gguf.quants.quantize(x, t), t)
    # gguf-py / ggml: float32 log2 rounds to 10.0 -> one exponent higher; ties go to the first
    # table entry (toward zero). Documented in tfquant/formats/mx.py.
    assert ref[0, 0] == 1024.0 and ref[1, 1] == 1.5


def test_microxcaling_style_rounding_is_ties_away():
    x = np.zeros((1, 32), np.float32)
    x[0, :3] = [6.0, 2.5, -5.0]  # scale 1: 2.5 and -5 are ties
    even = mx.dequantize_mx(*mx.quantize_mx(x, "mxfp4"), "mxfp4")[0, :3]
    away = mx.dequantize_mx(*mx.quantize_mx(x, "mxfp4", rounding="away"), "mxfp4")[0, :3]
    assert even.tolist() == [6.0, 2.0, -4.0] and away.tolist() == [6.0, 3.0, -6.0]


# --------------------------------------------------------------------------- MX4 / MX6 / MX9


def test_paper_bits_per_element_and_block_bytes():
    for fmt, m, bpe, nbytes in (("mx4", 2, 4, 8), ("mx6", 4, 6, 12), ("mx9", 7, 9, 18)):
        assert mx_paper.bits_per_element(fmt) == 8 / 16 + 1 / 2 + (1 + m) == bpe
        assert mx_paper.block_bytes(fmt) == nbytes == bpe * 16 / 8


def test_mx6_known_block_micro_exponents():
    x = np.array([[1.0, 0.5,  # pair max exponent 0 = E: tau 0, step 1/8
                   0.3, 0.2,  # below 2^E = 1: tau 1, step 1/16 (the extra bit)
                   0.9, 0.0,  # 0.9 > half the block max 1.2 but < 1: still tau 1
                   0.99, 0.0,  # 0.99 * 16 = 15.84 -> 16 -> clamped to 15
                   -0.6, 1.2,  # exponent 0 = E (E = floor(log2 1.97) = 0): tau 0
                   0.0, 0.0,  # zero pair: tau 1
                   1.97, 0.0625,  # 1.97 * 8 -> 16 -> 15; 0.0625 * 8 = 0.5 tie -> 0
                   0.5, 0.5]], np.float32)
    e, tau, codes = mx_paper.quantize_mx_paper(x, "mx6")
    assert e.tolist() == [127] and tau[0].tolist() == [0, 1, 1, 1, 0, 1, 0, 1]
    out = mx_paper.dequantize_mx_paper(e, tau, codes, "mx6")[0]
    assert out.tolist() == [1.0, 0.5, 0.3125, 0.1875, 0.875, 0.0, 0.9375, 0.0,
                            -0.625, 1.25, 0.0, 0.0, 1.875, 0.0, 0.5, 0.5]
    assert codes[0, 8] == (1 << 4) | 5  # sign-magnitude: -5/8
    # without the micro-exponent pair 1 would get step 1/8: 0.25 and 0.25 (larger error)
    assert abs(out[2] - 0.3) < abs(0.25 - 0.3) and abs(out[3] - 0.2) < abs(0.25 - 0.2)
    away = mx_paper.dequantize_mx_paper(*mx_paper.quantize_mx_paper(x, "mx6", rounding="away"), "mx6")
    assert away[0, 13] == 0.125


def test_paper_block_bytes_layout_and_round_trip():
    x = np.array([[1.0, 0.5, 0.3, 0.2] + [0.0] * 12], np.float32)
    e, tau, codes = mx_paper.quantize_mx_paper(x, "mx9")
    b = mx_paper.to_block_bytes(e, tau, codes, "mx9")
    assert b.shape == (1, 18) and b[0, 0] == 127
    assert b[0, 1] == sum(int(t) << j for j, t in enumerate(tau[0])) == 0b11111110
    assert b[0, 2] == codes[0, 0] == 64  # 1.0 / 2^(0 + 1 - 7) = 64
    rng = np.random.default_rng(10)
    for fmt in ("mx4", "mx6", "mx9"):
        y = (rng.standard_normal((50, 16)) * np.exp(rng.uniform(-10, 10, (50, 1)))).astype(np.float32)
        parts = mx_paper.quantize_mx_paper(y, fmt)
        back = mx_paper.from_block_bytes(mx_paper.to_block_bytes(*parts, fmt), fmt)
        for a, c in zip(parts, back):
            assert np.array_equal(a, c)


def test_paper_error_bound_and_zero_block():
    rng = np.random.default_rng(12)
    x = (rng.standard_normal((200, 16)) * np.exp(rng.uniform(-5, 5, (200, 1)))).astype(np.float32)
    for fmt, m in mx_paper.MANTISSA_BITS.items():
        e, tau, codes = mx_paper.quantize_mx_paper(x, fmt)
        out = mx_paper.dequantize_mx_paper(e, tau, codes, fmt)
        E = e.astype(int)[:, None] - 127
        step = np.ldexp(1.0, np.repeat(E - tau.astype(int), 2, axis=1) + 1 - m)
        err = np.abs(out.astype(np.float64) - x)
        # within half a step, except values clamped to the top magnitude 2^m - 1, off by < 1 step
        clamped = (codes & ((1 << m) - 1)) == 2 ** m - 1
        assert np.all(clamped[err > step / 2])
        assert np.all(err < step)
    e, tau, codes = mx_paper.quantize_mx_paper(np.zeros((1, 16), np.float32), "mx4")
    assert e[0] == 0 and codes.max() == 0


# --------------------------------------------------------------------------- registry / dispatch


@pytest.mark.parametrize("name", sorted(F.FORMATS))
def test_registry_bits_match_stored_bytes(name):
    K, N = 256, 12
    w = np.random.default_rng(13).standard_normal((K, N)).astype(np.float32)
    qw = F.quantize_weight(w, name)
    assert qw.bits_per_weight == F.storage_bits_per_weight(name, K, N)
    f = F.FORMATS[name]
    if f.family != "int" or f.defaults()["granularity"] == "per_group":
        assert qw.bits_per_weight == f.bits_per_weight
    else:
        assert f.bits_per_weight < qw.bits_per_weight < f.bits_per_weight + 1  # scale overhead
    assert len(qw.tobytes()) == qw.nbytes
    out = F.dequantize_weight(qw)
    assert out.shape == (K, N) and out.dtype == np.float32
    assert np.sqrt(np.mean((out - w) ** 2)) < 0.25


def test_registry_values():
    bpw = {k: v.bits_per_weight for k, v in F.FORMATS.items()}
    assert (bpw["q4_0"], bpw["q4_1"], bpw["q8_0"]) == (4.5, 5.0, 8.5)
    assert (bpw["mxfp8_e4m3"], bpw["mxint8"], bpw["mxfp6_e2m3"], bpw["mxfp4"]) == (8.25, 8.25, 6.25, 4.25)
    assert (bpw["mx4"], bpw["mx6"], bpw["mx9"], bpw["bf16"], bpw["fp16"]) == (4, 6, 9, 16, 16)
    assert (bpw["int4_g32"], bpw["int4_g32_f16"], bpw["int8_per_channel"]) == (5.0, 4.5, 8)
    assert all(f.description for f in F.FORMATS.values())


def test_ggml_weight_layout_is_a_gguf_tensor():
    import gguf

    K, N = 96, 5
    w = np.random.default_rng(14).standard_normal((K, N)).astype(np.float32)
    for name, gt in GGUF_TYPES.items():
        qw = F.quantize_weight(w, name)
        assert qw.arrays["blocks"].shape == (N, K // 32, ggml.BLOCK_BYTES[name])
        ref = gguf.quants.quantize(np.ascontiguousarray(w.T), getattr(gguf.GGMLQuantizationType, gt))
        assert np.array_equal(qw.arrays["blocks"].reshape(N, -1), ref)


def test_int4_weight_packing_along_k_and_dequant():
    w = np.array([[7.0, 3.5], [-7.0, 0.0], [3.0, -3.5]], np.float32)  # K = 3 (odd)
    qw = F.quantize_weight(w, "int4_per_channel")
    assert qw.arrays["codes"].shape == (2, 2)  # ceil(3 / 2) x N
    assert qw.arrays["codes"][0, 0] == (7 | ((-7 & 0xF) << 4))  # code[0] low, code[1] high
    np.testing.assert_array_equal(F.dequantize_weight(qw), w)


def test_dispatch_errors_and_options():
    w = np.ones((40, 3), np.float32)
    with pytest.raises(ValueError, match="K=40"):
        F.quantize_weight(w, "q4_0")
    with pytest.raises(ValueError, match="K=40"):
        F.quantize_weight(w, "int4_g32")
    with pytest.raises(ValueError):
        F.quantize_weight(w, "q3_k")
    with pytest.raises(TypeError):
        F.quantize_weight(w, "q4_0", rounding="even")
    qw = F.quantize_weight(np.ones((64, 3), np.float32) * 2.5, "mx6", rounding="away")
    assert qw.params["rounding"] == "away"
    qw = F.quantize_weight(w, "int4_g32", group_size=8)
    assert qw.arrays["scales"].shape == (5, 3)
    qw = F.quantize_weight(np.full((2, 2), 1e5, np.float32), "fp16", saturate=True)
    assert F.dequantize_weight(qw).max() == 65504


def test_package_does_not_import_tensorflow():
    code = "import sys, tfquant.formats; assert 'tensorflow' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
