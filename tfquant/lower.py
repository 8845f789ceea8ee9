"""Lower: QDQ patterns -> real int8 kernels that stock TensorFlow runs.

On stock TF a QDQ graph only simulates quantization (the MatMul stays fp32), so the
converted model would be no faster and no smaller.  This pass rewrites

    Dequantize(QuantizeV2(a)) x Dequantize(QuantizeV2(W)) [+ BiasAdd(b)]

into one ``_MklQuantizedMatMulWithBiasAndDequantize`` (oneDNN u8 x s8 -> s32 with VNNI)
whose weight is an **int8 variable** (so the output SavedModel is ~4x smaller and the 2 GB
GraphDef cap never applies) and whose bias is qint32 with the MIN_FIRST compensation folded
in.  It also stores the token embedding as int8 rows with one fp32 scale per row.

Why the ``_Mkl`` ops are written directly: the public ``QuantizedMatMulWithBiasAndDequantize``
is a NoOp placeholder that only oneDNN's graph rewrite turns into a kernel, and that rewrite
is off by default on AMD CPUs (TF_ENABLE_ONEDNN_OPTS).  The rewrite also marks a weight as
constant only if it is a Const node, so a variable weight would be re-packed on every call
(measured: 17 ms vs 10 ms for 128x1024x4096).  Writing the kernel ourselves with
``is_weight_const=true`` gets the cached packed weight with the weight still a variable, and
the model runs with no environment variable set.  The catch: the kernel packs the weight on
first use, so assigning new values to the int8 variables after loading has no effect.
"""
from __future__ import annotations

from typing import Dict, List

import numpy as np

from .graph import DType, Graph, make_const, make_node, parse_input
from .qparams import quantize_weight

MKL_LABEL = "QuantizedMklOp"  # kernel label of oneDNN's native-format quantized kernels
KERNEL = "_MklQuantizedMatMulWithBiasAndDequantize"


def _add_variable(graph: Graph, captures: Dict[str, object], handle_name: str, value) -> str:
    """A new variable holding ``value``, bound to a new Placeholder(resource); returns the placeholder name."""
    import tensorflow as tf

    handle = graph.add(make_node("Placeholder", handle_name, attrs={"dtype": DType("resource")}))
    handle.attr["shape"].shape.CopyFrom(tf.TensorShape([]).as_proto())
    captures[handle_name] = tf.Variable(value, trainable=False, name=handle_name.replace("/", "_"))
    return handle_name


def _new_qint8_variable(graph: Graph, captures: Dict[str, object], base: str, value: np.ndarray) -> str:
    """Add Placeholder(resource) -> ReadVariableOp for a new qint8 variable; returns the read tensor.

    The variable itself is qint8 (checkpoints store it as 8-bit like int8), so the kernel reads
    it with no Bitcast: one op less per MatMul on every call.
    """
    import tensorflow as tf

    qvalue = tf.bitcast(tf.constant(np.ascontiguousarray(value, np.int8)), tf.qint8)
    handle = _add_variable(graph, captures, f"{base}/handle", qvalue)
    return graph.add(make_node("ReadVariableOp", f"{base}/read", [handle], {"dtype": DType("qint8")})).name


def _quantize_activation(graph: Graph, a_q, a_mode: str) -> str:
    """fp32 activation -> quint8 for the kernel; returns the quantize node (outputs: data, min, max).

    Tried and measured (60 quantizes of 128x576 in one graph): MIN_FIRST 64 us each; ``x - min`` then
    a SCALED quantize (oneDNN caches that primitive, while MIN_FIRST builds one per call) 43 + 57 us.
    Every full pass over a tensor costs ~40-60 us here, so the one-op MIN_FIRST stays.
    """
    quant = graph.unique_name(f"{a_q.name}_mkl")
    # HALF_TO_EVEN is only valid with SCALED (QuantizeV2 rejects it for MIN_FIRST).
    round_mode = "HALF_TO_EVEN" if a_mode == "SCALED" else "HALF_AWAY_FROM_ZERO"
    attrs = {"T": DType("quint8"), "mode": a_mode, "round_mode": round_mode,
             "narrow_range": False, "axis": -1, "ensure_minimum_range": 0.01, "_kernel": MKL_LABEL}
    graph.add(make_node("_MklQuantizeV2", quant, [a_q.input[0], a_q.input[1], a_q.input[2]], attrs))
    return quant


def _single_consumer(consumers, name, op):
    users = consumers.get(name, [])
    if len(users) == 1 and users[0].op == op:
        return users[0]
    return None


def lower_to_int8(graph: Graph, model, captures: Dict[str, object], weight_bits: int = 7) -> dict:
    """Rewrite every lowerable QDQ MatMul in place; returns a summary for report.json.

    ``weight_bits=7`` stores weights in [-63, 63].  Measured here: on CPUs without VNNI (this
    machine's oneDNN runs its AVX2 path) the u8 x s8 kernel adds pairs of products in int16
    with saturation, and full-range 8-bit weights gave errors up to 10x the emulated int8
    result on some shapes; 255*63*2 < 32767 cannot saturate, and the kernel then matches the
    emulation to 1e-6.  ``weight_bits=8`` is for deployments on VNNI/AMX CPUs only.
    """
    levels = 2 ** (weight_bits - 1) - 1
    consumers = graph.consumers()
    lowered: List[str] = []
    not_lowered: List[dict] = []
    replaced_reads = set()
    per_channel_ops = 0
    activation_requant: Dict[str, str] = {}
    for mm in list(graph.by_op("MatMul")):
        a_deq, w_deq = (graph.node(i) for i in mm.input[:2])
        if a_deq.op != "Dequantize" or w_deq.op != "Dequantize":
            continue
        a_q, w_q = graph.node(a_deq.input[0]), graph.node(w_deq.input[0])
        per_channel = w_q.attr["axis"].i == 1
        if mm.attr["transpose_a"].b or mm.attr["transpose_b"].b:
            not_lowered.append({"op": mm.name, "reason": "transposed MatMul"})
            continue
        weight_tensor = w_q.input[0]
        w = model.weight_value(graph, weight_tensor).astype(np.float32)
        if per_channel:
            w_max = np.maximum(np.abs(w).max(axis=0), 1e-8).astype(np.float32)
        else:
            w_max = np.float32(max(float(np.abs(w).max()), 1e-8))
        w_int8 = quantize_weight(w, w_max, levels)

        # Activation: the kernel needs quint8.  A symmetric qint8 activation (performance_only)
        # is re-expressed as quint8 MIN_FIRST over the same [-m, m] range.
        a_min = float(graph.node(a_q.input[1]).attr["value"].tensor.float_val[0])
        a_max = float(graph.node(a_q.input[2]).attr["value"].tensor.float_val[0])
        a_mode = a_q.attr["mode"].s.decode()
        a_dtype = a_q.attr["T"].type
        if a_dtype != DType("quint8").enum:
            a_mode = "MIN_FIRST"
        quant = activation_requant.get((a_q.name, a_mode))
        if quant is None:
            quant = _quantize_activation(graph, a_q, a_mode)
            activation_requant[(a_q.name, a_mode)] = quant

        # Fold the following BiasAdd into the kernel: the MatMul's only consumer, or the only consumer of a
        # Reshape that is the MatMul's only consumer (Keras Dense on 3-D input: Tensordot's MatMul -> Reshape ->
        # BiasAdd, as in GPT-J's fc_in/fc_out/lm_head).  A bias on the last axis is the same before and after
        # that Reshape, which keeps the last axis (BiasAdd would fail otherwise).
        bias_add = _single_consumer(consumers, mm.name, "BiasAdd")
        reshape = None
        if bias_add is None:
            reshape = _single_consumer(consumers, mm.name, "Reshape")
            bias_add = _single_consumer(consumers, reshape.name, "BiasAdd") if reshape is not None else None
        if bias_add is not None and bias_add.attr["data_format"].s not in (b"", b"NHWC"):
            bias_add = None
        bias = np.zeros(w.shape[1], np.float32)
        if bias_add is not None:
            try:
                bias = model.weight_value(graph, graph.skip_identity(bias_add.input[1])).astype(np.float32)
            except (ValueError, KeyError):
                bias_add = None
        qa = 255.0 / (a_max - a_min) if a_mode == "MIN_FIRST" else 255.0 / max(abs(a_max), abs(a_min))
        qw = levels / w_max.astype(np.float64)
        comp = qa * a_min * w_int8.astype(np.int64).sum(axis=0) if a_mode == "MIN_FIRST" else 0.0
        bias_q = np.round(qa * qw * bias.astype(np.float64) + comp)
        bias_q = np.clip(bias_q, -2**31, 2**31 - 1).astype(np.int32)

        w_node = parse_input(weight_tensor)[0]
        w_read = _new_qint8_variable(graph, captures, f"{w_node}_int8", w_int8)
        out_name = mm.name if reshape is not None or bias_add is None else bias_add.name
        prefix = f"{mm.name}_eightbit"
        b_const = make_const(f"{prefix}_bias", bias_q)
        b_const.attr["dtype"].type = DType("qint32").enum
        b_const.attr["value"].tensor.dtype = DType("qint32").enum
        graph.add(b_const)
        # The kernel derives one weight scale as max|min_b, max_b| / 127 (scalars only).  Per
        # channel, the kernel runs with unit scale (max_b = 127: it sees the integers as they
        # are) and a Mul by 1/Qw_j per output column follows; the bias already holds Qw_j.
        kernel_max_b = np.float32(127.0) if per_channel else np.float32(float(w_max) * 127.0 / levels)
        wmin = graph.add(make_const(f"{prefix}_min_b", -kernel_max_b))
        wmax = graph.add(make_const(f"{prefix}_max_b", kernel_max_b))
        fmin = graph.add(make_const(f"{prefix}_min_freezed_output", np.float32(0.0)))
        fmax = graph.add(make_const(f"{prefix}_max_freezed_output", np.float32(1.0)))
        kernel_name = f"{prefix}_int8_matmul" if per_channel else out_name
        kernel = make_node(KERNEL, kernel_name, [quant, w_read, b_const.name, f"{quant}:1", f"{quant}:2",
                                              wmin.name, wmax.name, fmin.name, fmax.name], {
            "T1": DType("quint8"), "T2": DType("qint8"), "Tbias": DType("qint32"), "Toutput": DType("float"),
            "transpose_a": False, "transpose_b": False, "input_quant_mode": a_mode,
            "is_weight_const": True, "is_bias_const": True, "_kernel": MKL_LABEL})
        graph.remove([out_name] if bias_add is None else [bias_add.name, mm.name])
        graph.add(kernel)
        if bias_add is not None and reshape is not None:  # the bias is in the kernel; keep the name for readers
            graph.add(make_node("Identity", bias_add.name, [reshape.name], {"T": DType("float")}))
        if per_channel:
            scale = graph.add(make_const(f"{prefix}_channel_scale", (1.0 / qw).astype(np.float32)))
            graph.add(make_node("Mul", out_name, [kernel_name, scale.name], {"T": DType("float")}))
        replaced_reads.add(parse_input(graph.skip_identity(weight_tensor))[0])
        lowered.append(mm.name)
        per_channel_ops += int(per_channel)

    embedding = lower_embeddings(graph, captures)
    _drop_dead_weight_controls(graph, replaced_reads | set(embedding["replaced_reads"]))
    graph.toposort()
    return {
        "count": len(lowered),
        "kernel": KERNEL,
        "weight_granularity": "per_channel" if per_channel_ops else "per_tensor",
        "per_channel_ops": per_channel_ops,
        "weight_bits": weight_bits,
        "weight_storage": "int8 variables (scales as constants)",
        "ops": lowered,
        "not_lowered": not_lowered,
        "embeddings": embedding["ops"],
    }


def lower_embeddings(graph: Graph, captures: Dict[str, object]) -> dict:
    """ResourceGather on an fp32 embedding table -> int8 rows gathered, then scaled per row."""
    ops, reads = [], []
    for node in list(graph.by_op("ResourceGather")):
        if node.attr["dtype"].type != DType("float").enum or node.attr["batch_dims"].i != 0:
            continue
        handle = parse_input(graph.skip_identity(node.input[0]))[0]
        var = captures.get(handle)
        if var is None or not hasattr(var, "numpy") or len(var.shape) != 2:
            continue
        table = var.numpy().astype(np.float32)
        row_max = np.maximum(np.abs(table).max(axis=1), 1e-8).astype(np.float32)
        q = np.clip(np.round(table * (127.0 / row_max)[:, None]), -127, 127).astype(np.int8)
        base = f"{node.name}_int8"
        def var_handle(suffix, value):
            return _add_variable(graph, captures, f"{base}/{suffix}", value)

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
        ops.append(node.name)
        reads.append(handle)
    return {"ops": ops, "replaced_reads": reads}


def _drop_dead_weight_controls(graph: Graph, replaced: set) -> None:
    """Control edges to replaced fp32 weight reads would keep the fp32 weights in the model."""
    consumers = graph.consumers()
    dead = []
    for name in replaced:
        data_users = [u for u in consumers.get(name, []) if any(parse_input(i)[0] == name and not i.startswith("^") for i in u.input)]
        if not data_users:
            dead.append(name)
    graph.drop_control_inputs_from(dead)
