"""MatMul: QDQ on the activation (input 0) and on the weight (input 1)."""
from __future__ import annotations

import numpy as np

from ..calibrate import is_float
from ..graph import canonical, parse_input
from ..qparams import activation_range
from . import ActivationQ, Plan, Skip, WeightQ, register

WEIGHT_PRODUCERS = ("ReadVariableOp", "Const")


def is_weight(graph, tensor: str) -> bool:
    """A variable read or constant, possibly scaled by a constant (SmoothQuant's s * W, the outlier
    mask): anything ``ExtractedModel.weight_value`` can evaluate without running the model."""
    node = graph.node(parse_input(tensor)[0])
    if node.op in WEIGHT_PRODUCERS:
        return True
    if node.op == "Mul":
        return all(is_weight(graph, i) for i in node.input[:2])
    return False


@register
class MatMulQuantizer:
    op_type = "MatMul"

    def plan(self, node, graph, policy, ranges):
        skip = lambda why: Skip(node.name, self.op_type, why)  # noqa: E731
        if not is_float(node):
            return skip("not a float MatMul")
        if policy.is_excluded(node.name):
            return skip("kept in fp32 by an --exclude pattern")
        if node.attr["transpose_a"].b and not policy.allow_transpose_a:
            return skip("transpose_a=True is only quantized in itex_mode")
        weight = graph.skip_identity(node.input[1])
        if not is_weight(graph, weight):
            return skip("input 1 is not a weight (variable or constant)")
        if node.attr["transpose_b"].b:
            return skip("transpose_b=True weights are not supported yet")
        act = canonical(node.input[0])
        if act not in ranges:
            return skip("no calibrated range for the activation")
        rng = ranges[act]
        outliers, lo, hi = split_outlier_channels(rng, policy.outlier_threshold, policy.max_outlier_fraction)
        per_token = bool(policy.token_outlier_threshold and rng.token_spread
                         and rng.token_spread > policy.token_outlier_threshold)
        if per_token:
            lo, hi = -1.0, 1.0  # every row is divided by its own max|x|
        dtype, mode = "quint8", policy.activation_mode()
        if mode == "SCALED":
            dtype = policy.activation_dtype(rng)
        lo, hi = activation_range(lo, hi, mode, dtype)
        return Plan(
            node.name,
            self.op_type,
            activations=[ActivationQ(0, act, dtype, mode, lo, hi)],
            weight=WeightQ(1, weight, policy.weight_per_channel),
            outlier_channels=outliers,
            per_token=per_token,
        )


def split_outlier_channels(rng, threshold: float, max_fraction: float):
    """Channels whose calibrated |x| exceeds ``threshold`` x the median channel's, largest first,
    at most ``max_fraction`` of the channels.  Returns (channels, min, max of the others).

    Real LLMs put a few "massive activations" in one or two channels (SmolLM2-135M: one
    down_proj input channel reaches 2,867 where the median channel stays within 1.3), and a
    per-tensor int8 range stretched over them rounds every ordinary value to zero.
    """
    if not threshold or rng.channel_min is None:
        return (), rng.min, rng.max
    cmin, cmax = np.asarray(rng.channel_min), np.asarray(rng.channel_max)
    mag = np.maximum(np.abs(cmin), np.abs(cmax))
    median = float(np.median(mag))
    order = np.argsort(-mag, kind="stable")
    limit = max(1, int(len(mag) * max_fraction))
    picked = [int(i) for i in order[:limit] if mag[i] > threshold * max(median, 1e-12)]
    if not picked:
        return (), rng.min, rng.max
    keep = np.ones(len(mag), bool)
    keep[picked] = False
    return tuple(sorted(picked)), float(cmin[keep].min()), float(cmax[keep].max())
