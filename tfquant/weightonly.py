"""Weight-only schemes: weights stored in their quantized format, dequantized in the graph.

For ``--activations none`` (W8A16, W4A16, bf16/fp16, MX, ggml blocks) every planned weight MatMul
becomes

    ReadVariableOp(codes), ReadVariableOp(scales), ...  ->  decode (tfquant.formats.tfdecode)  ->  MatMul(x, W)

with the stored arrays (int4 packed two per byte, MXFP6 four per three bytes with an E8M0 byte per
block, bf16 as 16-bit values, ...) as variables, so the SavedModel's size on disk and its memory at
rest are those of the format.  Embedding tables are stored the same way and only the gathered rows
are decoded; a table tied to the lm_head is stored once, as the lm_head's weight.

On stock TF this is a size and memory win, not a speed win: the decode writes an fp32 copy of the
weight on every call before the fp32 MatMul (tfquant/formats/tfdecode.py has the measured cost).
The exception is bf16 on CPUs with bf16 dot products (``policy.compute_dtype``): the MatMul then
runs in bf16 on the stored weight, with no decode.

A group or block size that does not divide a weight's input dimension is not an error: that
weight is stored as int8 per channel instead, and the report lists it (``fallbacks``).

Memory while running: each decode waits for its MatMul's input, and a weight whose fp32 copy would
exceed ``--decode_chunk_mb`` (the lm_head) is decoded and multiplied in column slices, one at a time,
so the fp32 copies alive at once are a slice's, not the model's (``decoded_in_slices``).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Dict, Optional

import numpy as np
from tensorflow.core.framework import attr_value_pb2

from .graph import DType, Graph, make_const, make_node, parse_input
from .lower import add_variable, drop_dead_weight_controls, table_handle
from .quantizers import Plan, Skip
from .rewrite import as_plain_matmul, matmul_weight
from .splice import splice

FALLBACK_FORMAT = "int8_per_channel"  # for a weight whose input dimension the group / block size does not divide


@dataclass
class StoredWeight:
    """A weight in its stored format, bound into the graph: what to decode it, or a column subset, from."""

    meta: object                 # tfdecode.DecodeMeta
    reads: Dict[str, tuple]      # array name -> (ReadVariableOp tensor, tf dtype, shape)
    prefix: str
    decoded: Optional[str] = None  # the fp32 [K, N] tensor, once decoded


def _format_for(policy, k: int):
    """(formats name, options, fallback note or None) for a weight with input dimension ``k``."""
    from .formats import get_format

    fmt, options = policy.weight_format, dict(policy.weight_format_options)
    family = get_format(fmt).family
    group = options.get("group_size") if family == "int" else {"ggml": 32, "mx": 32, "mx_paper": 16}.get(family)
    if group and k % group:
        note = f"{fmt} groups of {group} do not divide the input dimension {k}: stored as {FALLBACK_FORMAT}"
        return FALLBACK_FORMAT, {}, note
    return fmt, options, None


def _store(graph: Graph, captures, value, fmt: str, options: dict, base: str, store) -> StoredWeight:
    """Quantize ``value`` [K, N] (or take it as it is, a ``QuantizedWeight``) and bind its arrays as
    variables read in ``graph``."""
    from .formats import QuantizedWeight, quantize_weight, tfdecode

    qw = value if isinstance(value, QuantizedWeight) else quantize_weight(value, fmt, **options)
    dtypes = tfdecode.stored_dtypes(qw)
    reads = {}
    for key, array in tfdecode.to_variables_values(qw).items():
        handle = add_variable(graph, captures, f"{base}/{key}/handle", array, store)
        read = graph.add(make_node("ReadVariableOp", f"{base}/{key}/read", [handle], {"dtype": attr_value_pb2.AttrValue(type=dtypes[key].as_datatype_enum)}))
        reads[key] = (read.name, dtypes[key], tuple(array.shape))
    return StoredWeight(tfdecode.meta_of(qw), reads, base), qw


def _inputs(stored: StoredWeight) -> dict:
    return {key: (read, dtype, shape) for key, (read, dtype, shape) in stored.reads.items()}


def _decoded(graph: Graph, stored: StoredWeight) -> str:
    from .formats import tfdecode

    if stored.decoded is None:
        meta = stored.meta
        stored.decoded = splice(graph, lambda t: tfdecode.decode(meta, t), _inputs(stored), f"{stored.prefix}/decode")
    return stored.decoded


def _decode_when_needed(graph: Graph, gates: Dict[str, tuple]) -> None:
    """Start each weight's decode only once its MatMul's input exists; ``gates``: decode prefix ->
    (the stored arrays' read nodes, the tensor to wait for: the MatMul's activation, or for a column
    slice the previous slice's product).

    A decode reads only variables, so TF's executor would run every decode of the graph at the start of
    a call and hold all the fp32 copies at once: peak memory of a whole fp32 model on top of the stored
    one.  A control edge from the activation makes each fp32 copy live from just before its MatMul to
    just after it.  One pass over the graph for all weights.
    """
    for node in graph.nodes.values():
        prefix, sep, _ = node.name.partition("/decode/")
        if not sep or prefix not in gates:
            continue
        reads, activation = gates[prefix]
        if any(parse_input(i)[0] in reads for i in node.input if i[0] != "^"):
            node.input.append("^" + parse_input(activation)[0])


def slice_columns(shape, chunk_mb: float) -> int:
    """Columns per slice for a [K, N] weight whose fp32 decode exceeds ``chunk_mb`` MB (0: not sliced)."""
    k, n = shape
    limit = int(chunk_mb * 2**20)
    if not limit or k * n * 4 <= limit:
        return 0
    return max(1, limit // (4 * k))


def _matmul_in_column_slices(graph: Graph, mm, stored: StoredWeight, width: int, reads: set) -> Dict[str, tuple]:
    """``MatMul(x, decode(W))`` -> ``ConcatV2([MatMul(x, decode(W[:, a:b])) ...], 1)`` under the op's name.

    Each slice decodes only its columns and waits for the previous slice's product (the first for ``x``),
    so one slice's fp32 copy is alive at a time instead of the whole weight's (the lm_head's is the
    largest tensor of a small LLM's forward).  Exact: the decode is elementwise and each output column of
    a MatMul depends on its weight column only (the test compares logits with whole-weight decoding).
    Returns the decode gates (slice prefix -> (reads, what it waits for)).
    """
    x, controls = mm.input[0], [i for i in mm.input if i.startswith("^")]
    f32 = DType("float")
    parts, gates, after = [], {}, x
    for start in range(0, stored.meta.shape[1], width):
        stop = min(start + width, stored.meta.shape[1])
        prefix = f"{stored.prefix}/columns_{start}_{stop}"
        decoder = functools.partial(_decode_range, stored.meta, start, stop)
        w = splice(graph, decoder, _inputs(stored), f"{prefix}/decode")
        part = graph.add(make_node("MatMul", f"{mm.name}/columns_{start}_{stop}", [x, w] + controls,
                                   {"T": f32, "transpose_a": False, "transpose_b": False}))
        gates[prefix] = (reads, after)
        parts.append(part.name)
        after = part.name
    axis = graph.add(make_const(f"{mm.name}/columns_axis", np.int32(1)))
    graph.remove([mm.name])
    graph.add(make_node("ConcatV2", mm.name, parts + [axis.name], {"N": len(parts), "T": f32, "Tidx": DType("int32")}))
    return gates


def _decode_range(meta, start: int, stop: int, tensors: dict):
    from .formats import tfdecode

    return tfdecode.decode_column_range(meta, tensors, start, stop)


def _bf16_matmul(graph: Graph, mm, stored: StoredWeight) -> None:
    """MatMul in bf16 on the stored bf16 weight: Cast(x) -> MatMul(bf16) -> Cast back, under the op's name."""
    bf16, f32 = DType("bfloat16"), DType("float")
    (weight, _, _), = stored.reads.values()
    x = graph.add(make_node("Cast", f"{mm.name}/x_bf16", [mm.input[0]], {"SrcT": f32, "DstT": bf16, "Truncate": False}))
    controls = [i for i in mm.input if i.startswith("^")]
    product = graph.add(make_node("MatMul", f"{mm.name}/bf16", [x.name, weight] + controls,
                                  {"T": bf16, "transpose_a": False, "transpose_b": False}))
    graph.remove([mm.name])
    graph.add(make_node("Cast", mm.name, [product.name], {"SrcT": bf16, "DstT": f32, "Truncate": False}))


def _variable_name(graph: Graph, captures, tensor: str) -> Optional[str]:
    handle = table_handle(graph, tensor)
    var = captures.get(handle) if handle else None
    return getattr(var, "name", None)


def encode_weights(graph: Graph, decisions: list, model, captures: Dict[str, object], policy, store=None,
                   stored_weights: Optional[dict] = None) -> dict:
    """Apply the weight-only plans in place; returns report.json's ``weight_only`` block.

    ``stored_weights``: variable name -> ``QuantizedWeight`` stored as it is (a GGUF file's blocks);
    when given, every other weight stays float."""
    weight_values = lambda tensor: model.weight_value(graph, tensor)  # noqa: E731
    stored: Dict[tuple, StoredWeight] = {}
    tied: Dict[str, StoredWeight] = {}  # fp32 table handle -> the lm_head weight that stores it
    gathered = graph.gathered_handles()
    ops, skipped, fallbacks, replaced = [], [], [], set()
    decoded_for: Dict[tuple, list] = {}  # stored weight -> the MatMuls that read its decode
    fp32_bytes = stored_bytes = 0
    for d in decisions:
        if isinstance(d, Skip):
            skipped.append({"op": d.op, "op_type": d.op_type, "reason": d.reason})
            continue
        if not isinstance(d, Plan) or d.weight is None:
            continue
        w = matmul_weight(weight_values, d.weight)
        if w.ndim != 2:
            skipped.append({"op": d.op, "op_type": d.op_type, "reason": "the weight is not 2-D"})
            continue
        given = None
        if stored_weights is not None:
            given = stored_weights.get(_variable_name(graph, captures, d.weight.tensor))
            if given is None:
                skipped.append({"op": d.op, "op_type": d.op_type, "reason": "not quantized in the source file"})
                continue
        mm = as_plain_matmul(graph, graph.node(d.op), d.weight, weight_values)
        key = (d.weight.tensor, d.weight.transposed)
        fmt, options, note = (given.format, {}, None) if given is not None else _format_for(policy, w.shape[0])
        bf16_direct = policy.compute_dtype == "bfloat16" and fmt == "bf16"
        if key not in stored:
            base = f"{parse_input(d.weight.tensor)[0]}_{fmt}"
            stored[key], qw = _store(graph, captures, w if given is None else given, fmt, options, base, store)
            fp32_bytes += w.size * 4
            stored_bytes += qw.nbytes
            if note:
                fallbacks.append({"op": d.op, "note": note})
        replaced.update(graph.weight_reads(d.weight.tensor))
        mm.attr["transpose_b"].b = False
        if bf16_direct:
            _bf16_matmul(graph, mm, stored[key])
        else:
            decoded_for.setdefault(key, []).append(mm.name)  # rewired below, once slicing is decided
        handle = table_handle(graph, d.weight.tensor) if d.weight.transposed else None
        if handle in gathered:
            tied[handle] = stored[key]
        ops.append({"op": d.op, "format": fmt, "shape": list(w.shape)})
    gates, sliced = {}, []
    for key, users in decoded_for.items():
        weight, mm = stored[key], graph.node(users[0])
        reads = {parse_input(r)[0] for r, _, _ in weight.reads.values()}
        # with several readers, waiting for one's input could wait on the other's output: not gated, not sliced
        width = slice_columns(weight.meta.shape, policy.decode_chunk_mb) if len(users) == 1 else 0
        if width:
            gates.update(_matmul_in_column_slices(graph, mm, weight, width, reads))
            sliced.append({"op": mm.name, "shape": list(weight.meta.shape), "columns_per_slice": width})
            continue
        for user in users:
            graph.rewire_input(graph.node(user), 1, _decoded(graph, weight))
        if len(users) == 1:
            gates[weight.prefix] = (reads, mm.input[0])
    _decode_when_needed(graph, gates)
    graph.prune(list(model.outputs.values()), keep=[parse_input(t)[0] for t in model.inputs.values()])
    embeddings = _encode_embeddings(graph, captures, policy, tied, store, stored_weights)
    fp32_bytes += embeddings.pop("fp32_bytes")
    stored_bytes += embeddings.pop("stored_bytes")
    drop_dead_weight_controls(graph, replaced | set(embeddings["replaced_reads"]))
    graph.toposort()
    return {"format": policy.weight_format, "options": dict(policy.weight_format_options),
            "compute_dtype": policy.compute_dtype, "count": len(ops), "ops": ops, "skipped": skipped,
            "fallbacks": fallbacks, "decoded_in_slices": sliced, "embeddings": embeddings["ops"], "tied_embeddings": embeddings["tied"],
            "not_encoded": embeddings["not_encoded"], "fp32_bytes": int(fp32_bytes), "stored_bytes": int(stored_bytes),
            "decode": "in the graph before an fp32 MatMul" if policy.compute_dtype == "float32" else
                      "none: bf16 MatMuls read the stored bf16 weights"}


IDS = "__ids"  # the gather's ids among a row decoder's inputs


def _decode_rows(meta, tensors: dict):
    from .formats import tfdecode

    arrays = {k: v for k, v in tensors.items() if k != IDS}
    return tfdecode.decode_columns(meta, arrays, tensors[IDS])


def _encode_embeddings(graph: Graph, captures, policy, tied: Dict[str, StoredWeight], store,
                       stored_weights: Optional[dict] = None) -> dict:
    """Every fp32 ResourceGather on a 2-D table gathers stored rows and decodes only those.

    A table of its own [V, d] is stored as its transpose [d, V] (groups run along d, the hidden
    size, as ggml's token_embd), so a token's row is one column of the stored weight."""
    import tensorflow as tf

    from .embeddings import float_table_gathers, read_in_fp32

    ops, tied_ops, not_encoded, reads = [], [], [], []
    fp32_bytes = stored_bytes = 0
    own: Dict[str, StoredWeight] = {}
    consumers = graph.consumers()
    for node, handle, var in float_table_gathers(graph, captures):
        if handle in tied:
            stored = tied[handle]
            tied_ops.append({"gather": node.name, "table": stored.prefix})
        elif var is None or not hasattr(var, "numpy") or len(var.shape) != 2:
            continue
        elif stored_weights is not None and var.name not in stored_weights:
            continue
        elif read_in_fp32(graph, consumers, handle):
            not_encoded.append({"op": node.name, "reason": "the table is also read in fp32 (an lm_head kept fp32?): "
                                                           "a quantized copy beside it would grow the model"})
            continue
        else:
            if handle not in own:
                table = var.numpy().astype(np.float32)
                given = stored_weights.get(var.name) if stored_weights is not None else None
                fmt, options, _ = (given.format, {}, None) if given is not None else _format_for(policy, table.shape[1])
                value = given if given is not None else np.ascontiguousarray(table.T)
                own[handle], qw = _store(graph, captures, value, fmt, options, f"{node.name}_{fmt}", store)
                fp32_bytes += table.size * 4
                stored_bytes += qw.nbytes
            stored = own[handle]
        ids = node.input[1]
        inputs = {**_inputs(stored), IDS: (ids, tf.as_dtype(node.attr["Tindices"].type), None)}
        rows = splice(graph, functools.partial(_decode_rows, stored.meta), inputs, f"{node.name}_rows")
        graph.remove([node.name])
        graph.add(make_node("Identity", node.name, [rows], {"T": DType("float")}))
        ops.append(node.name)
        reads.append(handle)
    return {"ops": ops, "tied": tied_ops, "not_encoded": not_encoded, "replaced_reads": reads,
            "fp32_bytes": fp32_bytes, "stored_bytes": stored_bytes}
