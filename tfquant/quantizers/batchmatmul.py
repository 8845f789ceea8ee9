"""BatchMatMul / BatchMatMulV2: quantized when input 1 is a weight (a 2-D weight broadcast over the
activation's batch, e.g. GPT-2's tied lm_head); attention scores and context stay float."""
from __future__ import annotations

from ..graph import is_float
from . import Skip, register
from .matmul import plan_weight_matmul, weight_operand


@register
class BatchMatMulV2Quantizer:
    op_type = "BatchMatMulV2"
    reason = "BatchMatMul is excluded (reference: no int8 speed-up for activation x activation)"

    def plan(self, node, graph, policy, ranges):
        skip = lambda why: Skip(node.name, self.op_type, why)  # noqa: E731
        operand = weight_operand(graph, node) if is_float(node) else None
        if operand is None:
            return skip(self.reason)
        if policy.is_excluded(node.name):
            return skip("kept in fp32 by an --exclude pattern")
        if node.attr["adj_x"].b:
            return skip("adj_x=True: the int8 kernel takes the activation untransposed")
        return plan_weight_matmul(node, self.op_type, operand, policy, ranges)


@register
class BatchMatMulQuantizer(BatchMatMulV2Quantizer):
    op_type = "BatchMatMul"
