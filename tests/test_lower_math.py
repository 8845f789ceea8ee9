"""The int8 kernel's qint32 bias, MIN_FIRST compensation included, as a pure function on known values."""
import numpy as np

from tfquant.lower import qint32_bias


def test_min_first_bias_on_hand_computed_values():
    # activation range [-1, 3] -> Qa = 255 / 4 = 63.75; weight scale Qw = 127 / 2 = 63.5 (per tensor)
    w_int8 = np.array([[10, -20], [30, 40]], np.int8)       # column sums 40, 20
    bias = np.array([0.5, -0.25], np.float32)
    got = qint32_bias(bias, w_int8, 63.5, "MIN_FIRST", -1.0, 3.0)
    # round(Qa*Qw*b + Qa*min_a*colsum) = round(63.75*63.5*0.5 - 63.75*40), round(63.75*63.5*-0.25 - 63.75*20)
    assert got.tolist() == [round(2024.0625 - 2550.0), round(-1012.03125 - 1275.0)] == [-526, -2287]
    assert got.dtype == np.int32


def test_scaled_bias_has_no_compensation_and_clips_to_int32():
    w_int8 = np.array([[1], [2]], np.int8)
    got = qint32_bias(np.array([1.0], np.float32), w_int8, np.array([2.0]), "SCALED", -4.0, 2.0)
    assert got.tolist() == [round(255.0 / 4.0 * 2.0 * 1.0)]  # Qa = 255 / max(|min|, |max|)
    huge = qint32_bias(np.array([1e9], np.float32), w_int8, np.array([1e3]), "SCALED", -1.0, 1.0)
    assert huge.tolist() == [2**31 - 1]


def test_bias_makes_the_integer_product_equal_the_float_one():
    """What the kernel computes, sum_k Qa_int(a)[k] * W_int8[k] + bias_q, divided by Qa*Qw, must equal
    a @ (W_int8 / Qw) + b up to the activation's rounding: that is why the compensation is there."""
    rs = np.random.RandomState(0)
    a = rs.uniform(-1.5, 2.5, size=(16, 32)).astype(np.float32)
    w = rs.normal(size=(32, 8)).astype(np.float32)
    b = rs.normal(size=8).astype(np.float32)
    a_min, a_max = float(a.min()), float(a.max())
    qa = 255.0 / (a_max - a_min)
    qw = 127.0 / np.abs(w).max(axis=0)
    w_int8 = np.clip(np.round(w * qw), -127, 127).astype(np.int8)
    a_u8 = np.clip(np.round((a - a_min) * qa), 0, 255).astype(np.int64)  # quint8 MIN_FIRST
    acc = a_u8 @ w_int8.astype(np.int64) + qint32_bias(b, w_int8, qw, "MIN_FIRST", a_min, a_max)
    got = acc / (qa * qw)
    want = a @ (w_int8 / qw) + b
    step = np.abs(w_int8 / qw).sum(axis=0) / qa  # every activation off by at most half a step
    assert np.all(np.abs(got - want) <= 0.5 * step + 1e-3)
