"""BatchMatMul / BatchMatMulV2 (attention scores and context): left in float, as the reference does."""
from __future__ import annotations

from . import Skip, register


@register
class BatchMatMulV2Quantizer:
    op_type = "BatchMatMulV2"
    reason = "BatchMatMul is excluded (reference: no int8 speed-up for activation x activation)"

    def plan(self, node, graph, policy, ranges):
        return Skip(node.name, self.op_type, self.reason)


@register
class BatchMatMulQuantizer(BatchMatMulV2Quantizer):
    op_type = "BatchMatMul"
