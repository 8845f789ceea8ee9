"""One benchmark run, step by step: the models the user named, the eval items, the INC peers, the measurements,
then the report on stdout and the results JSON (and chart) on disk."""
from __future__ import annotations

import os
import tempfile
from typing import List

from ..errors import UserError
from ..fsutil import atomic_write_json
from ..machine import apply_threads
from .log import Log
from .measure import measure
from .models import ModelSpec, apply_runtime_env, make_spec
from .peers import run_inc_peer
from .report import model_entries, print_report, results_json, write_chart


def run(settings) -> int:
    """Run the benchmark ``settings`` (a checked ``cli.Settings``) describes; returns the exit status."""
    log = Log(settings.quiet)
    taken: set = set()  # row names in use
    specs = _user_models(settings, taken)
    applied = apply_runtime_env([s.env for s in specs])  # before anything can import TensorFlow
    pools = apply_threads(settings.threads)  # before TensorFlow runs an op
    if pools:
        applied["tf_threads (inter_op,intra_op)"] = f"{pools['inter_op']},{pools['intra_op']}"
    _check_seq_len(specs, settings.seq_len)
    items = _eval_items(settings, log)
    with tempfile.TemporaryDirectory(prefix="tfquant-bench-", ignore_cleanup_errors=True) as workdir:
        for variant in settings.compare:  # first: INC's peak memory is large, and its subprocess frees it when done
            specs.append(run_inc_peer(specs[0], workdir, taken, log, variant))
        applied.update(apply_runtime_env([s.env for s in specs]))  # what the peers need (INC's generic int8 ops)
        if applied:
            log("set for this run (all models share the process): " + ", ".join(f"{k}={v}" for k, v in applied.items()))
        measured = measure(specs, items, settings, log)
        results = results_json(model_entries(specs, measured, settings), settings, items, applied)
    print_report(results, applied)
    atomic_write_json(settings.output, results)
    print(f"\nwrote {os.path.abspath(settings.output)}")
    if settings.chart:
        write_chart(results, settings.chart)
        print(f"wrote {os.path.abspath(settings.chart)}")
    return 0


def _user_models(settings, taken: set) -> List[ModelSpec]:
    """fp32 first, then every --quantized_model; --tokenizer replaces each model's own tokenizer."""
    fp32 = make_spec(settings.input_model, "--input_model", "fp32", "fp32", taken)
    specs = [fp32] + [make_spec(q, "--quantized_model", "quantized", None, taken) for q in settings.quantized_models]
    if settings.tokenizer:
        for s in specs:
            s.tokenizer = settings.tokenizer
    return specs


def _check_seq_len(specs: List[ModelSpec], seq_len: int) -> None:
    """A known position limit refuses a too long --seq_len before any model is loaded."""
    for s in specs:
        if s.max_positions and seq_len > s.max_positions:
            raise UserError(f"--seq_len {seq_len} is longer than {s.name} allows ({s.max_positions} positions, "
                            f"from {s.max_positions_source})")


def _eval_items(settings, log: Log):
    """The first --samples items of --dataset; None with --no_accuracy."""
    if not settings.accuracy:
        return None
    from ..data import load_eval_items

    all_items = load_eval_items(settings.dataset, settings.data_dir)
    samples = settings.samples
    if samples is not None and samples > len(all_items):
        log(f"note: --samples {samples} but {settings.dataset} has {len(all_items)} items; using all of them")
    return all_items if samples is None else all_items[:samples]
