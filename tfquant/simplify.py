"""Simplify: exact fp32 rewrites of slow patterns around the quantized ops (int8 format only).

Once the MatMuls run as int8 kernels, the model's own fp32 glue is a large part of what is left.
The biggest single item in a GPT-J graph is the rotary embedding's ``rotate_every_two``
(HF TFGPTJ): two stride-2 StridedSlices on the last axis, a Neg, a Pack and a shape-computing
Reshape per q and per k in every layer.  Measured on the 4-layer n_embd-1024 GPT-J at 1 x 512
tokens: StridedSlice 30 ms and Pack 8 ms of a 284 ms int8 forward (single inter-op thread).

    rotate_every_two(x) = stack((-x[..., 1::2], x[..., ::2]), -1) reshaped to x's shape
                        = x @ R,   R[2i+1, 2i] = -1,  R[2i, 2i+1] = +1

so the pattern becomes one BatchMatMulV2 with a constant [d, d] signed permutation, which
broadcasts over the leading axes.  Every output element is one product by +-1 plus zeros,
so the result is bit-identical.  ``--no_simplify`` keeps the graph as it was.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from .graph import DType, Graph, const_value, make_const, make_node, parse_input


def _const_ints(graph: Graph, name: str) -> Optional[list]:
    node = graph.nodes.get(parse_input(name)[0])
    if node is None or node.op != "Const":
        return None
    return [int(v) for v in np.ravel(const_value(node))]


def _last_axis_slice(graph: Graph, node) -> Optional[tuple]:
    """(source, start, stop, stride) of a StridedSlice that only cuts the last axis, else None.

    Both encodings TF writes are read: full-rank specs with every leading axis masked whole
    (``x[:, :, :, a:b:s]``) and the ellipsis form (``x[..., a:b:s]``).  An open end is None.
    """
    if node is None or node.op != "StridedSlice" or node.attr["new_axis_mask"].i or node.attr["shrink_axis_mask"].i:
        return None
    begin, end, strides = (_const_ints(graph, i) for i in node.input[1:4])
    if not begin or end is None or strides is None:
        return None
    rank, ellipsis = len(begin), node.attr["ellipsis_mask"].i
    begin_mask, end_mask = node.attr["begin_mask"].i, node.attr["end_mask"].i
    if ellipsis:
        if ellipsis != 1 or rank != 2:
            return None
    else:
        leading = (1 << (rank - 1)) - 1  # every axis but the last is taken whole
        if (begin_mask & leading) != leading or (end_mask & leading) != leading:
            return None
    last = rank - 1
    start = None if begin_mask >> last & 1 else begin[-1]
    stop = None if end_mask >> last & 1 else end[-1]
    return node.input[0], start, stop, strides[-1]


def _static_last_dim(graph: Graph, tensor: str) -> Optional[int]:
    """The last dimension of ``tensor`` where the graph states it: a ``[..., :d]`` slice or a Reshape to [..., d]."""
    node = graph.nodes.get(parse_input(tensor)[0])
    if node is None:
        return None
    if node.op == "StridedSlice":  # x[..., :d]
        cut = _last_axis_slice(graph, node)
        return cut[2] if cut and cut[1] in (None, 0) and cut[2] and cut[2] > 0 and cut[3] == 1 else None
    if node.op == "Reshape":
        shape = graph.nodes.get(parse_input(node.input[1])[0])
        if shape is not None and shape.op == "Pack":
            last = _const_ints(graph, shape.input[-1])
            return last[0] if last and len(last) == 1 and last[0] > 0 else None
        values = _const_ints(graph, node.input[1])
        return values[-1] if values and values[-1] > 0 else None
    return None


def rotate_every_two_matrix(d: int) -> np.ndarray:
    """R with x @ R == stack((-x[..., 1::2], x[..., ::2]), -1).reshape(x.shape)."""
    r = np.zeros((d, d), np.float32)
    for i in range(d // 2):
        r[2 * i + 1, 2 * i] = -1.0
        r[2 * i, 2 * i + 1] = 1.0
    return r


def simplify_rotary(graph: Graph) -> dict:
    """What was replaced, for report.json.  (Llama/Mistral's rotate_half -- two contiguous slices, Neg,
    ConcatV2 -- was tried the same way: exact, but no faster on SmolLM2-135M, so it is left alone.)"""
    return {"rotate_every_two_as_matmul": simplify_rotate_every_two(graph)}


def simplify_rotate_every_two(graph: Graph) -> int:
    """Replace every rotate_every_two subgraph with x @ R; returns how many were replaced."""
    replaced = 0
    for reshape in list(graph.by_op("Reshape")):
        pack = graph.nodes.get(parse_input(reshape.input[0])[0])
        if pack is None or pack.op != "Pack" or pack.attr["N"].i != 2 or pack.attr["T"].type != DType("float").enum:
            continue
        neg = graph.nodes.get(parse_input(pack.input[0])[0])
        if neg is None or neg.op != "Neg":
            continue
        odd = _last_axis_slice(graph, graph.nodes.get(parse_input(neg.input[0])[0]))
        even = _last_axis_slice(graph, graph.nodes.get(parse_input(pack.input[1])[0]))
        if odd is None or even is None or odd[0] != even[0] or odd[1:] != (1, None, 2) \
                or even[1:] not in ((0, None, 2), (None, None, 2)):
            continue
        source = odd[0]
        slice_node = graph.node(parse_input(neg.input[0])[0])
        rank = len(_const_ints(graph, slice_node.input[1]) or [])
        if slice_node.attr["ellipsis_mask"].i or pack.attr["axis"].i not in (-1, rank):
            continue
        d = _static_last_dim(graph, source)
        if d is None or d % 2:
            continue
        # the Reshape's name is kept for its readers; BatchMatMulV2 broadcasts R over the leading axes
        matrix = graph.add(make_const(graph.unique_name(f"{reshape.name}/rotate_every_two_matrix"),
                                      rotate_every_two_matrix(d)))
        name = reshape.name
        graph.remove([name])
        graph.add(make_node("BatchMatMulV2", name, [source, matrix.name],
                            {"T": DType("float"), "adj_x": False, "adj_y": False}))
        replaced += 1
    return replaced  # the slices, Neg and Pack are left unread; the converter's prune drops them
