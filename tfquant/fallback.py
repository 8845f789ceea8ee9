"""Sensitivity analysis and measured fallback (the library; ``python -m tfquant.sensitivity`` is its CLI).

One instrumented copy of the QDQ graph answers every "what if only these ops were
quantized?" question: each QDQ input of a quantized op goes through
``SelectV2(mask[i] > 0.5, dequantized, original)``, and ``mask`` is an extra graph
input.  Building the graph once and feeding different masks makes a per-op ranking of
a 200-MatMul model a matter of minutes instead of 200 conversions.

Sensitivity of op i = KL(p_fp32 || p_i) of the next-token distributions, averaged over
every position of the calibration windows, with only op i quantized.  The fallback
recipe keeps the most sensitive ops in fp32, one at a time, until the fully quantized
model's KL is within a budget.
"""
from __future__ import annotations

import copy
import sys
from dataclasses import dataclass
from typing import List, Sequence

import numpy as np

from .divergence import log_softmax, mean_kl
from .graph import DType, Graph, make_const, make_node, parse_input
from .savedmodel import LOGITS_KEY

MASK_INPUT = "tfquant_quant_mask"


@dataclass
class Switchable:
    ops: List[str]          # quantized ops, in mask order
    run: object             # run(mask, feeds) -> logits
    fp32_logp: List[np.ndarray]
    batches: list

    def kl(self, mask: np.ndarray) -> float:
        """Mean KL(fp32 || masked model) over all positions of all batches."""
        return mean_kl(self.fp32_logp, [log_softmax(self.run(mask, feeds)) for feeds in self.batches])


def make_switchable(graph: Graph, quantized_ops: Sequence[str], model, captures, batches) -> Switchable:
    """Instrument a QDQ graph (``rewrite.insert_qdq`` output, not lowered) with one switch per op."""
    import tensorflow as tf

    from . import savedmodel

    g = Graph(graph.to_graph_def())
    mask = g.add(make_node("Placeholder", MASK_INPUT, attrs={"dtype": DType("float")}))
    mask.attr["shape"].shape.CopyFrom(tf.TensorShape([len(quantized_ops)]).as_proto())
    g.add(make_const(f"{MASK_INPUT}/half", np.float32(0.5)))
    g.add(make_const(f"{MASK_INPUT}/axis", np.int32(0)))
    for i, op in enumerate(quantized_ops):
        node = g.node(op)
        base = f"{op}/tfquant_switch"
        g.add(make_const(f"{base}/index", np.int32(i)))
        g.add(make_node("GatherV2", f"{base}/flag", [MASK_INPUT, f"{base}/index", f"{MASK_INPUT}/axis"],
                        {"Tparams": DType("float"), "Tindices": DType("int32"), "Taxis": DType("int32"), "batch_dims": 0}))
        g.add(make_node("Greater", f"{base}/on", [f"{base}/flag", f"{MASK_INPUT}/half"], {"T": DType("float")}))
        for k, inp in enumerate(list(node.input)):
            deq = g.nodes.get(parse_input(inp)[0])
            if deq is None or deq.op != "Dequantize":
                continue
            original = g.node(deq.input[0]).input[0]  # QuantizeV2's float input
            sel = g.add(make_node("SelectV2", f"{base}/select_{k}", [f"{base}/on", inp, original], {"T": DType("float")}))
            node.input[k] = sel.name
    inputs = dict(model.inputs, **{MASK_INPUT: f"{MASK_INPUT}:0"})
    specs = dict(model.input_specs, **{MASK_INPUT: tf.TensorSpec([len(quantized_ops)], tf.float32, name=MASK_INPUT)})
    sw_model = copy.copy(model)
    sw_model.inputs, sw_model.input_specs = inputs, specs
    logits = {LOGITS_KEY: model.outputs[LOGITS_KEY]}  # the other outputs (past_key_values) are not scored
    fn = savedmodel.build_function(g.to_graph_def(), sw_model, captures, logits)

    def run(m, feeds):
        return fn(**feeds, **{MASK_INPUT: np.asarray(m, np.float32)})[LOGITS_KEY].numpy()

    zeros = np.zeros(len(quantized_ops), np.float32)
    fp32 = [log_softmax(run(zeros, feeds)) for feeds in batches]
    return Switchable(list(quantized_ops), run, fp32, batches)


def rank_ops(sw: Switchable, progress: bool = True) -> List[dict]:
    """KL with only op i quantized, for every i; most sensitive first (ties by name: deterministic)."""
    from tqdm import tqdm

    rows = []
    for i, op in enumerate(tqdm(sw.ops, desc="sensitivity", unit="op", disable=not progress)):
        mask = np.zeros(len(sw.ops), np.float32)
        mask[i] = 1.0
        rows.append({"op": op, "kl_only_this_op": sw.kl(mask)})
    rows.sort(key=lambda r: (-r["kl_only_this_op"], r["op"]))
    return rows


def select_fallback(sw: Switchable, ranking: List[dict], budget_kl: float, max_ops: int, progress: bool = True):
    """Greedily keep the most sensitive ops in fp32 until KL(all the rest quantized) <= budget."""
    mask = np.ones(len(sw.ops), np.float32)
    index = {op: i for i, op in enumerate(sw.ops)}
    history = [{"fallback": 0, "kl": sw.kl(mask)}]
    chosen = []
    for row in ranking[:max_ops]:
        if history[-1]["kl"] <= budget_kl:
            break
        mask[index[row["op"]]] = 0.0
        chosen.append(row["op"])
        history.append({"fallback": len(chosen), "op": row["op"], "kl": sw.kl(mask)})
        if progress:
            print(f"  fallback {len(chosen):3d}: KL {history[-1]['kl']:.4f}  ({row['op']})", file=sys.stderr)
    return chosen, history
