"""Lower: QDQ patterns -> real int8 kernels that stock TensorFlow runs.

On stock TF a QDQ graph only simulates quantization (the MatMul stays fp32), so the
converted model would be no faster and no smaller.  This pass rewrites

    Dequantize(QuantizeV2(a)) x Dequantize(QuantizeV2(W)) [+ BiasAdd(b)]

into one ``_MklQuantizedMatMulWithBiasAndDequantize`` (oneDNN u8 x s8 -> s32 with VNNI)
whose weight is an **int8 variable** (so the output SavedModel is ~4x smaller and the 2 GB
GraphDef cap never applies) and whose bias is qint32 with the MIN_FIRST compensation folded
in.  A weight used transposed (an embedding tied to the lm_head) is stored as the kernel
multiplies by it, [in, out].  Embedding tables become int8 too (``tfquant/embeddings.py``);
a table tied to the lm_head is stored once, as the lm_head's int8 weight.

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

from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np

from . import names
from .graph import DType, Graph, const_value, make_const, make_node, parse_input
from .qparams import PAIR_LIMIT, fit_pairs, pair_safe_max_abs, quantize_weight

MKL_LABEL = "QuantizedMklOp"  # kernel label of oneDNN's native-format quantized kernels
KERNEL = "_MklQuantizedMatMulWithBiasAndDequantize"


def add_variable(graph: Graph, captures: Dict[str, object], handle_name: str, value, store=None) -> str:
    """A variable holding ``value``, bound to a new Placeholder(resource); returns the placeholder name.

    ``store`` (a ``VariableStore``) hands out one variable per content, so that signatures converted
    one after the other (prefill, decode) share their int8 weights.  A variable this graph already
    binds (a table gathered twice, as HF's GPT-J does for input_ids and token_type_ids) keeps its one
    placeholder: a function cannot capture one variable through two.
    """
    import tensorflow as tf

    name = handle_name.replace("/", "_")
    var = store.variable(value, name) if store is not None else tf.Variable(value, trainable=False, name=name)
    bound = next((ph for ph, v in captures.items() if v is var), None)
    if bound is not None:
        return bound
    handle = graph.add(make_node("Placeholder", handle_name, attrs={"dtype": DType("resource")}))
    handle.attr["shape"].shape.CopyFrom(tf.TensorShape([]).as_proto())
    captures[handle_name] = var
    return handle_name


def _new_qint8_variable(graph: Graph, captures: Dict[str, object], base: str, value: np.ndarray, store=None) -> str:
    """Add Placeholder(resource) -> ReadVariableOp for a new qint8 variable; returns the read tensor.

    The variable itself is qint8 (checkpoints store it as 8-bit like int8), so the kernel reads
    it with no Bitcast: one op less per MatMul on every call.
    """
    import tensorflow as tf

    qvalue = tf.bitcast(tf.constant(np.ascontiguousarray(value, np.int8)), tf.qint8)
    handle = add_variable(graph, captures, f"{base}/handle", qvalue, store)
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


@dataclass(frozen=True)
class Int8Table:
    """The int8 weight of a lowered MatMul by a transposed fp32 table that a ResourceGather also
    reads (an embedding tied to the lm_head): the gather reuses it, so the table is stored once."""

    read: str                 # the qint8 [d, V] weight the kernel reads: its columns are the table's rows
    row_scale: Optional[str]  # Const [V]: each row's fp32 scale (= each lm_head output channel's) ...
    scale: float = 0.0        # ... or, with row_scale None (a per-tensor kernel), one scale for every row
    # An lm_head whose outlier input channels run in fp32 on the side has those rows zero in ``read``;
    # their exact values are the side MatMul's weight (Const [k, V]) at these channels (Const [k]).
    outlier_channels: Optional[str] = None
    outlier_weight: Optional[str] = None


def _through_shape_ops(graph: Graph, tensor: str):
    """The node behind ``tensor`` once EnsureShape and Identity are passed through."""
    node = graph.node(tensor)
    while node.op in ("EnsureShape", "Identity"):
        node = graph.node(node.input[0])
    return node


def table_handle(graph: Graph, tensor: str) -> Optional[str]:
    """The variable a weight QuantizeV2 reads unchanged (through EnsureShape/Identity), else None
    (a Const, or a weight scaled by SmoothQuant / masked for outliers: not the table itself)."""
    node = _through_shape_ops(graph, tensor)
    return graph.resource_handle(node.name) if node.op == "ReadVariableOp" else None


def lower_to_int8(graph: Graph, model, captures: Dict[str, object], weight_bits: int = 8, store=None,
                  moments: Optional[dict] = None, pair_safe: bool = True) -> dict:
    """Rewrite every lowerable QDQ MatMul in place; returns a summary for report.json.

    On CPUs without VNNI the u8 x s8 kernel adds pairs of products in int16 with saturation, and
    full-range 8-bit weights gave errors up to 10x the emulated int8 result on some shapes (measured on
    an AVX2 machine, and here with ONEDNN_MAX_CPU_ISA=AVX2).  ``weight_bits=8`` with ``pair_safe`` (the
    default) keeps each pair of adjacent inputs' codes within |a| + |b| <= 128 (qparams.PAIR_LIMIT), which
    cannot saturate: exact on every CPU.  ``weight_bits=7`` stores weights in [-63, 63] (255*63*2 < 32767,
    the earlier default); ``pair_safe=False`` uses all of [-127, 127]: VNNI/AMX CPUs only.
    ``store``: where new variables come from (see ``add_variable``).
    ``moments``: {MatMul op: (activation tensor, sum of x^T x)} to round those weights with GPTQ
    (tfquant/gptq.py); None rounds every weight to nearest.
    """
    from .embeddings import lower_embeddings  # embeddings.py builds on this module's variable helpers

    levels = 2 ** (weight_bits - 1) - 1
    pair_limit = PAIR_LIMIT if pair_safe and 2 * levels > PAIR_LIMIT else None  # 7 bits: 2 * 63 fits anyway
    lowering = _MatMulLowering(graph, model, captures, levels=levels, store=store, moments=moments,
                               pair_limit=pair_limit)
    for mm in list(graph.by_op("MatMul")):
        lowering.lower(mm)
    # The fp32 QDQ nodes of the lowered MatMuls are dead now.  Dropping them first makes every
    # remaining reader of an fp32 weight a real one (an lm_head kept fp32 still needs its table).
    graph.prune(list(model.outputs.values()), keep=[parse_input(t)[0] for t in model.inputs.values()])
    embedding = lower_embeddings(graph, captures, lowering.tables, store)
    drop_dead_weight_controls(graph, lowering.replaced_reads | set(embedding["replaced_reads"]))
    graph.toposort()
    return {
        "count": len(lowering.lowered),
        "kernel": KERNEL,
        "weight_granularity": "per_channel" if lowering.per_channel_ops else "per_tensor",
        "per_channel_ops": lowering.per_channel_ops,
        "weight_bits": weight_bits,
        "weight_pairs": "safe" if pair_safe or 2 * levels <= PAIR_LIMIT else "full",
        "pair_scaled_columns": lowering.pair_scaled_columns,
        "weight_storage": "int8 variables (scales as constants)",
        "ops": lowering.lowered,
        "not_lowered": lowering.not_lowered + embedding["not_lowered"],
        "embeddings": embedding["ops"],
        "tied_embeddings": embedding["tied"],
        "weight_rounding": lowering.rounding_report(),
    }


class _MatMulLowering:
    """QDQ MatMuls -> int8 kernels, one at a time, and what the embeddings and the cleanup need to know."""

    def __init__(self, graph: Graph, model, captures: Dict[str, object], levels: int, store=None, moments=None,
                 pair_limit: Optional[int] = None):
        self.graph, self.model, self.captures, self.levels, self.store = graph, model, captures, levels, store
        self.pair_limit = pair_limit  # None: codes use all of [-levels, levels]
        self.pair_scaled_columns = 0  # output columns whose scale grew so that their pairs fit
        self.moments = moments  # None: round to nearest
        self._solvers: Dict[tuple, object] = {}
        self._codes: Dict[tuple, tuple] = {}  # one rounding per weight, however many MatMuls read it
        self.gptq_ops: List[str] = []
        self.nearest_ops: List[dict] = []
        self.consumers = graph.consumers()
        self.gathered = graph.gathered_handles()
        self.lowered: List[str] = []
        self.not_lowered: List[dict] = []
        self.replaced_reads = set()
        self.per_channel_ops = 0
        self.tables: Dict[str, Int8Table] = {}  # fp32 table handle -> the tied lm_head's int8 weight
        self._requant: Dict[tuple, str] = {}
        self._weights: Dict[tuple, str] = {}  # one int8 variable per weight, however many MatMuls share it

    def lower(self, mm) -> None:
        graph = self.graph
        a_deq, w_deq = (graph.node(i) for i in mm.input[:2])
        if a_deq.op != "Dequantize" or w_deq.op != "Dequantize":
            return
        if mm.attr["transpose_a"].b:
            self.not_lowered.append({"op": mm.name, "reason": "transposed activation (transpose_a)"})
            return
        a_q, w_q = graph.node(a_deq.input[0]), graph.node(w_deq.input[0])
        per_channel = w_q.attr["axis"].i != -1
        weight_tensor, transposed = w_q.input[0], mm.attr["transpose_b"].b
        masked = _through_shape_ops(graph, weight_tensor)
        outlier_op = names.outlier_op_of_masked_weight(masked.name)
        unmasked = masked.input[0] if outlier_op else weight_tensor
        w = self._float_weight(weight_tensor, transposed)
        handle = self._tied_table(unmasked, transposed, w.shape)
        w_int8, w_max = self._quantized_weight(mm.name, weight_tensor, transposed, per_channel, w,
                                               tied=handle is not None, outlier_op=outlier_op)
        quant, a_mode, a_min, a_max = self._activation(a_q)
        bias_add, reshape, bias = self._foldable_bias(mm, w_int8.shape[1])
        qw = self.levels / w_max.astype(np.float64)
        bias_q = qint32_bias(bias, w_int8, qw, a_mode, a_min, a_max)

        w_read = self._int8_weight(weight_tensor, transposed, per_channel, w_int8)
        out_name = mm.name if reshape is not None or bias_add is None else bias_add.name
        prefix = f"{mm.name}_eightbit"
        # The kernel derives one weight scale as max|min_b, max_b| / 127 (scalars only).  Per
        # channel, the kernel runs with unit scale (max_b = 127: it sees the integers as they
        # are) and a Mul by 1/Qw_j per output column follows; the bias already holds Qw_j.
        kernel_max_b = np.float32(127.0) if per_channel else np.float32(float(w_max) * 127.0 / self.levels)
        kernel_name = f"{prefix}_int8_matmul" if per_channel else out_name
        kernel = _kernel_node(graph, kernel_name, prefix, quant, w_read, bias_q, kernel_max_b, a_mode)
        graph.remove([out_name] if bias_add is None else [bias_add.name, mm.name])
        graph.add(kernel)
        if bias_add is not None and reshape is not None:  # the bias is in the kernel; keep the name for readers
            graph.add(make_node("Identity", bias_add.name, [reshape.name], {"T": DType("float")}))
        row_scale = None
        if per_channel:
            row_scale = graph.add(make_const(f"{prefix}_channel_scale", (1.0 / qw).astype(np.float32))).name
            graph.add(make_node("Mul", out_name, [kernel_name, row_scale], {"T": DType("float")}))
        if handle is not None:  # an embedding tied to (or copied into) this lm_head: the gather will read w_read
            self.tables[handle] = Int8Table(
                w_read, row_scale, 0.0 if per_channel else float(1.0 / qw),
                names.outlier_channels(outlier_op) if outlier_op else None,
                names.outlier_weight(outlier_op) if outlier_op else None)
        self.replaced_reads.update(graph.weight_reads(weight_tensor))
        self.lowered.append(mm.name)
        self.per_channel_ops += int(per_channel)

    def _tied_table(self, weight_tensor: str, transposed: bool, shape) -> Optional[str]:
        """The gathered fp32 table whose rows are this weight's columns, else None.

        Tied: the lm_head reads the table itself, transposed (GPT-2, OPT).  Copied: the lm_head has a
        variable of its own holding the table transposed, value for value (Keras Mistral/Llama do not
        tie, so a tied checkpoint such as SmolLM2's is exported with the embedding copied into lm_head);
        with full-range 8-bit weights (``--weight_bits 8 --weight_pairs full``) one int8 copy then serves both,
        and the model does not carry the table twice.
        """
        handle = table_handle(self.graph, weight_tensor)
        if handle is None:
            return None
        if transposed:
            return handle if handle in self.gathered else None
        if self.model is None or handle in self.gathered or self.levels < 127 or self.pair_limit:
            # A copy shared at 7 bits, or with pair-safe codes (a column's step grows with its largest pair), is
            # coarser than the table's own 8-bit copy.  Measured on SmolLM2 (446 Austen items, calibrated on
            # Austen): 7-bit -1.12 shared vs -0.22 pt own copy; pair-safe 8-bit -1.57 shared (README).
            return None
        candidates = [t for t in sorted(self.gathered - set(self.tables))
                      if self.captures.get(t) is not None and tuple(self.captures[t].shape) == (shape[1], shape[0])]
        if candidates:
            columns = self.model.weight_value(self.graph, weight_tensor).T
            for table in candidates:
                if np.array_equal(self.captures[table].numpy(), columns):
                    return table
        return None

    def _float_weight(self, weight_tensor: str, transposed: bool) -> np.ndarray:
        """The fp32 weight [in, out] as the kernel will multiply by it.

        Measured (TF 2.15): the kernel's transpose_b=True fails to build ("could not create a primitive
        descriptor") or, for square weights, gives wrong results, so a transposed weight is stored transposed.
        """
        w = self.model.weight_value(self.graph, weight_tensor).astype(np.float32)
        return np.ascontiguousarray(w.T) if transposed else w

    def _quantized_weight(self, op: str, weight_tensor: str, transposed: bool, per_channel: bool, w: np.ndarray,
                          tied: bool, outlier_op: Optional[str]):
        """(int8 weight [in, out], max|w| per output column or per tensor), rounded once per weight.

        The scales are round-to-nearest's either way; with second moments for ``op`` the integers are GPTQ's.
        """
        key = (weight_tensor, transposed, per_channel)
        if key in self._codes:
            return self._codes[key]
        if per_channel:
            w_max = np.maximum(np.abs(w).max(axis=0), 1e-8).astype(np.float32)
        else:
            w_max = np.float32(max(float(np.abs(w).max()), 1e-8))
        if self.pair_limit:
            rtn_max = w_max
            w_max = pair_safe_max_abs(w, w_max, self.levels, self.pair_limit)
            self.pair_scaled_columns += int(np.sum(w_max > rtn_max))
        reason = self._nearest_reason(op, tied)
        if reason is None:
            codes = self._solver(op, outlier_op).quantize(w, w_max, self.levels)
            self.gptq_ops.append(op)
        else:
            codes = quantize_weight(w, w_max, self.levels)
            if self.moments is not None:
                self.nearest_ops.append({"op": op, "reason": reason})
        if self.pair_limit:  # rounding up both codes of a pair (or GPTQ's updates) can still go one over
            codes = fit_pairs(codes, w * (self.levels / w_max.astype(np.float64)), self.pair_limit)
        self._codes[key] = (codes, w_max)
        return self._codes[key]

    def _nearest_reason(self, op: str, tied: bool) -> Optional[str]:
        """Why ``op``'s weight is rounded to nearest under GPTQ rounding (None: it is not)."""
        if self.moments is None:
            return "round to nearest"
        if tied:  # the gather reads these integers as embedding rows, which the compensation knows nothing of
            return "the int8 weight is also an embedding table"
        if op not in self.moments:
            return "no second moments (beyond the memory budget, or the input was not observed)"
        return None

    def _solver(self, op: str, outlier_op: Optional[str]):
        """One GPTQ solver per (input tensor, exact rows): q/k/v and gate/up share theirs."""
        from .gptq import GptqSolver

        tensor, h = self.moments[op]
        exact = ()
        if outlier_op:
            exact = tuple(int(i) for i in const_value(self.graph.node(names.outlier_channels(outlier_op))))
        key = (tensor, exact)
        if key not in self._solvers:
            self._solvers[key] = GptqSolver(h, exact)
        return self._solvers[key]

    def rounding_report(self) -> dict:
        if self.moments is None:
            return {"method": "nearest"}
        return {"method": "gptq", "gptq_ops": len(self.gptq_ops), "nearest": self.nearest_ops}

    def _activation(self, a_q):
        """(the quint8 quantize node the kernel reads, its mode, min, max), one per QDQ activation.

        The kernel needs quint8: a symmetric qint8 activation (performance_only) is re-expressed
        as quint8 MIN_FIRST over the same [-m, m] range.
        """
        a_min = float(self.graph.node(a_q.input[1]).attr["value"].tensor.float_val[0])
        a_max = float(self.graph.node(a_q.input[2]).attr["value"].tensor.float_val[0])
        a_mode = a_q.attr["mode"].s.decode()
        if a_q.attr["T"].type != DType("quint8").enum:
            a_mode = "MIN_FIRST"
        quant = self._requant.get((a_q.name, a_mode))
        if quant is None:
            quant = _quantize_activation(self.graph, a_q, a_mode)
            self._requant[(a_q.name, a_mode)] = quant
        return quant, a_mode, a_min, a_max

    def _int8_weight(self, weight_tensor: str, transposed: bool, per_channel: bool, w_int8: np.ndarray) -> str:
        key = (weight_tensor, transposed, per_channel)
        if key not in self._weights:
            base = f"{parse_input(weight_tensor)[0]}_int8"
            self._weights[key] = _new_qint8_variable(self.graph, self.captures, base, w_int8, self.store)
        return self._weights[key]

    def _foldable_bias(self, mm, width: int):
        """(BiasAdd to fold into the kernel or None, the Reshape before it or None, the bias values).

        The MatMul's only consumer, or the only consumer of a Reshape that is the MatMul's only consumer
        (Keras Dense on 3-D input: Tensordot's MatMul -> Reshape -> BiasAdd, as in GPT-J's fc_in/fc_out/
        lm_head; also a BatchMatMul the rewrite made a MatMul).  A bias on the last axis is the same
        before and after that Reshape, which keeps the last axis (BiasAdd would fail otherwise).
        """
        bias_add = _single_consumer(self.consumers, mm.name, "BiasAdd")
        reshape = None
        if bias_add is None:
            reshape = _single_consumer(self.consumers, mm.name, "Reshape")
            bias_add = _single_consumer(self.consumers, reshape.name, "BiasAdd") if reshape is not None else None
        if bias_add is not None and bias_add.attr["data_format"].s not in (b"", b"NHWC"):
            bias_add = None
        if bias_add is not None:
            try:
                bias = self.model.weight_value(self.graph, self.graph.skip_identity(bias_add.input[1]))
                return bias_add, reshape, bias.astype(np.float32)
            except (ValueError, KeyError):
                bias_add = None
        return bias_add, reshape, np.zeros(width, np.float32)


def qint32_bias(bias: np.ndarray, w_int8: np.ndarray, qw, a_mode: str, a_min: float, a_max: float) -> np.ndarray:
    """The kernel's bias: round(Qa*Qw*b + Qa*min_a*colsum(W_int8)) (the MIN_FIRST compensation folded in)."""
    qa = 255.0 / (a_max - a_min) if a_mode == "MIN_FIRST" else 255.0 / max(abs(a_max), abs(a_min))
    comp = qa * a_min * w_int8.astype(np.int64).sum(axis=0) if a_mode == "MIN_FIRST" else 0.0
    bias_q = np.round(qa * qw * bias.astype(np.float64) + comp)
    return np.clip(bias_q, -2**31, 2**31 - 1).astype(np.int32)


def _kernel_node(graph: Graph, name: str, prefix: str, quant: str, w_read: str, bias_q: np.ndarray,
                 max_b: np.float32, a_mode: str):
    """The kernel NodeDef and its constant inputs (added to the graph here; the kernel itself is not)."""
    b_const = make_const(f"{prefix}_bias", bias_q)
    b_const.attr["dtype"].type = DType("qint32").enum
    b_const.attr["value"].tensor.dtype = DType("qint32").enum
    graph.add(b_const)
    wmin = graph.add(make_const(f"{prefix}_min_b", -max_b))
    wmax = graph.add(make_const(f"{prefix}_max_b", max_b))
    fmin = graph.add(make_const(f"{prefix}_min_freezed_output", np.float32(0.0)))
    fmax = graph.add(make_const(f"{prefix}_max_freezed_output", np.float32(1.0)))
    return make_node(KERNEL, name, [quant, w_read, b_const.name, f"{quant}:1", f"{quant}:2",
                                    wmin.name, wmax.name, fmin.name, fmax.name], {
        "T1": DType("quint8"), "T2": DType("qint8"), "Tbias": DType("qint32"), "Toutput": DType("float"),
        "transpose_a": False, "transpose_b": False, "input_quant_mode": a_mode,
        "is_weight_const": True, "is_bias_const": True, "_kernel": MKL_LABEL})


def drop_dead_weight_controls(graph: Graph, replaced: set) -> None:
    """Control edges to replaced fp32 weight reads would keep the fp32 weights in the model."""
    consumers = graph.consumers()
    dead = []
    for name in replaced:
        data_users = [u for u in consumers.get(name, []) if any(parse_input(i)[0] == name and not i.startswith("^") for i in u.input)]
        if not data_users:
            dead.append(name)
    graph.drop_control_inputs_from(dead)
