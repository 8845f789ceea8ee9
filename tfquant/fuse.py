"""Horizontal fusion: MatMuls that read the same quantized input become one MatMul and a SplitV.

In a transformer block q, k and v (GPT-J: also fc_in; Llama: gate and up) read one tensor.
After planning they share the same QuantizeV2 anyway; fusing them into one MatMul with the
weights concatenated along the output axis gives one int8 kernel instead of three or four,
one per-channel rescale, one outlier side path and one per-token rescale -- fewer, larger
ops, which is what a 2-core CPU running a graph of small kernels needs.

It runs on plans, before any QDQ is inserted, and only where every plan in a group agrees on
everything the QDQ depends on (activation range, outlier channels, per-token), so the fused
op computes exactly what the separate ops would.  The fused weight is a ``ConcatV2`` of the
weight reads: the int8 lowering evaluates it once into one new int8 variable.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import replace
from typing import Callable, List

import numpy as np

from . import names
from .graph import DType, Graph, make_const, make_node
from .quantizers import Plan, Skip


def _group_key(plan: Plan):
    # A transposed weight ([out, in]) cannot be concatenated along the output axis with the others.
    if plan.op_type != "MatMul" or plan.weight is None or plan.weight.transposed or len(plan.activations) != 1:
        return None
    a = plan.activations[0]
    return (a.tensor, a.dtype, a.mode, a.min, a.max, plan.outlier_channels, plan.per_token, plan.weight.per_channel)


def fuse_shared_input_matmuls(graph: Graph, decisions: List[object], weight_values: Callable) -> List[object]:
    """Replace each group of >= 2 compatible MatMul plans with one fused plan (graph edited to match)."""
    groups: OrderedDict[tuple, List[Plan]] = OrderedDict()
    for d in decisions:
        key = None if isinstance(d, Skip) else _group_key(d)
        if key is not None:
            groups.setdefault(key, []).append(d)
    fused_of = {}
    for plans in groups.values():
        rows = {np.shape(weight_values(p.weight.tensor))[0] for p in plans}
        if len(plans) < 2 or len(rows) != 1:
            continue
        fused = _fuse(graph, plans, weight_values)
        for p in plans:
            fused_of[p.op] = fused
    out, emitted = [], set()
    for d in decisions:  # the fused plan takes the place of its first member (graph order is kept)
        f = fused_of.get(d.op) if not isinstance(d, Skip) else None
        if f is None:
            out.append(d)
        elif f.op not in emitted:
            emitted.add(f.op)
            out.append(f)
    return out


def _fuse(graph: Graph, plans: List[Plan], weight_values) -> Plan:
    first = plans[0].op
    base = names.fused_matmul(first)
    widths = [int(np.shape(weight_values(p.weight.tensor))[1]) for p in plans]
    graph.add(make_const(f"{base}/weight_axis", np.int32(1)))
    concat = graph.add(make_node("ConcatV2", f"{base}/weight", [p.weight.tensor for p in plans] + [f"{base}/weight_axis"],
                                 {"N": len(plans), "T": DType("float"), "Tidx": DType("int32")}))
    mm = graph.node(first)
    fused = graph.add(make_node("MatMul", base, [mm.input[0], concat.name],
                                {"T": DType("float"), "transpose_a": False, "transpose_b": False}))
    graph.add(make_const(f"{base}/sizes", np.asarray(widths, np.int32)))
    graph.add(make_const(f"{base}/split_axis", np.int32(1)))
    split = graph.add(make_node("SplitV", f"{base}/split", [fused.name, f"{base}/sizes", f"{base}/split_axis"],
                                {"num_split": len(plans), "T": DType("float"), "Tlen": DType("int32")}))
    for i, p in enumerate(plans):
        graph.redirect(p.op, f"{split.name}:{i}", move_control_edges=True)
    graph.remove([p.op for p in plans])
    return replace(plans[0], op=fused.name, weight=replace(plans[0].weight, tensor=concat.name),
                   fused_from=tuple(p.op for p in plans))
