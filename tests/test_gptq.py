"""GPTQ weight rounding: the numerics on constructed problems, and the conversion that uses it."""
import json
import os

import numpy as np
import pytest
from conftest import ROOT, run_logits

from tfquant.gptq import GptqSolver, gptq_quantize, round_nearest, within_budget

LEVELS = 63


def _problem(seed=0, k=96, n=40, tokens=1024):
    """Correlated inputs with one loud channel (as real hidden states have), a random weight."""
    rs = np.random.RandomState(seed)
    mix = rs.randn(k, k) * 0.3 + np.eye(k)
    x = rs.randn(tokens, k) @ mix
    x[:, 3] *= 20.0
    w = rs.randn(k, n).astype(np.float32)
    return x, w, np.abs(w).max(axis=0)


def _output_error(x, w, codes, max_abs):
    return float(np.linalg.norm(x @ (w - codes * (max_abs / LEVELS))) ** 2)


def test_uncorrelated_inputs_give_round_to_nearest_exactly():
    _, w, max_abs = _problem()
    h = np.diag(np.random.RandomState(1).rand(w.shape[0]) + 0.1)  # no coupling: nothing to compensate
    codes = gptq_quantize(w, h, max_abs, LEVELS)
    assert np.array_equal(codes, round_nearest(w, max_abs / LEVELS, LEVELS).astype(np.int8))


def test_gptq_beats_nearest_on_held_out_inputs_of_the_same_distribution():
    x, w, max_abs = _problem(seed=0)
    held_out, _, _ = _problem(seed=0, tokens=4096)  # same mix, other tokens
    held_out = held_out[1024:]
    gptq = gptq_quantize(w, x.T @ x, max_abs, LEVELS)
    nearest = round_nearest(w, max_abs / LEVELS, LEVELS)
    assert gptq.dtype == np.int8 and np.abs(gptq).max() <= LEVELS
    assert _output_error(held_out, w, gptq, max_abs) < 0.5 * _output_error(held_out, w, nearest, max_abs)
    # per tensor: one scale for every column
    scalar = np.float32(np.abs(w).max())
    g1 = gptq_quantize(w, x.T @ x, scalar, LEVELS)
    assert _output_error(held_out, w, g1, scalar) < _output_error(held_out, w, round_nearest(w, scalar / LEVELS,
                                                                                            LEVELS), scalar)


def test_exact_rows_are_zero_and_dead_rows_round_to_nearest():
    x, w, max_abs = _problem()
    x[:, 7] = 0.0  # a channel that never fires
    h = x.T @ x
    codes = GptqSolver(h, exact_rows=[3, 11]).quantize(w, max_abs, LEVELS)
    assert not codes[[3, 11]].any()
    assert np.array_equal(codes[7], round_nearest(w[7], max_abs / LEVELS, LEVELS).astype(np.int8))
    # leaving rows 3 and 11 out is the same problem as removing them (they absorb nothing)
    keep = [i for i in range(w.shape[0]) if i not in (3, 11)]
    alone = GptqSolver(h[np.ix_(keep, keep)]).quantize(w[keep], max_abs, LEVELS)
    assert np.abs(alone.astype(int) - codes[keep].astype(int)).max() <= 1  # float rounding at most


def test_moment_budget_takes_narrowest_first_deterministically():
    widths = {"b": 1000, "a": 1000, "wide": 16384, "c": 10}
    assert within_budget(widths, budget=10 * 10 * 8 + 2 * 1000 * 1000 * 8) == {"a", "b", "c"}
    assert within_budget(widths, budget=10 * 10 * 8 + 1000 * 1000 * 8) == {"a", "c"}


@pytest.fixture(scope="module")
def gptq_pair(convert):
    near = convert("gptq_off")
    gptq = convert("gptq_on", weight_rounding="gptq")
    return near, gptq


def test_conversion_rounds_every_weight_with_gptq_and_agrees_with_fp32(tiny_gptj, gptq_pair, random_batch):
    (near_dir, near_rep), (gptq_dir, rep) = gptq_pair
    rounding = rep["lowered"]["weight_rounding"]
    assert rounding["method"] == "gptq" and rounding["gptq_ops"] == rep["lowered"]["count"] > 0
    assert near_rep["lowered"]["weight_rounding"] == {"method": "nearest"}
    ref = run_logits(tiny_gptj, random_batch)
    got = run_logits(os.path.join(gptq_dir, "model"), random_batch)
    assert (ref.argmax(-1) == got.argmax(-1)).mean() >= 0.9
    # the same graph (only the integers, and the bias compensation that sums them, differ)
    assert rep["op_histogram"]["after"] == near_rep["op_histogram"]["after"]
    with open(os.path.join(gptq_dir, "report.json")) as f:
        assert json.load(f)["recipe"]["weight_rounding"] == "gptq"


def test_gptq_weights_differ_from_nearest(gptq_pair):
    import tensorflow as tf

    (near_dir, _), (gptq_dir, _) = gptq_pair
    def stored(path):
        reader = tf.train.load_checkpoint(os.path.join(path, "model", "variables", "variables"))
        qint8 = [k for k, d in reader.get_variable_to_dtype_map().items() if d == tf.qint8]
        return {k: np.asarray(reader.get_tensor(k)).view(np.int8) for k in qint8}

    near, gptq = stored(near_dir), stored(gptq_dir)
    assert near and sorted(near) == sorted(gptq)
    assert any(not np.array_equal(near[k], gptq[k]) for k in near)


@pytest.mark.parametrize("flags, message", [
    (["--weight_rounding", "gptq", "--activations", "dynamic"], "needs --activations int8"),
    (["--weight_rounding", "gptq", "--format", "qdq"], "QDQ graph"),
    (["--weight_rounding", "gptq", "--smooth_alpha", "0.5"], "--smooth_alpha"),
])
def test_gptq_bad_combinations_are_one_line_exit_2(tmp_path, flags, message):
    import subprocess
    import sys

    out = tmp_path / "out"
    res = subprocess.run([sys.executable, "-m", "tfquant.quantize", "--output_dir", str(out), *flags],
                         cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 2 and message in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert not out.exists()


def test_decode_signature_reads_the_same_gptq_weights(tmp_path):
    """The decode signature takes the prefill's second moments: same integers, so the variables stay shared."""
    from tfquant.convert import ConvertSavedModel
    from tfquant.models import prepare_from_config

    fp32, out = str(tmp_path / "fp32"), str(tmp_path / "int8")
    prepare_from_config(os.path.join(ROOT, "configs", "gptj-tiny.yaml"), fp32, cache=True)
    rep = ConvertSavedModel(fp32, out, calib_samples=4, seq_len=32, progress=False, weight_rounding="gptq")
    decode = rep["other_signatures"]["decode"]
    assert decode["lowered"] == rep["lowered"]["count"] > 0
    assert rep["size_bytes"]["output"] < 0.35 * rep["size_bytes"]["input"]
