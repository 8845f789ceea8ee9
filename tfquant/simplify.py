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

from .graph import DType, Graph, const_value, make_const, make_node, parse_input, tensor_name
from .shapes import ShapeInference, as_int, const


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


# ----- grouped-query attention: no repeated keys and values ------------------------------------------------------
# Mistral/Llama's repeat_kv (HF TF) copies each of the kv heads n_rep times before the two attention products:
#     K_rep = Reshape(Tile(ExpandDims(ExpandDims(K, 2), 3), [1, 1, 1, n_rep, 1, 1]), [B, kvh * n_rep, T, D])
#     scores = Q @ K_rep^T,  out = P @ V_rep
# Head h reads kv head h // n_rep, so the same products come from grouping the query heads instead:
#     scores = Reshape(Reshape(Q, [B, kvh, n_rep * q, D]) @ K^T, [B, H, q, T])   (and the same for P @ V)
# Every output element is the same dot product over the same elements; the Tile, a copy of the whole cache per
# layer per step (SmolLM2 decode: 60 Tiles, 2.5 ms of a 40 ms step), is gone.


def _unit_axes_source(graph: Graph, tensor: str) -> Optional[tuple]:
    """(source, positions of the source's axes in ``tensor``) when ``tensor`` is ``source`` with only unit
    axes inserted by ExpandDims with constant axes, else None."""
    inserted = []
    node = graph.nodes.get(parse_input(tensor)[0])
    while node is not None and node.op == "ExpandDims" and parse_input(node.input[0])[1] == 0:
        axis = _const_ints(graph, node.input[1])
        if axis is None or len(axis) != 1:
            return None
        inserted.append(axis[0])
        tensor = node.input[0]
        node = graph.nodes.get(parse_input(tensor)[0])
    return (tensor, inserted[::-1]) if inserted else None


def _base_positions(base_rank: int, inserted: list) -> Optional[list]:
    """Where the base tensor's axes end up after the ExpandDims ``inserted`` (in the order applied)."""
    axes = list(range(base_rank))  # axes[i]: the base axis at position i, or None for an inserted unit axis
    for a in inserted:
        rank = len(axes) + 1
        a = a + rank if a < 0 else a
        if not 0 <= a < rank:
            return None
        axes.insert(a, None)
    return [axes.index(i) for i in range(base_rank)]


def _repeated_heads(graph: Graph, shapes, reshape) -> Optional[tuple]:
    """(K, kvh, n_rep) when ``reshape`` is repeat_kv(K) for a [B, kvh, T, D] tensor K, else None."""
    tile = graph.nodes.get(parse_input(reshape.input[0])[0])
    if tile is None or tile.op != "Tile" or parse_input(reshape.input[0])[1] != 0:
        return None
    mult = _const_ints(graph, tile.input[1])
    found = _unit_axes_source(graph, tile.input[0])
    if mult is None or found is None:
        return None
    base, inserted = found
    tiled = [i for i, m in enumerate(mult) if m != 1]
    positions = _base_positions(len(mult) - len(inserted), inserted)
    if len(tiled) != 1 or positions is None or len(positions) != 4:
        return None
    n_rep = mult[tiled[0]]
    # the repeated axis sits between the kv-head axis and the time axis, with only unit axes around it
    if not positions[1] < tiled[0] < positions[2]:
        return None
    k, out = shapes.fact(base), shapes.fact(tensor_name(reshape.name))
    if k is None or out is None or k.shape is None or out.shape is None or len(out.shape) != 4:
        return None
    kvh = as_int(k.shape[1])
    if kvh is None or n_rep < 2 or out.shape != (k.shape[0], const(kvh * n_rep), k.shape[2], k.shape[3]):
        return None
    return base, kvh, n_rep


def _shape_slice(graph: Graph, prefix: str, shape: str, begin: int, end: int) -> str:
    b, e, s = (graph.add(make_const(f"{prefix}/{n}", np.asarray([v], np.int32))).name
               for n, v in (("begin", begin), ("end", end), ("stride", 1)))
    return graph.add(make_node("StridedSlice", prefix, [shape, b, e, s],
                               {"T": DType("int32"), "Index": DType("int32"), "begin_mask": 0, "end_mask": 0,
                                "ellipsis_mask": 0, "new_axis_mask": 0, "shrink_axis_mask": 0})).name


def _grouped_product(graph: Graph, bmm, kv: str, kvh: int, n_rep: int) -> str:
    """BatchMatMulV2(A, K_rep) for A [B, H, q, X] as Reshape(Reshape(A, [-1, kvh, n_rep * q, X]) @ K, [-1, H, q, N]);
    returns its tensor.  The batch is -1 (right also where K broadcasts over it); X and N are read from K (the
    contraction dim is K's as well as A's), so that these shape tensors are the same in every layer and shape
    sharing keeps one of each."""
    p = graph.unique_name(f"{bmm.name}/grouped")
    a, adj_y = bmm.input[0], bmm.attr["adj_y"].b
    int32 = {"T": DType("float"), "out_type": DType("int32")}
    a_shape = graph.add(make_node("Shape", f"{p}/a_shape", [a], int32)).name
    kv_shape = graph.add(make_node("Shape", f"{p}/kv_shape", [kv], int32)).name
    rows = _shape_slice(graph, f"{p}/rows", a_shape, 2, 3)                  # q
    time, depth = (_shape_slice(graph, f"{p}/{n}", kv_shape, b, b + 1) for n, b in (("time", 2), ("depth", 3)))
    contracted, kept = (depth, time) if adj_y else (time, depth)
    rep = graph.add(make_const(f"{p}/n_rep", np.asarray([n_rep], np.int32))).name
    grouped_rows = graph.add(make_node("Mul", f"{p}/grouped_rows", [rows, rep], {"T": DType("int32")})).name
    axis = graph.add(make_const(f"{p}/axis", np.int32(0))).name

    def shape_of(name, lead, *parts):
        lead = graph.add(make_const(f"{p}/{name}_lead", np.asarray(lead, np.int32))).name
        return graph.add(make_node("ConcatV2", f"{p}/{name}", [lead, *parts, axis],
                                   {"T": DType("int32"), "Tidx": DType("int32"), "N": 1 + len(parts)})).name

    reshape = {"T": DType("float"), "Tshape": DType("int32")}
    grouped = graph.add(make_node("Reshape", f"{p}/a", [a, shape_of("grouped_shape", [-1, kvh], grouped_rows,
                                                                     contracted)], reshape)).name
    product = graph.add(make_node("BatchMatMulV2", f"{p}/product", [grouped, kv],
                                  {"T": DType("float"), "adj_x": False, "adj_y": adj_y})).name
    out_shape = shape_of("out_shape", [-1, kvh * n_rep], rows, kept)
    return graph.add(make_node("Reshape", p, [product, out_shape], reshape)).name


def simplify_repeat_kv(graph: Graph, resource_shapes: Optional[dict] = None) -> int:
    """Every attention product reading repeat_kv(K or V) reads K or V with grouped query heads instead;
    returns how many products were rewritten (the Tiles are left unread; prune drops them)."""
    if not graph.by_op("Tile"):
        return 0
    shapes = ShapeInference(graph, resource_shapes)
    rewritten = 0
    for reshape in list(graph.by_op("Reshape")):
        readers = graph.readers(reshape.name)
        if not readers or any(r.op != "BatchMatMulV2" or r.attr["adj_x"].b or len(r.input) != 2
                              or parse_input(r.input[1]) != (reshape.name, 0) or parse_input(r.input[0])[0] == reshape.name
                              for r in readers):
            continue
        found = _repeated_heads(graph, shapes, reshape)
        if found is None:
            continue
        kv, kvh, n_rep = found
        for bmm in readers:
            a = shapes.fact(bmm.input[0])
            # A must have every query head itself: one broadcast over the heads ([B, 1, q, X]) is left as it is
            if a is None or a.shape is None or len(a.shape) != 4 or a.shape[1] != const(kvh * n_rep) \
                    or bmm.attr["T"].type != DType("float").enum:
                continue
            graph.redirect(bmm.name, _grouped_product(graph, bmm, kv, kvh, n_rep), graph.readers(bmm.name))
            rewritten += 1
    return rewritten
