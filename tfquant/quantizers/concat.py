"""ConcatV2 (float only): QDQ on every data input, under the reference's rules."""
from __future__ import annotations

from ..graph import canonical, is_float
from ..qparams import activation_range
from . import ActivationQ, Plan, Skip, register


@register
class ConcatV2Quantizer:
    op_type = "ConcatV2"

    def plan(self, node, graph, policy, ranges):
        skip = lambda why: Skip(node.name, self.op_type, why)  # noqa: E731
        if not is_float(node):
            return None  # int32 shape arithmetic: not a quantization candidate at all
        if policy.concat_skip_reason:
            return skip(policy.concat_skip_reason)
        users = {u.op for u in graph.consumers().get(node.name, [])}
        if users & {"Cos", "Sin"}:
            # Rotary position angles (position x inv_freq), not activations: quantizing them clips every
            # position past the calibration length and shifts the rest by up to half a step.
            return skip("feeds Cos/Sin (rotary position angles), not an activation")
        if policy.is_excluded(node.name):
            return skip("kept in fp32 by an --exclude pattern")
        n = node.attr["N"].i
        inputs = [canonical(i) for i in node.input[:n]]
        missing = [t for t in inputs if t not in ranges]
        if missing:
            return skip(f"no calibrated range for input {missing[0]} (constant or not observed)")
        rngs = [ranges[t] for t in inputs]
        if policy.concat_needs_nonnegative and any(r.min < 0 for r in rngs):
            return skip("an input has negative values (reference rule: all inputs >= 0; --performance_only relaxes it)")
        mode = policy.activation_mode()
        dtypes = [policy.activation_dtype(r) if mode == "SCALED" else "quint8" for r in rngs]
        if len(set(dtypes)) != 1:
            return skip(f"inputs need different int8 types ({', '.join(dtypes)})")
        acts = []
        for i, (t, r, dt) in enumerate(zip(inputs, rngs, dtypes)):
            lo, hi = activation_range(r.min, r.max, mode, dt)
            acts.append(ActivationQ(i, t, dt, mode, lo, hi))
        return Plan(node.name, self.op_type, activations=acts)
