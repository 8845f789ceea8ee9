"""Weight MatMuls: QDQ on the activation (input 0) and on the weight (input 1).

A MatMul or BatchMatMul(V2) is a *weight MatMul* when input 1 is a weight: a variable read or
Const, reached through Identity chains and possibly transposed (transpose_b / adj_y or a 2-D
Transpose op) or, for BatchMatMul, given a leading batch axis of 1 by ExpandDims so that it
broadcasts over the activation's batch (GPT-2's lm_head: ``BatchMatMulV2(h, ExpandDims(wte),
adj_y=True)``).  The rewrite turns every weight MatMul into a plain 2-D ``MatMul(x, W)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..graph import canonical, const_value, is_float, parse_input
from ..qparams import activation_range
from . import ActivationQ, Plan, Skip, WeightQ, register

WEIGHT_PRODUCERS = ("ReadVariableOp", "Const")
BATCH_MATMULS = ("BatchMatMul", "BatchMatMulV2")


def is_weight(graph, tensor: str) -> bool:
    """A variable read or constant, possibly scaled by a constant (SmoothQuant's s * W, the outlier
    mask): anything ``ExtractedModel.weight_value`` can evaluate without running the model."""
    node = graph.node(parse_input(tensor)[0])
    if node.op in WEIGHT_PRODUCERS:
        return True
    if node.op == "Mul":
        return all(is_weight(graph, i) for i in node.input[:2])
    return False


@dataclass(frozen=True)
class WeightOperand:
    """Input 1 of a weight MatMul, traced back to the weight as stored."""

    tensor: str         # the weight (Identity chains, Transpose and ExpandDims skipped)
    transposed: bool    # the op multiplies by ``tensor`` transposed
    broadcast: bool     # ExpandDims gave it a leading batch axis of 1 (the op's output rank is then >= 3)


def _const_is(graph, tensor: str, value) -> bool:
    node = graph.node(tensor)
    return node.op == "Const" and np.array_equal(const_value(node), value)


def weight_operand(graph, node) -> Optional[WeightOperand]:
    """The weight behind input 1 of a (Batch)MatMul, or None when input 1 is not a weight."""
    batch = node.op in BATCH_MATMULS
    transposed = node.attr["adj_y" if batch else "transpose_b"].b
    broadcast = False
    tensor = graph.skip_identity(node.input[1])
    while True:
        producer = graph.node(tensor)
        if producer.op == "Transpose" and _const_is(graph, producer.input[1], [1, 0]):
            transposed = not transposed
        elif batch and not broadcast and producer.op == "ExpandDims" and _const_is(graph, producer.input[1], 0):
            broadcast = True
        else:
            break
        tensor = graph.skip_identity(producer.input[0])
    return WeightOperand(tensor, transposed, broadcast) if is_weight(graph, tensor) else None


def weight_matmul_activation(graph, node) -> Optional[str]:
    """The activation tensor a quantized (Batch)MatMul needs a calibrated range for, if any.

    Every float MatMul's input 0 (as calibrated from the start); a BatchMatMul's only when it
    multiplies by a weight (attention's activation x activation products are never quantized).
    """
    if not is_float(node) or (node.op in BATCH_MATMULS and weight_operand(graph, node) is None):
        return None
    return canonical(node.input[0])


def plan_weight_matmul(node, op_type: str, operand: WeightOperand, policy, ranges):
    """The plan of a weight MatMul once the op-specific checks passed: activation and weight QDQ.

    Weight-only (``activations`` none): the weight alone, stored in ``policy.weight_format``.  Dynamic:
    every row scaled to [-1, 1] at run time (the per-token path), so no calibrated range is needed."""
    weight = WeightQ(1, operand.tensor, policy.weight_per_channel, operand.transposed)
    if policy.weight_only:
        return Plan(node.name, op_type, weight=weight)
    act = canonical(node.input[0])
    if policy.activations == "dynamic":
        dtype, mode = "quint8", policy.activation_mode()
        lo, hi = activation_range(-1.0, 1.0, mode, "qint8" if mode == "SCALED" else dtype)
        return Plan(node.name, op_type, activations=[ActivationQ(0, act, "qint8" if mode == "SCALED" else dtype,
                                                                  mode, lo, hi)],
                    weight=weight, per_token=True)
    if act not in ranges:
        return Skip(node.name, op_type, "no calibrated range for the activation")
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
        op_type,
        activations=[ActivationQ(0, act, dtype, mode, lo, hi)],
        weight=weight,
        outlier_channels=outliers,
        per_token=per_token,
    )


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
        operand = weight_operand(graph, node)
        if operand is None:
            return skip("input 1 is not a weight (variable or constant)")
        return plan_weight_matmul(node, self.op_type, operand, policy, ranges)


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
