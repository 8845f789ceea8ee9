"""Rewrite: apply the quantizers' plans as QuantizeV2/Dequantize pairs.

Input: the extracted graph, the policy, the calibrated ranges and a way to read weight values.
It never runs the model.  QuantizeV2 nodes that would read the same tensor with the same
parameters are created once and shared (q, k, v and fc_in of a GPT-J block read one tensor).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Dict, List

import numpy as np

from . import names
from .graph import DType, Graph, canonical, make_const, make_node, parse_input
from .qparams import weight_scale_range
from .quantizers import QUANTIZERS, ActivationQ, Plan, Skip, WeightQ
from .quantizers.matmul import weight_operand

# fp32 weights written as Consts (itex_mode) must leave room for the rest of the graph under protobuf's 2 GB cap.
CONST_WEIGHT_BUDGET_BYTES = 1536 * 1024 * 1024


@dataclass
class RewriteResult:
    quantized: List[dict] = field(default_factory=list)
    skipped: List[dict] = field(default_factory=list)
    shared_quantize_nodes: int = 0
    weights_as_const: dict = field(default_factory=dict)  # {"enabled", "bytes", "reason"} when asked for


def plan_all(graph: Graph, policy, ranges) -> List[object]:
    """Ask each registered quantizer about each node, in graph order (deterministic)."""
    decisions = []
    for node in list(graph.nodes.values()):
        quantizer = QUANTIZERS.get(node.op)
        if quantizer is None:
            continue
        decision = quantizer.plan(node, graph, policy, ranges)
        if decision is not None:
            decisions.append(decision)
    return decisions


def matmul_weight(weight_values: Callable[[str], np.ndarray], q: WeightQ) -> np.ndarray:
    """The weight as the MatMul multiplies by it, [in, out] (a transposed weight is stored [out, in])."""
    w = np.asarray(weight_values(q.tensor), np.float32)
    return w.T if q.transposed else w


def settle_weight_granularity(decisions, weight_values, policy) -> list:
    """Per-channel weight scales only where the columns' ranges differ by more than ``per_channel_min_spread``.

    Real LLM weights differ 1.4-16x between columns (SmolLM2-135M) and keep per-channel scales; a weight with
    near-uniform columns (a random initialisation) gets one scale and its int8 kernel no rescale ``Mul``.
    """
    out = []
    for d in decisions:
        if isinstance(d, Plan) and d.weight is not None and d.weight.per_channel:
            col_max = np.abs(matmul_weight(weight_values, d.weight)).max(axis=0)
            if float(col_max.max()) <= policy.per_channel_min_spread * max(float(col_max.min()), 1e-12):
                d = replace(d, weight=replace(d.weight, per_channel=False))
        out.append(d)
    return out


def _shape_proto(shape):
    from tensorflow.core.framework import tensor_shape_pb2

    return tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=int(d)) for d in shape])


def _round_mode(mode: str) -> str:
    return "HALF_TO_EVEN" if mode == "SCALED" else "HALF_AWAY_FROM_ZERO"


def _quantize_attrs(dtype: str, mode: str, axis: int = -1) -> dict:
    return {"T": DType(dtype), "mode": mode, "round_mode": _round_mode(mode), "narrow_range": False,
            "axis": axis, "ensure_minimum_range": 0.01}


def _dequantize_attrs(dtype: str, mode: str, axis: int = -1) -> dict:
    return {"T": DType(dtype), "mode": mode, "narrow_range": False, "axis": axis, "dtype": DType("float")}


class QDQInserter:
    def __init__(self, graph: Graph, weight_values: Callable[[str], np.ndarray], weights_as_const: bool = False):
        self.graph = graph
        self.weight_values = weight_values
        self.weights_as_const = weights_as_const
        self._act_quantize: Dict[tuple, str] = {}
        self._weight_dequantize: Dict[tuple, str] = {}
        self.shared = 0

    def activation(self, op: str, q: ActivationQ) -> str:
        """QuantizeV2 (shared per tensor+params) and this op's own Dequantize; returns the Dequantize."""
        key = (q.tensor, q.dtype, q.mode, q.min, q.max)
        quant = self._act_quantize.get(key)
        if quant is None:
            quant = names.act_quantize(op, q.tensor)
            lo = self.graph.add(make_const(names.act_min(op, q.tensor), np.float32(q.min)))
            hi = self.graph.add(make_const(names.act_max(op, q.tensor), np.float32(q.max)))
            self.graph.add(make_node("QuantizeV2", quant, [q.tensor, lo.name, hi.name], _quantize_attrs(q.dtype, q.mode)))
            self._act_quantize[key] = quant
        else:
            self.shared += 1
        deq = names.act_dequantize(op, q.input_index)
        self.graph.add(make_node("Dequantize", deq, [quant, f"{quant}:1", f"{quant}:2"], _dequantize_attrs(q.dtype, q.mode)))
        return deq

    def weight(self, q: WeightQ) -> str:
        key = (q.tensor, q.per_channel, q.transposed)
        if key in self._weight_dequantize:
            return self._weight_dequantize[key]
        w_node = parse_input(q.tensor)[0]
        lo, hi = weight_scale_range(matmul_weight(self.weight_values, q), q.per_channel)
        # Output channels are the columns of an [in, out] weight, the rows of a transposed one.
        axis = (0 if q.transposed else 1) if q.per_channel else -1
        mn = self.graph.add(make_const(names.weight_min(w_node), lo))
        mx = self.graph.add(make_const(names.weight_max(w_node), hi))
        quant = names.weight_quantize(w_node)
        source = q.tensor
        if self.weights_as_const:
            # The fp32 value itself (outlier rows already masked): what ITEX's QDQ fusion pattern starts from.
            value = np.asarray(self.weight_values(q.tensor), np.float32)
            source = self.graph.add(make_const(f"{quant}/fp32_weight", value)).name
        elif q.per_channel:
            # A variable read has no static shape in an imported GraphDef, and QuantizeV2/Dequantize
            # with an axis need a known rank: state the shape.
            shape = self.weight_values(q.tensor).shape
            source = self.graph.add(make_node("EnsureShape", f"{quant}/shape", [q.tensor],
                                              {"T": DType("float")})).name
            self.graph.node(source).attr["shape"].shape.CopyFrom(_shape_proto(shape))
        self.graph.add(make_node("QuantizeV2", quant, [source, mn.name, mx.name], _quantize_attrs("qint8", "SCALED", axis)))
        deq = names.weight_dequantize(w_node)
        self.graph.add(make_node("Dequantize", deq, [quant, f"{quant}:1", f"{quant}:2"], _dequantize_attrs("qint8", "SCALED", axis)))
        self._weight_dequantize[key] = deq
        return deq


def split_outliers(graph: Graph, node, plan: Plan, weight_values) -> WeightQ:
    """y = x @ W  ->  y = Q(x) @ Q(W * row_mask) + gather(x, outliers) @ W[outliers]

    QuantizeV2 saturates the outlier channels at the edge of the (now narrow) range, and
    their weight rows are zero in the int8 weight, so they contribute nothing there; the
    thin fp32 MatMul adds their exact contribution.  Consumers of the op read the sum.
    """
    op, idx = node.name, np.asarray(plan.outlier_channels, np.int32)
    w = matmul_weight(weight_values, plan.weight)
    act = canonical(node.input[0])
    readers = graph.readers(op)
    prefix = names.outlier_prefix(op)
    channels, side_weight, masked = names.outlier_channels(op), names.outlier_weight(op), names.outlier_masked_weight(op)
    graph.add(make_const(channels, idx))
    graph.add(make_const(f"{prefix}/axis", np.int32(1)))
    graph.add(make_node("GatherV2", f"{prefix}/gather", [act, channels, f"{prefix}/axis"],
                        {"Tparams": DType("float"), "Tindices": DType("int32"), "Taxis": DType("int32"), "batch_dims": 0}))
    # A Const, not a variable: tried as a shared variable, two-signature SmolLM2 0.291x -> 0.278x of fp32, but 1x128
    # median 172.5 vs 163.7 ms (40 rounds, round robin): oneDNN caches the packed weight of a Const MatMul operand,
    # not of a variable read.  Signatures that hold the same Const store it once (tfquant/sharedconst.py).
    graph.add(make_const(side_weight, w[idx, :]))
    graph.add(make_node("MatMul", f"{prefix}/matmul", [f"{prefix}/gather", side_weight],
                        {"T": DType("float"), "transpose_a": False, "transpose_b": False}))
    mask = np.ones((w.shape[0], 1), np.float32)
    mask[idx] = 0.0
    graph.add(make_const(f"{prefix}/row_mask", mask.T if plan.weight.transposed else mask))
    graph.add(make_node("Mul", masked, [plan.weight.tensor, f"{prefix}/row_mask"], {"T": DType("float")}))
    graph.add(make_node("AddV2", f"{prefix}/add", [op, f"{prefix}/matmul"], {"T": DType("float")}))
    graph.redirect(op, f"{prefix}/add", readers)
    return replace(plan.weight, tensor=masked)


def _keep_tied_tables_fp32(graph: Graph, decisions) -> list:
    """itex_mode: a weight that is also an embedding table (a tied lm_head) is not quantized.

    ITEX fuses only fp32 Const weights, and the gather still reads the table's variable, so a
    Const copy would store the table twice (GPT-2: 1.85x the fp32 model instead of ~1x).
    """
    tables = graph.gathered_handles()
    out = []
    for d in decisions:
        w = None if isinstance(d, Skip) or d.weight is None else graph.node(d.weight.tensor)
        if w is not None and w.op == "ReadVariableOp" and graph.resource_handle(w.name) in tables:
            d = Skip(d.op, d.op_type, "itex_mode: the weight is also an embedding table, and ITEX fuses only "
                                      "Const weights (a Const copy would store the table twice)")
        out.append(d)
    return out


def _const_weight_plan(decisions, weight_values) -> dict:
    """Whether every quantized weight fits into the GraphDef as an fp32 Const (itex_mode)."""
    total = 0
    for d in decisions:
        if not isinstance(d, Skip) and d.weight is not None:
            total += int(np.asarray(weight_values(d.weight.tensor)).size) * 4
    if total > CONST_WEIGHT_BUDGET_BYTES:
        return {"enabled": False, "bytes": total,
                "reason": f"{total / 2**30:.2f} GiB of fp32 weights cannot be GraphDef Consts (2 GB protobuf cap); "
                          "weights stay variables, which ITEX reads but may not fuse"}
    return {"enabled": True, "bytes": total, "reason": "itex_mode: fp32 Const -> QuantizeV2 -> Dequantize, as ITEX fuses"}


def scale_per_token(graph: Graph, node, plan: Plan, weight_values) -> str:
    """y = x @ W  ->  s = max|x_row| (outlier channels excluded);  y = (Q(x / s) @ Q(W)) * s

    Per-token activation scales for the int8 kernels, which take one scalar range per input:
    the rows are normalised to [-1, 1] before QuantizeV2 and the output rows multiplied back.
    A handful of tokens with massive activations (SmolLM2's first token reaches 2,725 in a
    down_proj input whose median token stays under 1.4) then no longer set every other token's
    step size.  Any bias is added after the rescale (the Mul sits between MatMul and BiasAdd).
    Returns the tensor to quantize in place of ``x``.
    """
    op = node.name
    prefix = names.per_token_prefix(op)
    act = canonical(node.input[0])
    readers = graph.readers(op)
    source = act
    if plan.outlier_channels:  # they run in fp32 on the side; they must not set the row scale
        mask = np.ones((1, matmul_weight(weight_values, plan.weight).shape[0]), np.float32)
        mask[0, list(plan.outlier_channels)] = 0.0
        mask_name = f"{prefix}/channel_mask"
        graph.add(make_const(mask_name, mask))
        source = graph.add(make_node("Mul", f"{prefix}/masked", [act, mask_name], {"T": DType("float")})).name
    graph.add(make_node("Abs", f"{prefix}/abs", [source], {"T": DType("float")}))
    graph.add(make_const(f"{prefix}/axis", np.int32(1)))
    graph.add(make_node("Max", f"{prefix}/row_max", [f"{prefix}/abs", f"{prefix}/axis"],
                        {"T": DType("float"), "Tidx": DType("int32"), "keep_dims": True}))
    graph.add(make_const(f"{prefix}/floor", np.float32(1e-6)))
    graph.add(make_node("Maximum", f"{prefix}/scale", [f"{prefix}/row_max", f"{prefix}/floor"], {"T": DType("float")}))
    graph.add(make_node("RealDiv", f"{prefix}/normalized", [source, f"{prefix}/scale"], {"T": DType("float")}))
    graph.add(make_node("Mul", f"{prefix}/rescaled", [op, f"{prefix}/scale"], {"T": DType("float")}))
    graph.redirect(op, f"{prefix}/rescaled", readers)
    return f"{prefix}/normalized"


def _int32_const(graph: Graph, name: str, value) -> str:
    return graph.add(make_const(name, np.asarray(value, np.int32))).name


def as_plain_matmul(graph: Graph, node, weight: WeightQ, weight_values):
    """Make a weight (Batch)MatMul a 2-D ``MatMul(x, W, transpose_b)`` reading W as stored; returns it.

    The int8 kernel (and every pass after this one) knows only that form.  A Transpose op on W
    becomes the transpose_b flag.  A BatchMatMul by a 2-D weight [K, N] (GPT-2's lm_head) becomes

        Reshape(x, [-1, K]) -> MatMul (same name) -> Reshape(rows of x + [N])

    with the shape read at run time (batch and sequence length are dynamic).  An ExpandDims'd
    weight [1, K, N] broadcasts a 2-D x to [1, M, N]: BroadcastArgs keeps that output rank.
    """
    if node.op == "MatMul":
        node.attr["transpose_b"].b = weight.transposed
        return node
    op, x = node.name, canonical(node.input[0])
    k, n = matmul_weight(weight_values, weight).shape
    broadcast = weight_operand(graph, node).broadcast
    readers = graph.readers(op)
    base = f"{op}/as_matmul"
    i32, f32 = DType("int32"), DType("float")
    flat = graph.add(make_node("Reshape", f"{base}/flat", [x, _int32_const(graph, f"{base}/flat_shape", [-1, k])],
                               {"T": f32, "Tshape": i32}))
    graph.add(make_node("Shape", f"{base}/x_shape", [x], {"T": f32, "out_type": i32}))
    rows = graph.add(make_node("StridedSlice", f"{base}/rows", [
        f"{base}/x_shape", _int32_const(graph, f"{base}/begin", [0]), _int32_const(graph, f"{base}/end", [-1]),
        _int32_const(graph, f"{base}/stride", [1])], {"T": i32, "Index": i32, "begin_mask": 0, "end_mask": 0,
                                                     "ellipsis_mask": 0, "new_axis_mask": 0, "shrink_axis_mask": 0}))
    shape = graph.add(make_node("ConcatV2", f"{base}/out_shape", [
        rows.name, _int32_const(graph, f"{base}/n", [n]), _int32_const(graph, f"{base}/axis", 0)],
        {"N": 2, "T": i32, "Tidx": i32})).name
    if broadcast:
        shape = graph.add(make_node("BroadcastArgs", f"{base}/broadcast_shape", [
            shape, _int32_const(graph, f"{base}/weight_shape", [1, 1, n])], {"T": i32})).name
    controls = [i for i in node.input if i.startswith("^")]
    graph.remove([op])
    mm = graph.add(make_node("MatMul", op, [flat.name, node.input[1]] + controls,
                             {"T": f32, "transpose_a": False, "transpose_b": weight.transposed}))
    out = graph.add(make_node("Reshape", f"{base}/unflat", [op, shape], {"T": f32, "Tshape": i32}))
    graph.redirect(op, out.name, readers)
    return mm


def insert_qdq(graph: Graph, decisions, weight_values: Callable[[str], np.ndarray],
               weights_as_const: bool = False) -> RewriteResult:
    result = RewriteResult()
    if weights_as_const:
        decisions = _keep_tied_tables_fp32(graph, decisions)
        result.weights_as_const = _const_weight_plan(decisions, weight_values)
        weights_as_const = result.weights_as_const["enabled"]
    inserter = QDQInserter(graph, weight_values, weights_as_const)
    for d in decisions:
        if isinstance(d, Skip):
            result.skipped.append(asdict(d))
            continue
        node = graph.node(d.op)
        weight = d.weight
        activations = d.activations
        if weight is not None:
            if node.op != "MatMul" and np.ndim(weight_values(weight.tensor)) != 2:  # MatMul's are 2-D anyway
                skip = Skip(d.op, d.op_type, "the weight is not 2-D (a batch of weights is not one MatMul)")
                result.skipped.append(asdict(skip))
                continue
            node = as_plain_matmul(graph, node, weight, weight_values)
            activations = [replace(q, tensor=canonical(node.input[0])) if q.input_index == 0 else q
                           for q in activations]
        if d.outlier_channels:
            weight = split_outliers(graph, node, d, weight_values)
        if d.per_token:  # after the outlier split: the rescale must not touch the fp32 side MatMul's share
            normalized = scale_per_token(graph, node, d, weight_values)
            activations = [replace(q, tensor=normalized) if q.input_index == 0 else q for q in activations]
        for q in activations:
            graph.rewire_input(node, q.input_index, inserter.activation(d.op, q))
        if weight is not None:
            graph.rewire_input(node, weight.input_index, inserter.weight(weight))
        result.quantized.append({
            "op": d.op, "op_type": d.op_type,
            "activations": [asdict(a) for a in d.activations],
            "weight": asdict(weight) if weight else None,
            "outlier_channels": list(d.outlier_channels),
            "per_token": d.per_token,
            "fused_from": list(d.fused_from),
        })
    result.shared_quantize_nodes = inserter.shared
    graph.toposort()
    return result
