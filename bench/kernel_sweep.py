"""Kernel-level sweep: the int8 MatMul tfquant.lower writes vs fp32 MatMul, at GPT-J (n_embd 1024) shapes.

Each shape is one QDQ MatMul (quint8 MIN_FIRST activation, qint8 SCALED weight: the pattern tfquant.rewrite
inserts) lowered by ``tfquant.lower.lower_to_int8`` itself, so what is timed is what the lowering writes today:
the qint8 weight variable read straight into ``_MklQuantizedMatMulWithBiasAndDequantize`` (7-bit weights), plus
the per-channel rescale ``Mul`` with --per_channel (the default recipe's choice for real weights; random weights,
whose columns all have about the same range, get per-tensor kernels).  Timed round robin against ``tf.matmul``
on the fp32 weight with tfquant.benchmark's timer; the total weights each shape by its count in a 4-layer
GPT-J forward (q/k/v/out, fc_in, fc_out per layer, one lm_head).

    .venv/bin/python bench/kernel_sweep.py [M=128] [--per_channel] [--iters 10]
"""
import argparse
import statistics

import numpy as np

import _bootstrap  # noqa: F401

from tfquant.benchmark import timed_round_robin
from tfquant.graph import DType, Graph, make_const, make_node
from tfquant.qparams import weight_scale_range

LAYERS = 4
SHAPES = [(1024, 1024, 4), (1024, 4096, 1), (4096, 1024, 1), (1024, 50400, 1 / LAYERS)]  # (K, N, per layer)


class Timed:
    """A callable in the shape tfquant.benchmark's round-robin timer expects (``forward(ids)``)."""

    def __init__(self, fn):
        self.forward = fn


def qdq_matmul_graph(a: np.ndarray, w: np.ndarray, per_channel: bool) -> Graph:
    """``x @ W`` as tfquant.rewrite leaves it for the lowering: ``Dequantize(QuantizeV2(x)) @
    Dequantize(QuantizeV2(W))``, with W read from the variable placeholder ``w``."""
    import tensorflow as tf

    g = Graph(tf.compat.v1.GraphDef())
    g.add(make_node("Placeholder", "x", attrs={"dtype": DType("float")}))
    g.add(make_const("x_min", np.float32(a.min())))
    g.add(make_const("x_max", np.float32(a.max())))
    g.add(make_node("QuantizeV2", "x_q", ["x", "x_min", "x_max"], _quantize_attrs("quint8", "MIN_FIRST", -1)))
    g.add(make_node("Dequantize", "x_dq", ["x_q", "x_q:1", "x_q:2"], _dequantize_attrs("quint8", "MIN_FIRST", -1)))
    g.add(make_node("Placeholder", "w", attrs={"dtype": DType("resource")}))
    g.add(make_node("ReadVariableOp", "w_read", ["w"], {"dtype": DType("float")}))
    shape = g.add(make_node("EnsureShape", "w_shape", ["w_read"], {"T": DType("float")}))
    shape.attr["shape"].shape.CopyFrom(tf.TensorShape(w.shape).as_proto())  # QuantizeV2 with an axis needs the rank
    lo, hi = weight_scale_range(w, per_channel)
    axis = 1 if per_channel else -1
    g.add(make_const("w_min", lo))
    g.add(make_const("w_max", hi))
    g.add(make_node("QuantizeV2", "w_q", ["w_shape", "w_min", "w_max"], _quantize_attrs("qint8", "SCALED", axis)))
    g.add(make_node("Dequantize", "w_dq", ["w_q", "w_q:1", "w_q:2"], _dequantize_attrs("qint8", "SCALED", axis)))
    g.add(make_node("MatMul", "y", ["x_dq", "w_dq"], {"T": DType("float"), "transpose_a": False, "transpose_b": False}))
    return g


def build(a: np.ndarray, w: np.ndarray, per_channel: bool):
    """(int8 forward, fp32 forward) of ``x @ w`` for activations shaped like ``a``; the int8 one is checked
    against fp32 on ``a`` first, so a graph that does not compute x @ w is never timed."""
    import tensorflow as tf

    from tfquant.lower import lower_to_int8
    from tfquant.savedmodel import ExtractedModel, build_function

    g = qdq_matmul_graph(a, w, per_channel)
    wf = tf.Variable(w)
    captures = {"w": wf}
    model = ExtractedModel(None, {"x": "x:0"}, {"y": "y:0"}, {"x": tf.TensorSpec(a.shape, tf.float32)}, {}, "",
                           captures)
    summary = lower_to_int8(g, model, captures)
    assert summary["count"] == 1, summary
    present = {n.name for n in g.to_graph_def().node}  # the fp32 weight's placeholder is gone after lowering
    call = build_function(g.to_graph_def(), model, {k: v for k, v in captures.items() if k in present})

    def int8(x):
        return call(x=x)["y"]

    fp32 = tf.function(lambda x: tf.matmul(x, wf))
    ref = fp32(tf.constant(a)).numpy()
    err = float(np.abs(int8(tf.constant(a)).numpy() - ref).max() / np.abs(ref).max())
    assert err < 0.05, f"int8 MatMul is off by {err:.3f} of max |x @ w|"
    return int8, fp32


def _quantize_attrs(dtype: str, mode: str, axis: int) -> dict:
    return {"T": DType(dtype), "mode": mode, "round_mode": "HALF_TO_EVEN" if mode == "SCALED" else "HALF_AWAY_FROM_ZERO",
            "narrow_range": False, "axis": axis, "ensure_minimum_range": 0.01}


def _dequantize_attrs(dtype: str, mode: str, axis: int) -> dict:
    return {"T": DType(dtype), "mode": mode, "narrow_range": False, "axis": axis, "dtype": DType("float")}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("m", nargs="?", type=int, default=128, help="activation rows (tokens), default 128")
    p.add_argument("--per_channel", action="store_true", help="per-channel weight scales (kernel + rescale Mul)")
    p.add_argument("--iters", type=int, default=10)
    args = p.parse_args()

    import tensorflow as tf

    rs = np.random.RandomState(0)
    total = {"int8": 0.0, "fp32": 0.0}
    for k, n, per_layer in SHAPES:
        a = rs.randn(args.m, k).astype(np.float32)
        w = (rs.randn(k, n) * 0.02).astype(np.float32)
        int8, fp32 = build(a, w, args.per_channel)
        t8, t32 = (statistics.median(t) for t in
                   timed_round_robin([Timed(int8), Timed(fp32)], tf.constant(a), warmup=3, iters=args.iters))
        total["int8"] += t8 * per_layer * LAYERS
        total["fp32"] += t32 * per_layer * LAYERS
        print(f"{args.m}x{k}x{n}: int8 {t8:.1f} ms  fp32 {t32:.1f} ms  ratio {t8 / t32:.2f}", flush=True)
    print(f"{LAYERS}-layer total: int8 {total['int8']:.1f} ms  fp32 {total['fp32']:.1f} ms  "
          f"ratio {total['int8'] / total['fp32']:.3f}")


if __name__ == "__main__":
    main()
