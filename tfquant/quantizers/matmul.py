"""MatMul: QDQ on the activation (input 0) and on the weight (input 1)."""
from __future__ import annotations

from ..calibrate import is_float
from ..graph import canonical, parse_input
from ..qparams import activation_range
from . import ActivationQ, Plan, Skip, WeightQ, register

WEIGHT_PRODUCERS = ("ReadVariableOp", "Const")


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
        if graph.node(parse_input(weight)[0]).op not in WEIGHT_PRODUCERS:
            return skip("input 1 is not a weight (variable or constant)")
        if node.attr["transpose_b"].b:
            return skip("transpose_b=True weights are not supported yet")
        act = canonical(node.input[0])
        if act not in ranges:
            return skip("no calibrated range for the activation")
        rng = ranges[act]
        dtype, mode = "quint8", policy.activation_mode()
        if mode == "SCALED":
            dtype = policy.activation_dtype(rng)
        lo, hi = activation_range(rng.min, rng.max, mode, dtype)
        return Plan(
            node.name,
            self.op_type,
            activations=[ActivationQ(0, act, dtype, mode, lo, hi)],
            weight=WeightQ(1, weight, policy.weight_per_channel),
        )
