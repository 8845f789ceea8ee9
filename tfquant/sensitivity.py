"""Sensitivity analysis and measured fallback.

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

import argparse
import copy
import json
import sys
from dataclasses import dataclass
from typing import Dict, List, Sequence

import numpy as np

from .errors import UserError, run_cli
from .savedmodel import LOGITS_KEY, SIGNATURE_KEY
from .policy import DEFAULT_MAX_OUTLIER_FRACTION, DEFAULT_OUTLIER_THRESHOLD, DEFAULT_TOKEN_OUTLIER_THRESHOLD
from .graph import DType, Graph, make_const, make_node, parse_input

MASK_INPUT = "tfquant_quant_mask"


@dataclass
class Switchable:
    ops: List[str]          # quantized ops, in mask order
    run: object             # run(mask, feeds) -> logits
    fp32_logp: List[np.ndarray]
    batches: list

    def kl(self, mask: np.ndarray) -> float:
        """Mean KL(fp32 || masked model) over all positions of all batches."""
        total, count = 0.0, 0
        for feeds, ref in zip(self.batches, self.fp32_logp):
            logits = self.run(mask, feeds)
            logp = _log_softmax(logits)
            total += float((np.exp(ref) * (ref - logp)).sum(-1).sum())
            count += int(np.prod(ref.shape[:-1]))
        return total / max(count, 1)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


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
    fp32 = [_log_softmax(run(zeros, feeds)) for feeds in batches]
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


# ----- CLI: print the ranking -------------------------------------------------------------------
def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tfquant.sensitivity",
                                description="Rank quantized ops by how much quantizing only them changes the output.")
    p.add_argument("--input_model", required=True, help="as in tfquant.quantize")
    p.add_argument("--signature", default=SIGNATURE_KEY, help="as in tfquant.quantize")
    p.add_argument("--tokenizer", help="as in tfquant.quantize")
    p.add_argument("--calib_dataset", help="as in tfquant.quantize")
    p.add_argument("--data_dir", help="as in tfquant.quantize")
    p.add_argument("--samples", type=int, default=2, help="calibration windows used for the KL (default 2)")
    p.add_argument("--seq_len", type=int, default=128)
    p.add_argument("--calib_samples", type=int, default=16)
    p.add_argument("--calib_text")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--outlier_threshold", type=float, default=DEFAULT_OUTLIER_THRESHOLD, help="as in tfquant.quantize")
    p.add_argument("--token_outlier_threshold", type=float, default=DEFAULT_TOKEN_OUTLIER_THRESHOLD, help="as in tfquant.quantize")
    p.add_argument("--max_outlier_fraction", type=float, default=DEFAULT_MAX_OUTLIER_FRACTION, help="as in tfquant.quantize")
    p.add_argument("--observer", choices=("minmax", "percentile", "mse", "kl"), default="mse",
                   help="as in tfquant.quantize (default mse, its default)")
    p.add_argument("--weight_granularity", choices=("per_channel", "per_tensor"), default="per_channel")
    p.add_argument("--output", help="write the full ranking as JSON")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.samples <= 0 or args.top <= 0:
        raise UserError("--samples and --top must be positive")
    from .convert import open_input, prepare_qdq
    from .policy import QuantPolicy

    policy = QuantPolicy.from_flags(output_format="qdq", outlier_threshold=args.outlier_threshold,
                                    token_outlier_threshold=args.token_outlier_threshold,
                                    max_outlier_fraction=args.max_outlier_fraction,
                                    weight_granularity=args.weight_granularity)
    inp = open_input(args.input_model, signature=args.signature, tokenizer=args.tokenizer,
                     calib_dataset=args.calib_dataset, data_dir=args.data_dir, calib_text=args.calib_text,
                     calib_samples=args.calib_samples, seq_len=args.seq_len)
    prep = prepare_qdq(inp, policy, observer=args.observer, progress=not args.quiet)
    sw = make_switchable(prep.graph, prep.quantized_ops, prep.model, prep.model.captures, prep.batches[: args.samples])
    ranking = rank_ops(sw, progress=not args.quiet)
    full = sw.kl(np.ones(len(sw.ops), np.float32))
    print(f"KL(fp32 || all {len(sw.ops)} ops quantized) = {full:.4f}")
    print(f"{'rank':>4}  {'KL only this op':>16}  op")
    for i, row in enumerate(ranking[: args.top], 1):
        print(f"{i:4d}  {row['kl_only_this_op']:16.5f}  {row['op']}")
    if args.output:
        with open(args.output, "w") as fh:
            json.dump({"kl_all_quantized": full, "ranking": ranking}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
