"""8-bit weights that cannot saturate oneDNN's int8 kernel on CPUs without VNNI (qparams.PAIR_LIMIT)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT

from tfquant.qparams import PAIR_LIMIT, fit_pairs, pair_magnitudes, pair_safe_max_abs, quantize_weight

# Runs the real kernel (tfquant.lower's node) on u8 activations at the top of their range; prints
# {case: [kernel result, exact integer result]} for one output column.
KERNEL_PROBE = r'''
import json, sys
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import graph_pb2
from tfquant.graph import DType, Graph, make_const, make_node
from tfquant.lower import MKL_LABEL, _kernel_node

def kernel(w_int8, x):
    g = Graph(graph_pb2.GraphDef())
    g.add(make_node("Placeholder", "x", attrs={"dtype": DType("float")}))
    g.add(make_const("lo", np.float32(0.0)))
    g.add(make_const("hi", np.float32(1.0)))
    g.add(make_node("_MklQuantizeV2", "q", ["x", "lo", "hi"], {
        "T": DType("quint8"), "mode": "MIN_FIRST", "round_mode": "HALF_AWAY_FROM_ZERO", "narrow_range": False,
        "axis": -1, "ensure_minimum_range": 0.01, "_kernel": MKL_LABEL}))
    w = make_const("w", w_int8)
    w.attr["dtype"].type = w.attr["value"].tensor.dtype = DType("qint8").enum
    g.add(w)
    g.add(_kernel_node(g, "mm", "mm", "q", "w", np.zeros(w_int8.shape[1], np.int32), np.float32(127.0), "MIN_FIRST"))
    with tf.compat.v1.Session(graph=tf.Graph()) as s:
        tf.import_graph_def(g.to_graph_def(), name="")
        return s.run("mm:0", {"x:0": x})  # = sum_k u8[k] * w[k] / 255 (range [0, 1], unit weight scale)

cases = json.loads(sys.argv[1])
out = {}
for name, column in cases.items():
    w = np.array(column, np.int8).reshape(-1, 1).repeat(2, axis=1)
    x = np.ones((2, w.shape[0]), np.float32)  # quint8 255 everywhere
    out[name] = [float(kernel(w, x)[0, 0]), float(w[:, 0].astype(np.int64).sum())]
print(json.dumps(out))
'''

CASES = {
    "full range 127, 127": [127, 127] * 32,
    "pair sums 128 (127 + 1)": [127, 1, 1, 127] * 16,
    "pair sums 128 (64 + 64), negative": [-64, -64] * 32,
    "pair sums 129": [65, 64] * 32,
    "seven bits 63, 63": [63, 63] * 32,
}


@pytest.fixture(scope="module")
def without_vnni():
    """The kernel as a CPU without VNNI runs it: oneDNN capped at AVX2 (a no-op on an AVX2-only CPU)."""
    env = dict(os.environ, ONEDNN_MAX_CPU_ISA="AVX2", TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT)
    res = subprocess.run([sys.executable, "-c", KERNEL_PROBE, json.dumps(CASES)], cwd=ROOT, env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_pairs_within_the_limit_are_exact_without_vnni(without_vnni):
    for name in ("pair sums 128 (127 + 1)", "pair sums 128 (64 + 64), negative", "seven bits 63, 63"):
        got, want = without_vnni[name]
        assert abs(got - want) < 1e-3, (name, got, want)
    # and the probe did run the saturating path: full-range pairs, and pairs one over the limit, come out wrong
    for name in ("full range 127, 127", "pair sums 129"):
        got, want = without_vnni[name]
        assert got < want - 10, (name, got, want)


def test_pair_safe_scale_and_codes():
    rs = np.random.RandomState(0)
    w = rs.standard_t(4, size=(97, 40)).astype(np.float32)  # heavy tails, an odd row count
    max_abs = np.abs(w).max(axis=0)
    safe = pair_safe_max_abs(w, max_abs, 127)
    assert np.all(safe >= max_abs) and np.all(safe <= 2 * max_abs * 127 / PAIR_LIMIT + 1e-6)
    codes = fit_pairs(quantize_weight(w, safe, 127), w * (127 / safe))
    assert np.abs(codes).max() <= 127 and pair_magnitudes(codes).max() <= PAIR_LIMIT
    # finer than 7 bits on every column: the pair-safe step is never above max|w| / 64 (< max|w| / 63)
    assert np.all(safe / 127 <= max_abs / 64 + 1e-7)
    # a column whose pairs already fit keeps round-to-nearest's scale
    w_fit = np.zeros((4, 1), np.float32)
    w_fit[:, 0] = [1.0, 0.0, 0.5, 0.4]
    assert pair_safe_max_abs(w_fit, np.abs(w_fit).max(axis=0), 127)[0] == np.float32(1.0)


def test_fit_pairs_moves_only_the_pairs_over_the_limit_one_step_each():
    codes = np.array([[65], [64], [100], [20], [-70], [-59], [3]], np.int8)  # pairs 129, 120, 129; odd last row
    exact = np.array([[64.6], [64.4], [100.0], [20.0], [-69.9], [-59.2], [3.0]])
    got = fit_pairs(codes, exact)
    assert got[:, 0].tolist() == [64, 64, 100, 20, -69, -59, 3]  # the code rounded further from zero moves


@pytest.mark.parametrize("pairs, fits", [("safe", True), ("full", False)])
def test_converted_8bit_weights_keep_their_pairs(convert, pairs, fits):
    import tensorflow as tf

    out, report = convert(f"pairs_{pairs}", weight_bits=8, weight_pairs=pairs)
    assert report["lowered"]["weight_bits"] == 8 and report["lowered"]["weight_pairs"] == pairs
    reader = tf.train.load_checkpoint(os.path.join(out, "model", "variables", "variables"))
    qint8 = [k for k, d in reader.get_variable_to_dtype_map().items() if d == tf.qint8]
    worst = max(int(pair_magnitudes(np.asarray(reader.get_tensor(k)).view(np.int8)).max()) for k in qint8)
    assert (worst <= PAIR_LIMIT) == fits
