"""ConvertSavedModel: extract -> calibrate -> rewrite -> lower -> save."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Iterable, Optional

import numpy as np

from . import savedmodel
from .calibrate import activation_tensors, calibrate, matmul_inputs
from .errors import UserError
from .fsutil import atomic_output_dir, check_output_dir, dir_size_bytes
from .graph import Graph
from .graphio import write_graph_def
from .policy import (DEFAULT_MAX_OUTLIER_FRACTION, DEFAULT_OUTLIER_THRESHOLD, DEFAULT_PER_CHANNEL_MIN_SPREAD,
                     DEFAULT_TOKEN_OUTLIER_THRESHOLD, QuantPolicy)
from .report import write_json
from .quantizers import Skip
from .rewrite import insert_qdq, plan_all, settle_weight_granularity

EXTRACTED_PB = "extracted_graph_def.pb"
CONVERTED_PB = "converted_graph_def.pb"
REPORT_JSON = "report.json"
MODEL_SUBDIR = "model"


def tokenizer_for_model(model_dir: str):
    """The model's own tokenizer when the SavedModel folder carries one, else GPT-2 BPE (GPT-J's)."""
    own = os.path.join(model_dir, "tokenizer")
    if os.path.isdir(own):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(own)
    from .data import gpt2_tokenizer

    return gpt2_tokenizer()


def make_feeds(model: savedmodel.ExtractedModel, ids: np.ndarray) -> dict:
    feeds = {"input_ids": ids.astype(np.int32)}
    for name in model.inputs:
        if name == "attention_mask":
            feeds[name] = np.ones_like(feeds["input_ids"])
        elif name != "input_ids":
            raise UserError(f"the serving signature has an input '{name}' tfquant does not know how to feed "
                            "(supported: input_ids, attention_mask)")
    return feeds


def calibration_batches(model, model_dir: str, calib_text: Optional[str], calib_samples: int, seq_len: int):
    from .data import default_calibration_text_path, read_text, token_windows

    text = read_text(calib_text or default_calibration_text_path())
    windows = token_windows(text, tokenizer_for_model(model_dir), calib_samples, seq_len)
    return [make_feeds(model, w) for w in windows]


@dataclass
class Prepared:
    """Everything up to and including QDQ insertion (shared by conversion and sensitivity analysis)."""

    model: savedmodel.ExtractedModel
    policy: QuantPolicy
    graph: Graph                 # the QDQ graph
    before: dict                 # op histogram of the extracted graph
    ranges: dict                 # as calibrated (before smoothing)
    result: object               # rewrite.RewriteResult
    smoothing: list
    batches: list
    timings: dict

    @property
    def quantized_ops(self):
        return [q["op"] for q in self.result.quantized]


def prepare_qdq(src: str, policy: Optional[QuantPolicy] = None, *, calib_text: Optional[str] = None,
                calib_samples: int = 16, seq_len: int = 128, observer: str = "minmax", progress: bool = True,
                model: Optional[savedmodel.ExtractedModel] = None, ranges: Optional[dict] = None,
                fallback_ops: Iterable[str] = ()) -> Prepared:
    """extract -> calibrate -> plan -> insert QDQ.  ``model``/``ranges`` skip work already done;
    ``fallback_ops`` are kept in fp32 (the measured-fallback decision)."""
    policy = policy or QuantPolicy.from_flags()
    timings = {}
    if model is None:
        t = time.perf_counter()
        model = savedmodel.extract(src)
        timings["extract"] = time.perf_counter() - t
    t = time.perf_counter()
    batches = calibration_batches(model, src, calib_text, calib_samples, seq_len)
    graph = Graph(model.graph_def)
    before = graph.op_histogram()
    if ranges is None:
        tensors = activation_tensors(graph, include_concat=not policy.concat_skip_reason)
        runner = savedmodel.build_function(model.graph_def, model, model.captures, {t_: t_ for t_ in tensors})
        needs_channels = policy.outlier_threshold or policy.smooth_alpha or policy.token_outlier_threshold
        channel_stats = matmul_inputs(graph) if needs_channels else ()
        ranges = calibrate(runner, batches, tensors, observer=observer, progress=progress, per_channel=channel_stats)
        del runner
        timings["calibrate"] = time.perf_counter() - t
    weight_values = lambda tensor: model.weight_value(graph, tensor)  # noqa: E731
    planned_ranges, smoothing = ranges, []
    if policy.smooth_alpha:
        from .smooth import apply_smoothing

        planned_ranges, smoothing = apply_smoothing(graph, ranges, weight_values, policy, policy.smooth_alpha)
    decisions = plan_all(graph, policy, planned_ranges)
    fallback = set(fallback_ops)
    decisions = [Skip(d.op, d.op_type, "kept in fp32 by measured fallback (sensitivity)") if d.op in fallback else d
                 for d in decisions]
    decisions = settle_weight_granularity(decisions, weight_values, policy)
    if policy.fuse_shared_input:
        from .fuse import fuse_shared_input_matmuls

        decisions = fuse_shared_input_matmuls(graph, decisions, weight_values)
    result = insert_qdq(graph, decisions, weight_values, weights_as_const=policy.weights_as_const)
    return Prepared(model, policy, graph, before, ranges, result, smoothing, batches, timings)


def measured_fallback(prep: Prepared, budget_kl: float, max_ops: int, kl_samples: int, progress: bool) -> dict:
    """Rank ops by sensitivity on the calibration windows and pick the fp32 set that meets the KL budget."""
    from .sensitivity import make_switchable, rank_ops, select_fallback

    t = time.perf_counter()
    sw = make_switchable(prep.graph, prep.quantized_ops, prep.model, prep.model.captures, prep.batches[:kl_samples])
    ranking = rank_ops(sw, progress=progress)
    chosen, history = select_fallback(sw, ranking, budget_kl, max_ops, progress=progress)
    return {"budget_kl": budget_kl, "max_ops": max_ops, "kl_windows": kl_samples, "ops": chosen,
            "kl_history": history, "ranking_top": ranking[:30], "seconds": round(time.perf_counter() - t, 1)}


def ConvertSavedModel(src: str, dst: str, itex_mode: bool = False, performance_only: bool = False, *,
                      output_format: Optional[str] = None, weight_granularity: str = "per_channel", exclude: Iterable[str] = (),
                      weight_bits: int = 7, outlier_threshold: float = DEFAULT_OUTLIER_THRESHOLD,
                      max_outlier_fraction: float = DEFAULT_MAX_OUTLIER_FRACTION,
                      token_outlier_threshold: float = DEFAULT_TOKEN_OUTLIER_THRESHOLD, fuse_matmuls: bool = False,
                      per_channel_min_spread: float = DEFAULT_PER_CHANNEL_MIN_SPREAD,
                      smooth_alpha: float = 0.0,
                      fallback_kl: float = 0.0,
                      fallback_max_ops: int = 16, fallback_windows: int = 2,
                      calib_text: Optional[str] = None, calib_samples: int = 16, seq_len: int = 128,
                      observer: str = "mse", simplify: bool = True, overwrite: bool = False,
                      progress: bool = True) -> dict:
    """Quantize the SavedModel at ``src`` and write the result under ``dst``.

    ``dst`` receives ``model/`` (the converted SavedModel, same signature), ``extracted_graph_def.pb``,
    ``converted_graph_def.pb`` and ``report.json``; it appears only when everything succeeded.
    ``fallback_kl`` > 0 keeps the most sensitive ops in fp32 until the output KL on the calibration
    windows is within that budget (never with ``performance_only``).  Returns the report.
    """
    policy = QuantPolicy.from_flags(itex_mode=itex_mode, performance_only=performance_only,
                                    output_format=output_format, weight_granularity=weight_granularity, exclude=exclude,
                                    weight_bits=weight_bits, outlier_threshold=outlier_threshold,
                                    token_outlier_threshold=token_outlier_threshold,
                                    max_outlier_fraction=max_outlier_fraction, fuse_matmuls=fuse_matmuls,
                                    per_channel_min_spread=per_channel_min_spread,
                                    smooth_alpha=smooth_alpha, simplify=simplify)
    if fallback_kl < 0 or fallback_max_ops < 0 or fallback_windows <= 0:
        raise UserError("fallback budget and op count must be >= 0 and fallback windows > 0")
    check_output_dir(dst, overwrite)  # before minutes of work, not after
    calib = dict(calib_text=calib_text, calib_samples=calib_samples, seq_len=seq_len, observer=observer, progress=progress)
    prep = prepare_qdq(src, policy, **calib)
    timings = dict(prep.timings)
    fallback = None
    if fallback_kl > 0 and policy.allow_fallback and prep.quantized_ops:
        fallback = measured_fallback(prep, fallback_kl, fallback_max_ops, fallback_windows, progress)
        timings["fallback"] = fallback["seconds"]
        if fallback["ops"]:
            prep = prepare_qdq(src, policy, model=prep.model, ranges=prep.ranges, fallback_ops=fallback["ops"], **calib)

    t = time.perf_counter()
    model, graph, result = prep.model, prep.graph, prep.result
    captures = dict(model.captures)
    lowered = None
    if policy.output_format == "int8":
        from .lower import lower_to_int8

        lowered = lower_to_int8(graph, model, captures, weight_bits=policy.weight_bits)
    simplified = None
    if policy.simplify:
        from .simplify import simplify_rotary

        simplified = simplify_rotary(graph)
    graph.prune(list(model.outputs.values()), keep=[n.split(":")[0] for n in model.inputs.values()])
    captures = {k: v for k, v in captures.items() if k in graph.nodes}
    converted = graph.to_graph_def()
    timings["rewrite"] = time.perf_counter() - t

    report = {
        "input_model": os.path.abspath(src),
        "policy": policy.describe(),
        "calibration": {"samples": calib_samples, "seq_len": seq_len, "observer": observer,
                        "text": os.path.abspath(calib_text) if calib_text else "default (tfquant/resources/austen_calib.txt)"},
        "op_histogram": {"before": prep.before, "after": graph.op_histogram()},
        "quantized": result.quantized,
        "skipped": result.skipped,
        "shared_quantize_nodes": result.shared_quantize_nodes,
        "weights_as_const": result.weights_as_const or None,
        "fallback": fallback,
        "smoothing": prep.smoothing,
        "lowered": lowered,
        "simplified": simplified,
        "ranges": {k: v.to_json() for k, v in sorted(prep.ranges.items())},
    }
    t = time.perf_counter()
    with atomic_output_dir(dst, overwrite=overwrite) as tmp:
        write_graph_def(os.path.join(tmp, EXTRACTED_PB), model.graph_def, as_text=False)
        write_graph_def(os.path.join(tmp, CONVERTED_PB), converted, as_text=False)
        savedmodel.save(converted, model, captures, os.path.join(tmp, MODEL_SUBDIR))
        own_tokenizer = os.path.join(src, "tokenizer")
        if os.path.isdir(own_tokenizer):
            import shutil

            shutil.copytree(own_tokenizer, os.path.join(tmp, MODEL_SUBDIR, "tokenizer"))
        timings["save"] = time.perf_counter() - t
        report["timings_s"] = {k: round(v, 3) for k, v in timings.items()}
        report["size_bytes"] = {"input": dir_size_bytes(src), "output": dir_size_bytes(os.path.join(tmp, MODEL_SUBDIR))}
        write_json(os.path.join(tmp, REPORT_JSON), report)
    return report
