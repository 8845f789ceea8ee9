"""ConvertSavedModel: extract -> calibrate -> rewrite -> lower -> save."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from typing import Iterable, List, Optional, Sequence

from . import savedmodel
from .calibrate import activation_tensors, calibrate, matmul_inputs
from .data import GPT2_SOURCE, CalibrationSet, calibration_set, tokenizer_for
from .errors import UserError
from .feeds import CACHE_INPUT, check_token_ids, decode_feeds, make_feeds, takes_cache
from .fsutil import atomic_output_dir, check_output_dir, dir_size_bytes
from .graph import Graph
from .graphio import write_graph_def
from .modeldir import CONFIG_FILES, REPORT_JSON, ModelFolder, locate, max_positions
from .modeldir import TFQUANT_MODEL_SUBDIR as MODEL_SUBDIR
from .policy import QuantPolicy
from .quantizers import Skip
from .recipe import InputOptions, Recipe, split_options
from .report import write_json
from .rewrite import insert_qdq, plan_all, settle_weight_granularity
from .savedmodel import SIGNATURE_KEY
from .varstore import VariableStore

EXTRACTED_PB = "extracted_graph_def.pb"
CONVERTED_PB = "converted_graph_def.pb"
# Decode steps run after each calibration window's prefill: enough single-token rows at long pasts to set
# the decode signature's ranges (16 windows x 4 steps = 64 batches, each a fraction of a prefill's cost).
DECODE_CALIB_STEPS = 4


@dataclass
class ModelInput:
    """The user's model and calibration data, checked against each other before any long work."""

    folder: ModelFolder
    model: savedmodel.ExtractedModel
    tokenizer: object
    calibration: CalibrationSet
    batches: list                # one feed dict per calibration window, every signature input filled

    def describe(self) -> dict:
        return {"input_model": os.path.abspath(self.folder.given), "saved_model": self.folder.saved_model,
                "found_by": self.folder.note, "signature": self.model.signature,
                "inputs": {k: v.dtype.name for k, v in sorted(self.model.input_specs.items())},
                "outputs": sorted(self.model.outputs)}


def open_inputs(src: str, *, signatures: Optional[Sequence[str]] = None, tokenizer: Optional[str] = None,
                calib_dataset: Optional[str] = None, data_dir: Optional[str] = None, calib_text: Optional[str] = None,
                calib_samples: int = 16, seq_len: int = 128) -> List[ModelInput]:
    """Locate the model, extract ``signatures`` (default: all, ``serving_default`` first), build the
    calibration windows and each signature's feeds, check ids and length against the model.

    File-level mistakes (folder, tokenizer, data, length) are found before TensorFlow loads the model.
    A decode signature (one taking ``past_key_values``) is calibrated on decode steps after a prefill.
    """
    folder = locate(src)
    tok, tok_source = tokenizer_for(folder, tokenizer)
    calib = calibration_set(tok, tok_source, calib_dataset, data_dir, calib_text, calib_samples, seq_len)
    limit, limit_source = max_positions(folder)
    if limit is not None and seq_len > limit:
        raise UserError(f"--seq_len {seq_len} is longer than the model's {limit} positions ({limit_source})")
    loaded = savedmodel.load(folder.saved_model)
    names = list(signatures) if signatures else savedmodel.signature_names(loaded)
    models = [savedmodel.extract(folder.saved_model, name, loaded) for name in names]
    vocab, vocab_source = savedmodel.vocabulary_size(models[0])
    check_token_ids(calib.max_token_id, vocab, "calibration", vocab_source)
    return [ModelInput(folder, m, tok, calib, _calibration_feeds(loaded, folder, m, calib)) for m in models]


def open_input(src: str, *, signature: str = SIGNATURE_KEY, **options) -> ModelInput:
    """``open_inputs`` of one signature."""
    return open_inputs(src, signatures=[signature], **options)[0]


def _calibration_feeds(loaded, folder: ModelFolder, model: savedmodel.ExtractedModel, calib: CalibrationSet) -> list:
    if not takes_cache(model.input_specs):
        return [make_feeds(model.input_specs, w) for w in calib.windows]
    prefill = _prefill_signature(loaded, folder.saved_model, model.signature)
    decode = loaded.signatures[model.signature]
    return decode_feeds(_numpy_call(prefill), _numpy_call(decode), prefill.structured_input_signature[1],
                        model.input_specs, calib.windows, DECODE_CALIB_STEPS)


def _prefill_signature(loaded, path: str, decode_name: str):
    """The signature that makes the cache a decode signature takes: no cache input, a cache output."""
    for name in savedmodel.signature_names(loaded):
        fn = loaded.signatures[name]
        outputs = fn.structured_outputs if isinstance(fn.structured_outputs, dict) else {}
        if not takes_cache(fn.structured_input_signature[1]) and CACHE_INPUT in outputs:
            return fn
    raise UserError(f"SavedModel {path}: the '{decode_name}' signature takes {CACHE_INPUT}, but no signature returns "
                    "it to calibrate decode steps with (export a prefill signature too)")


def _numpy_call(fn):
    import tensorflow as tf

    return lambda **feeds: fn(**{k: tf.constant(v) for k, v in feeds.items()})


@dataclass
class Prepared:
    """Everything up to and including QDQ insertion (shared by conversion and sensitivity analysis)."""

    input: ModelInput
    policy: QuantPolicy
    graph: Graph                 # the QDQ graph
    before: dict                 # op histogram of the extracted graph
    ranges: dict                 # as calibrated (before smoothing)
    result: object               # rewrite.RewriteResult
    smoothing: list
    timings: dict

    @property
    def model(self) -> savedmodel.ExtractedModel:
        return self.input.model

    @property
    def batches(self) -> list:
        return self.input.batches

    @property
    def quantized_ops(self):
        return [q["op"] for q in self.result.quantized]


def _calibration_report(inp: ModelInput, policy: QuantPolicy, observer: str) -> dict:
    if not policy.needs_calibration:
        scheme = "dynamic activations" if policy.activations == "dynamic" else "weight-only schemes"
        return {"run": False, "reason": f"{scheme} take no ranges from data"}
    return {"run": True, **inp.calibration.describe(), "observer": observer}


def _calibrate(inp: ModelInput, graph: Graph, policy: QuantPolicy, observer: str, progress: bool,
               known: Iterable[str] = ()) -> dict:
    """Ranges of every tensor the quantizers need.  ``known``: tensors an earlier signature calibrated, whose
    second moments (GPTQ) that signature's ranges supply, so they are not collected again."""
    import tensorflow as tf

    model = inp.model
    if not policy.needs_calibration:  # dynamic and weight-only schemes take no ranges from data
        return {}
    tensors = activation_tensors(graph, include_concat=not policy.concat_skip_reason)
    runner = savedmodel.build_function(model.graph_def, model, model.captures, {t_: t_ for t_ in tensors})
    needs_channels = policy.outlier_threshold or policy.smooth_alpha or policy.token_outlier_threshold
    channel_stats = matmul_inputs(graph) if needs_channels else ()
    moments = matmul_inputs(graph) - set(known) if policy.weight_rounding == "gptq" else ()
    try:
        return calibrate(runner, inp.batches, tensors, observer=observer, progress=progress, per_channel=channel_stats,
                         second_moments=moments)
    except tf.errors.InvalidArgumentError as exc:  # an index past a table: positions or vocabulary
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"the model rejected the calibration windows ({first[:200]}): is --seq_len longer than its "
                        "positions, or --tokenizer not its tokenizer?") from None


def prepare_qdq(inp: ModelInput, policy: Optional[QuantPolicy] = None, *, observer: str = "minmax",
                progress: bool = True, ranges: Optional[dict] = None, fallback_ops: Iterable[str] = ()) -> Prepared:
    """calibrate -> plan -> insert QDQ.  ``ranges`` skips calibration already done;
    ``fallback_ops`` are kept in fp32 (the measured-fallback decision)."""
    policy = policy or QuantPolicy.from_flags()
    model = inp.model
    timings = {}
    graph = Graph(model.graph_def)
    before = graph.op_histogram()
    if ranges is None:
        t = time.perf_counter()
        ranges = _calibrate(inp, graph, policy, observer, progress)
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
    return Prepared(inp, policy, graph, before, ranges, result, smoothing, timings)


def measured_fallback(prep: Prepared, budget_kl: float, max_ops: int, kl_samples: int, progress: bool) -> dict:
    """Rank ops by sensitivity on the calibration windows and pick the fp32 set that meets the KL budget."""
    from .fallback import make_switchable, rank_ops, select_fallback

    t = time.perf_counter()
    sw = make_switchable(prep.graph, prep.quantized_ops, prep.model, prep.model.captures, prep.batches[:kl_samples])
    ranking = rank_ops(sw, progress=progress)
    chosen, history = select_fallback(sw, ranking, budget_kl, max_ops, progress=progress)
    return {"budget_kl": budget_kl, "max_ops": max_ops, "kl_windows": kl_samples, "ops": chosen,
            "kl_history": history, "ranking_top": ranking[:30], "seconds": round(time.perf_counter() - t, 1)}


def ConvertSavedModel(src: str, dst: str, itex_mode: bool = False, performance_only: bool = False, *,
                      recipe: Optional[Recipe] = None, inputs: Optional[InputOptions] = None,
                      overwrite: bool = False, progress: bool = True, stored_weights: Optional[dict] = None,
                      **options) -> dict:
    """Quantize the SavedModel at ``src`` and write the result under ``dst``.

    The scheme is ``recipe`` (a ``tfquant.recipe.Recipe``; default: static W8A8) and what to read is
    ``inputs`` (``InputOptions``); any field of either can also be given as a keyword argument
    (``weights="int4", group_size=128, calib_dataset="lambada"``), which wins over the value objects.

    ``src`` is a SavedModel folder, a folder holding ``saved_model/<version>/`` (Hugging Face's
    ``save_pretrained(saved_model=True)``) or a tfquant output.  Every signature is converted (or only
    ``inputs.signature``) and kept under its name with every input and output; signatures that read the
    same weights (prefill and decode) read the same quantized variables.
    ``dst`` receives ``model/`` (the converted SavedModel), ``extracted_graph_def.pb``,
    ``converted_graph_def.pb`` and ``report.json``; it appears only when everything succeeded.
    ``stored_weights`` (weight-only schemes): tf variable name -> ``formats.QuantizedWeight`` to store
    as it is instead of quantizing the variable (a GGUF file's own blocks); the other weights stay float.
    Returns the report.
    """
    if itex_mode:
        options["itex_mode"] = True
    if performance_only:
        options["performance_only"] = True
    recipe_options, input_options = split_options(options)
    if "exclude" in recipe_options:
        recipe_options["exclude"] = tuple(recipe_options["exclude"])
    recipe = replace(recipe or Recipe(), **recipe_options)
    inputs = replace(inputs or InputOptions(), **input_options)
    policy = QuantPolicy.from_recipe(recipe)
    recipe = recipe.resolved()
    observer = recipe.observer
    check_output_dir(dst, overwrite)  # before minutes of work, not after
    t = time.perf_counter()
    signature = inputs.signature
    inputs = open_inputs(src, signatures=[signature] if signature else None, tokenizer=inputs.tokenizer,
                         calib_dataset=inputs.calib_dataset, data_dir=inputs.data_dir, calib_text=inputs.calib_text,
                         calib_samples=inputs.calib_samples, seq_len=inputs.seq_len)
    timings = {"extract": time.perf_counter() - t}
    fallback_options = None
    if recipe.fallback_kl > 0 and policy.allow_fallback:
        fallback_options = (recipe.fallback_kl, recipe.fallback_max_ops, recipe.fallback_windows)
    store = VariableStore()  # signatures that read one fp32 weight share its int8 variable
    results = []
    for inp in inputs:
        first = results[0] if results else None
        results.append(_convert_signature(inp, policy, observer, progress, store, fallback_options, stored_weights,
                                          fallback_ops=first.fallback_ops if first else (),
                                          prefill_ranges=first.ranges if first else None))
        for k, v in results[-1].timings.items():
            timings[k] = timings.get(k, 0.0) + v
    primary = results[0]
    report = {**inputs[0].describe(), "recipe": recipe.describe(), "policy": policy.describe(),
              "calibration": _calibration_report(inputs[0], policy, observer), **primary.report}
    if len(results) > 1:
        report["other_signatures"] = {r.model.signature: r.summary() for r in results[1:]}
    report["variables"] = {"created": store.created, "reused": store.reused}  # reused: read by several signatures
    t = time.perf_counter()
    with atomic_output_dir(dst, overwrite=overwrite) as tmp:
        for r in results:
            suffix = "" if r is primary else f".{r.model.signature}"
            write_graph_def(os.path.join(tmp, EXTRACTED_PB.replace(".pb", suffix + ".pb")), r.model.graph_def, as_text=False)
            write_graph_def(os.path.join(tmp, CONVERTED_PB.replace(".pb", suffix + ".pb")), r.converted, as_text=False)
        out_model = os.path.join(tmp, MODEL_SUBDIR)
        report["shared_constants"] = savedmodel.save([(r.converted, r.model, r.captures) for r in results], out_model)
        _keep_side_files(inputs[0], out_model)
        timings["save"] = time.perf_counter() - t
        report["timings_s"] = {k: round(v, 3) for k, v in timings.items()}
        report["size_bytes"] = {"input": dir_size_bytes(inputs[0].folder.saved_model),
                                "output": dir_size_bytes(out_model)}
        write_json(os.path.join(tmp, REPORT_JSON), report)
    return report


@dataclass
class SignatureResult:
    """One converted signature: its graph, the variables it reads, and its part of the report."""

    model: savedmodel.ExtractedModel
    converted: object            # GraphDef
    captures: dict
    report: dict
    timings: dict
    fallback_ops: tuple
    calibration_batches: int
    ranges: dict

    def summary(self) -> dict:
        lowered = self.report["lowered"] or {}
        return {"inputs": {k: v.dtype.name for k, v in sorted(self.model.input_specs.items())},
                "outputs": sorted(self.model.outputs), "calibration_batches": self.calibration_batches,
                "quantized": len(self.report["quantized"]),
                "skipped": len(self.report["skipped"]), "lowered": lowered.get("count"),
                "op_histogram": self.report["op_histogram"], "ranges": self.report["ranges"]}


def _convert_signature(inp: ModelInput, policy: QuantPolicy, observer: str, progress: bool, store: VariableStore,
                       fallback_options: Optional[tuple], stored_weights: Optional[dict] = None,
                       fallback_ops: Iterable[str] = (), prefill_ranges: Optional[dict] = None) -> SignatureResult:
    """calibrate -> QDQ -> (measured fallback) -> lower -> simplify -> prune, for one signature.

    The fallback is measured on the first signature; later ones (decode) keep the same ops in fp32.
    A later signature is calibrated on its own feeds (decode steps); where a tensor also exists in the
    first signature (same name: the same layer), that signature's range wins: a decode step's MatMul
    input is one row of the same distribution the prefill observed over every row of every window, so
    the prefill's statistics are the better estimate (measured on tiny random GPT-J/GPT-2/Mistral, 96
    teacher-forced steps of real text: decode top-1 agreement with fp32 0.958/0.927/0.875 with its own
    ranges, 0.969/0.948/0.938 with the prefill's, equal to the prefill's own agreement).
    """
    if policy.weight_only:
        return _encode_signature(inp, policy, store, stored_weights)
    ranges, timings = None, {}
    if prefill_ranges is not None:
        t = time.perf_counter()
        own = _calibrate(inp, Graph(inp.model.graph_def), policy, observer, progress, known=prefill_ranges)
        ranges = {tensor: prefill_ranges.get(tensor, r) for tensor, r in own.items()}
        timings["calibrate"] = time.perf_counter() - t
    prep = prepare_qdq(inp, policy, observer=observer, progress=progress, fallback_ops=fallback_ops, ranges=ranges)
    timings.update(prep.timings)
    fallback = None
    if fallback_options and not fallback_ops and prep.quantized_ops:
        fallback = measured_fallback(prep, *fallback_options, progress)
        timings["fallback"] = fallback["seconds"]
        if fallback["ops"]:
            prep = prepare_qdq(inp, policy, observer=observer, progress=progress, ranges=prep.ranges,
                               fallback_ops=fallback["ops"])
    t = time.perf_counter()
    model, graph, result = inp.model, prep.graph, prep.result
    captures = dict(model.captures)
    budget = [{"pass": "extracted", "nodes": sum(prep.before.values())}, {"pass": "qdq", "nodes": len(graph.nodes)}]
    lowered = None
    if policy.output_format == "int8":
        from .lower import lower_to_int8

        lowered = lower_to_int8(graph, model, captures, weight_bits=policy.weight_bits,
                                pair_safe=policy.weight_pairs == "safe", store=store,
                                moments=_second_moments(result.quantized, prep.ranges, policy))
        budget.append({"pass": "lower", "nodes": len(graph.nodes)})
    simplified = _simplify_and_prune(graph, model, captures, policy, budget)
    captures = {k: v for k, v in captures.items() if k in graph.nodes}
    converted = graph.to_graph_def()
    timings["rewrite"] = time.perf_counter() - t
    report = {
        "op_histogram": {"before": prep.before, "after": graph.op_histogram()},
        "op_budget": _with_deltas(budget),
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
    chosen = tuple(fallback["ops"]) if fallback else tuple(fallback_ops)
    return SignatureResult(model, converted, captures, report, timings, chosen, len(inp.batches), prep.ranges)


def _simplify_and_prune(graph: Graph, model, captures: dict, policy: QuantPolicy, budget: list) -> Optional[dict]:
    """The exact rewrites (simplify.py; shapes.py + cse.py: shape arithmetic shared across layers and
    identical pure ops merged), then everything the outputs no longer need is pruned; returns the report
    and appends each pass's node count to ``budget``."""
    outputs = list(model.outputs.values())
    inputs = [n.split(":")[0] for n in model.inputs.values()]
    if not policy.simplify:
        graph.prune(outputs, keep=inputs)
        budget.append({"pass": "prune", "nodes": len(graph.nodes)})
        return None
    from .cse import resource_shapes, share_and_merge
    from .simplify import simplify_repeat_kv, simplify_rotary

    report = simplify_rotary(graph)
    report["grouped_query_products"] = simplify_repeat_kv(graph, resource_shapes(captures))
    graph.prune(outputs, keep=inputs)
    budget.append({"pass": "simplify (rotary, grouped attention) + prune", "nodes": len(graph.nodes)})
    shared = share_and_merge(graph, captures, protected=[o.split(":")[0] for o in outputs] + inputs)
    shared["nodes_pruned"] = graph.prune(outputs, keep=inputs)
    shared["nodes_after"] = len(graph.nodes)
    budget.append({"pass": "shared shapes + merged ops + prune", "nodes": len(graph.nodes)})
    report["shared_shapes"] = shared
    return report


def _with_deltas(budget: list) -> list:
    """Each pass's node count and how many nodes it added (+) or removed (-)."""
    return [dict(b, delta=b["nodes"] - budget[i - 1]["nodes"]) if i else dict(b) for i, b in enumerate(budget)]


def _second_moments(quantized: list, ranges: dict, policy: QuantPolicy) -> Optional[dict]:
    """{MatMul op: (its activation tensor, sum of x^T x)} for GPTQ rounding, else None.

    Keyed by the op (its name survives the rewrite), carrying the tensor so that MatMuls reading one
    input share one solver.  A decode signature's ranges are the prefill's where the tensor exists in both,
    so its MatMuls round their weights exactly as the prefill's did and the int8 variables stay shared.
    """
    if policy.weight_rounding != "gptq":
        return None
    out = {}
    for q in quantized:
        tensor = next((a["tensor"] for a in q["activations"] if a["input_index"] == 0), None)
        rng = ranges.get(tensor)
        if rng is not None and rng.second_moment is not None:
            out[q["op"]] = (tensor, rng.second_moment)
    return out


def _encode_signature(inp: ModelInput, policy: QuantPolicy, store: VariableStore,
                      stored_weights: Optional[dict] = None) -> SignatureResult:
    """plan -> store weights in their format, decode in the graph -> simplify -> prune (weight-only schemes)."""
    from .weightonly import encode_weights

    t = time.perf_counter()
    model = inp.model
    graph = Graph(model.graph_def)
    before = graph.op_histogram()
    decisions = plan_all(graph, policy, {})
    captures = dict(model.captures)
    encoded = encode_weights(graph, decisions, model, captures, policy, store, stored_weights)
    budget = [{"pass": "extracted", "nodes": sum(before.values())}, {"pass": "encode weights", "nodes": len(graph.nodes)}]
    simplified = _simplify_and_prune(graph, model, captures, policy, budget)
    captures = {k: v for k, v in captures.items() if k in graph.nodes}
    report = {"op_histogram": {"before": before, "after": graph.op_histogram()}, "op_budget": _with_deltas(budget),
              "quantized": [{"op": o["op"], "op_type": "MatMul", "weight_format": o["format"]} for o in encoded["ops"]],
              "skipped": encoded.pop("skipped"), "weight_only": encoded, "lowered": None, "simplified": simplified,
              "ranges": {}}
    return SignatureResult(model, graph.to_graph_def(), captures, report, {"rewrite": time.perf_counter() - t}, (), 0, {})


def _keep_side_files(inp: ModelInput, out_model: str) -> None:
    """The tokenizer calibration used and the model's config travel with the converted model, so the
    benchmark and generation find them there as they did beside the original."""
    import shutil

    if inp.calibration.tokenizer != GPT2_SOURCE:
        inp.tokenizer.save_pretrained(os.path.join(out_model, "tokenizer"))
    for name in CONFIG_FILES:
        found = inp.folder.find(name)
        if found and os.path.isfile(found):
            shutil.copyfile(found, os.path.join(out_model, name))
