"""Merge what is computed twice: equal shape tensors, then identical pure ops (see ``shapes.py``).

    share_shape_arithmetic(graph, captures)   # step 2: integer tensors of equal symbolic value -> one
    merge_common_subexpressions(graph, captures)  # step 3: same op, attrs, inputs -> one node

Both only ever make a node read a tensor of equal value, so the graph computes the same outputs bit
for bit.  The report says how many nodes each step removed.
"""
from __future__ import annotations

from typing import Dict, Iterable

import numpy as np

from .graph import Graph, parse_input, tensor_name
from .shapes import INT_TYPES, PURE, SHAPE_ARITHMETIC, ShapeInference, out_dtype

LOOP_OPS = {"Enter", "Exit", "NextIteration", "LoopCond", "RefEnter", "RefExit", "RefNextIteration"}


def _int_dtype(node):
    dtype = out_dtype(node)
    return dtype if dtype in INT_TYPES else None


def resource_shapes(captures: Dict[str, object]) -> Dict[str, tuple]:
    out = {}
    for name, obj in captures.items():
        shape = getattr(obj, "shape", None)
        if shape is not None and shape.rank is not None and all(d is not None for d in shape):
            out[name] = tuple(int(d) for d in shape)
    return out


def _rewire(graph: Graph, replace: Dict[str, str]) -> None:
    """Every data input reading a key of ``replace`` reads its value instead."""
    for node in graph.nodes.values():
        for i, inp in enumerate(node.input):
            if inp.startswith("^"):
                continue  # the replaced tensor's node stays (prune drops it if nothing else reads it)
            key = tensor_name(*parse_input(inp))
            if key in replace:
                node.input[i] = replace[key]


def share_shape_arithmetic(graph: Graph, captures: Dict[str, object]) -> int:
    """Integer shape tensors with the same symbolic value read the first of them; returns how many moved."""
    inference = ShapeInference(graph, resource_shapes(captures))
    first: Dict[tuple, str] = {}
    replace: Dict[str, str] = {}
    for name in inference.order:
        node = graph.nodes[name]
        if node.op not in SHAPE_ARITHMETIC or name in inference.tainted:
            continue
        dtype = _int_dtype(node)
        fact = inference.fact(name)
        if dtype is None or fact is None or fact.value is None or fact.shape is None:
            continue
        key = (dtype, fact.scalar, fact.value)
        if key in first:
            replace[name] = first[key]
        else:
            first[key] = name
    _rewire(graph, replace)
    return len(replace)


def _same_constant_captures(graph: Graph, captures: Dict[str, object]) -> Dict[str, str]:
    """Captured constant tensors (not variables) of equal dtype, shape and bytes -> the first placeholder."""
    import tensorflow as tf

    first, replace = {}, {}
    for name in sorted(captures):
        obj = captures[name]
        if isinstance(obj, tf.Variable) or name not in graph.nodes or obj.dtype == tf.resource:
            continue
        value = np.asarray(obj.numpy())
        key = (value.dtype.str, value.shape, value.tobytes())
        if key in first:
            replace[name] = first[key]
        else:
            first[key] = name
    return replace


def _key(node) -> tuple:
    attrs = tuple((k, node.attr[k].SerializeToString(deterministic=True)) for k in sorted(node.attr))
    return (node.op, node.device, tuple(node.input), attrs)


def merge_common_subexpressions(graph: Graph, captures: Dict[str, object], protected: Iterable[str] = ()) -> int:
    """Pure ops with the same op, attributes and inputs become one (in topological order, so chains fold);
    returns how many nodes were removed."""
    protected = set(protected)
    alias = {}  # removed node -> the node that computes the same
    for dup, keep in _same_constant_captures(graph, captures).items():
        if dup not in protected:
            alias[dup] = keep
    seen: Dict[tuple, str] = {}
    for name in graph.topological_order():
        node = graph.nodes[name]
        for i, inp in enumerate(node.input):
            src, idx = parse_input(inp)
            if src in alias:
                node.input[i] = "^" + alias[src] if idx < 0 else tensor_name(alias[src], idx)
        if node.op not in PURE or name in alias:
            continue
        key = _key(node)
        if key in seen and name not in protected:
            alias[name] = seen[key]
        else:
            seen.setdefault(key, name)
    graph.remove(alias)
    for name in alias:
        captures.pop(name, None)
    return len(alias)


def share_and_merge(graph: Graph, captures: Dict[str, object], protected: Iterable[str]) -> dict:
    """Steps 2 and 3 with node counts, for the report.  A graph with a v1 while loop (its back edge is a
    cycle in the GraphDef) is left as it is."""
    before = len(graph.nodes)
    loops = sorted({n.op for n in graph.nodes.values()} & LOOP_OPS)
    if loops:
        return {"skipped": f"the graph has a while loop ({', '.join(loops)})", "nodes_before": before}
    moved = share_shape_arithmetic(graph, captures)
    merged = merge_common_subexpressions(graph, captures, protected)
    return {"shape_tensors_shared": moved, "nodes_merged": merged, "nodes_before": before,
            "nodes_after": len(graph.nodes)}
