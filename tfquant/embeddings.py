"""Embedding tables as int8: ResourceGather on an fp32 table -> int8 rows times one fp32 scale per row.

A table of its own (a position embedding, an untied token embedding) becomes an int8 variable
[V, d] plus a variable of row scales, gathered as before.  A table tied to the lm_head (GPT-2,
OPT: the lm_head multiplies by the table transposed) is already stored by the lm_head's int8
kernel as [d, V] with one scale per output channel = per table row; the gather reads that
weight's columns instead, so the table exists once, in int8.  A table that something still
reads in fp32 (an lm_head kept in fp32) is left alone: an int8 copy beside it would make the
model larger, not smaller.
"""
from __future__ import annotations

from typing import Dict

import numpy as np

from .graph import DType, Graph, const_value, make_const, make_node, parse_input
from .lower import Int8Table, add_variable


def lower_embeddings(graph: Graph, captures: Dict[str, object], tables: Dict[str, Int8Table], store=None) -> dict:
    """Lower every fp32 ResourceGather on a 2-D table; ``tables``: handle -> tied lm_head int8 weight;
    ``store``: where new variables come from (``lower.add_variable``)."""
    ops, tied, not_lowered, reads = [], [], [], []
    consumers = graph.consumers()
    for node, handle, var in float_table_gathers(graph, captures):
        if handle in tables:
            _gather_columns(graph, node, tables[handle], int(var.shape[1]))
            tied.append({"gather": node.name, "table": tables[handle].read})
        elif var is None or not hasattr(var, "numpy") or len(var.shape) != 2:
            continue
        elif read_in_fp32(graph, consumers, handle):
            not_lowered.append({"op": node.name, "reason": "the table is also read in fp32 (an lm_head kept fp32?): "
                                                          "an int8 copy beside it would grow the model"})
            continue
        else:
            _gather_rows(graph, captures, node, var.numpy().astype(np.float32), store)
        ops.append(node.name)
        reads.append(handle)
    return {"ops": ops, "tied": tied, "not_lowered": not_lowered, "replaced_reads": reads}


def float_table_gathers(graph: Graph, captures: Dict[str, object]):
    """(gather node, table handle, its variable or None) for every fp32 ResourceGather without batch dims."""
    for node in list(graph.by_op("ResourceGather")):
        if node.attr["dtype"].type == DType("float").enum and node.attr["batch_dims"].i == 0:
            handle = graph.resource_handle(node.name)
            yield node, handle, captures.get(handle)


def read_in_fp32(graph: Graph, consumers, handle: str) -> bool:
    """Whether a ReadVariableOp of ``handle`` still has a data consumer (dead nodes already pruned)."""
    for read in graph.by_op("ReadVariableOp"):
        if graph.resource_handle(read.name) != handle:
            continue
        if any(not i.startswith("^") and parse_input(i)[0] == read.name for u in consumers.get(read.name, [])
               for i in u.input):
            return True
    return False


def _gather_rows(graph: Graph, captures: Dict[str, object], node, table: np.ndarray, store) -> None:
    """A table of its own: int8 [V, d] (127 levels per row) and its row scales, both variables."""
    row_max = np.maximum(np.abs(table).max(axis=1), 1e-8).astype(np.float32)
    q = np.clip(np.round(table * (127.0 / row_max)[:, None]), -127, 127).astype(np.int8)
    base = f"{node.name}_int8"

    def var_handle(suffix, value):
        return add_variable(graph, captures, f"{base}/{suffix}", value, store)

    ids = node.input[1]
    rows = graph.add(make_node("ResourceGather", f"{base}/rows", [var_handle("table", q), ids],
                               {"dtype": DType("int8"), "Tindices": node.attr["Tindices"], "batch_dims": 0,
                                "validate_indices": True}))
    scales = graph.add(make_node("ResourceGather", f"{base}/scales", [var_handle("scale", row_max / 127.0), ids],
                                 {"dtype": DType("float"), "Tindices": node.attr["Tindices"], "batch_dims": 0,
                                  "validate_indices": True}))
    as_float = graph.add(make_node("Cast", f"{base}/to_float", [rows.name],
                                   {"SrcT": DType("int8"), "DstT": DType("float"), "Truncate": False}))
    minus_one = graph.add(make_const(f"{base}/axis", np.int32(-1)))
    scale_col = graph.add(make_node("ExpandDims", f"{base}/scale_col", [scales.name, minus_one.name],
                                    {"T": DType("float"), "Tdim": DType("int32")}))
    graph.remove([node.name])
    graph.add(make_node("Mul", node.name, [as_float.name, scale_col.name], {"T": DType("float")}))


def _gather_columns(graph: Graph, node, table: Int8Table, width: int) -> None:
    """A table tied to the lm_head: rows = (W[:, ids] * scale[ids])^T from its int8 weight W [d, V].

    The ids are flattened (their rank is not known here) and the result reshaped to ids' shape + [d].
    GatherV2 takes qint8 but Transpose and Cast do not, hence the Bitcast (a view, no copy).
    """
    base = f"{node.name}_int8"
    i32, f32, idx = DType("int32"), DType("float"), node.attr["Tindices"]

    def const(suffix, value):
        return graph.add(make_const(f"{base}/{suffix}", np.asarray(value, np.int32))).name

    ids = node.input[1]
    flat = graph.add(make_node("Reshape", f"{base}/flat_ids", [ids, const("flat_shape", [-1])],
                               {"T": idx, "Tshape": i32})).name
    column_axis = const("column_axis", 1)
    cols = graph.add(make_node("GatherV2", f"{base}/columns", [table.read, flat, column_axis],
                               {"Tparams": DType("qint8"), "Tindices": idx, "Taxis": i32, "batch_dims": 0}))
    as_int8 = graph.add(make_node("Bitcast", f"{base}/as_int8", [cols.name], {"T": DType("qint8"), "type": DType("int8")}))
    as_float = graph.add(make_node("Cast", f"{base}/to_float", [as_int8.name],
                                   {"SrcT": DType("int8"), "DstT": f32, "Truncate": False}))
    row_axis = const("row_axis", 0)
    if table.row_scale is None:
        scales = graph.add(make_const(f"{base}/scale", np.float32(table.scale)))
    else:
        scales = graph.add(make_node("GatherV2", f"{base}/scales", [table.row_scale, flat, row_axis],
                                     {"Tparams": f32, "Tindices": idx, "Taxis": i32, "batch_dims": 0}))
    scaled = graph.add(make_node("Mul", f"{base}/scaled", [as_float.name, scales.name], {"T": f32}))  # [d, n] * [n]
    if table.outlier_weight is not None:  # those rows are 0 in the int8 weight: add their fp32 values back, exactly
        channels = const_value(graph.node(table.outlier_channels)).reshape(-1, 1)
        side = graph.add(make_node("GatherV2", f"{base}/outlier_columns", [table.outlier_weight, flat, column_axis],
                                   {"Tparams": f32, "Tindices": idx, "Taxis": i32, "batch_dims": 0}))
        scaled = graph.add(make_node("TensorScatterAdd", f"{base}/with_outliers",
                                     [scaled.name, const("outlier_rows", channels), side.name],
                                     {"T": f32, "Tindices": i32}))
    rows = graph.add(make_node("Transpose", f"{base}/rows", [scaled.name, const("perm", [1, 0])],
                               {"T": f32, "Tperm": i32}))
    ids_shape = graph.add(make_node("Shape", f"{base}/ids_shape", [ids], {"T": idx, "out_type": i32}))
    shape = graph.add(make_node("ConcatV2", f"{base}/shape", [ids_shape.name, const("width", [width]), row_axis],
                                {"N": 2, "T": i32, "Tidx": i32}))
    graph.remove([node.name])
    graph.add(make_node("Reshape", node.name, [rows.name, shape.name], {"T": f32, "Tshape": i32}))
