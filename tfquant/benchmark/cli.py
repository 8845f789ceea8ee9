"""python -m tfquant.benchmark: accuracy, latency, throughput, size and memory of fp32 vs quantized SavedModels.

Every model is loaded with ``tf.saved_model.load`` and run through its ``serving_default``
signature (``input_ids``, ``attention_mask`` -> logits), the fp32 baseline first.

Accuracy (batch 1, no padding), on the first ``--samples`` eval items of ``--dataset``:
  Tokenization: ``ctx = encode(context)``, ``tgt = encode(" " + target)`` (no special tokens),
  full sequence ``ctx + tgt``.  The target is tokenized separately, so a BPE merge across the
  context/target boundary can never happen and the target tokens are exactly ``tgt``.  One forward of
  ``full[:-1]`` gives both metrics:
  * last-token accuracy (the reference metric): argmax of the last logits == ``full[-1]``;
  * whole-word accuracy: argmax at every target position equals the next target token (teacher forcing;
    equivalent to greedy decoding of the whole word, because greedy follows the same path while every
    prediction is right).
  If the model's position limit is known (``tfquant_model.json`` / ``config.json`` beside the model or
  beside the input model named in ``report.json``) longer sequences lose tokens at the left.
  Each accuracy comes with a 95% Wilson interval; each quantized model with the paired difference to
  fp32 on the same items (discordant counts b, c and a 95% interval).  fp32 per-item results are
  cached under ``$TFQUANT_CACHE/bench`` (default ``~/.cache/tfquant/bench``).

Latency: one full-prompt forward of 1 x ``--seq_len`` tokens (from the shipped calibration text) after
``--warmup`` runs; ``--iters`` rounds in which every model runs once (round robin, rotating the order), so
the latency ratio is measured under the same machine load.  The INC-style block reports the mean (the
reference's definition) and ``Throughput`` = 1000 / mean latency at batch 1; the table reports the
median and the throughput at ``--batch_size`` x ``--seq_len``.  Peak RSS is measured per model in a
fresh subprocess that loads the model and runs one 1 x ``--seq_len`` forward.  Sizes are in MB of
2**20 bytes.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
from dataclasses import dataclass
from typing import List, Optional

from ..errors import ArgumentParser, UserError
from ..machine import parse_threads
from ..savedmodel import SIGNATURE_KEY
from .peers import INC_VARIANTS
from .run import run

DEFAULT_OUTPUT = "benchmark_results.json"
DEFAULT_PROMPT = "def hello_world():"


@dataclass(frozen=True)
class Settings:
    """The flags of one run, checked: numbers are numbers, paths exist, optional packages are installed."""

    input_model: str
    quantized_models: List[str]
    signature: str
    tokenizer: Optional[str]  # absolute path; None: each model's own tokenizer, else GPT-2 BPE
    dataset: str
    data_dir: Optional[str]
    samples: Optional[int]  # None: all items
    batch_size: int
    seq_len: int
    warmup: int
    iters: int
    gen_tokens: int
    prompt: str
    generate: int  # new tokens of the KV-cache decoding run (0: none)
    compare: List[str]  # INC_VARIANTS keys, sorted
    output: str
    chart: Optional[str]
    accuracy: bool
    memory: bool
    cache: bool
    quiet: bool
    threads: str = "default"    # TF thread pools (machine.parse_threads)


def parse_args(argv=None):
    from ..data import DEFAULT_DATASET, dataset_help

    p = ArgumentParser(prog="python -m tfquant.benchmark", description=__doc__,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input_model", help="fp32 SavedModel folder, or a folder holding saved_model/<version>/ "
                                         "(the baseline; required)")
    p.add_argument("--quantized_model", action="append", default=[],
                   help="quantized SavedModel folder, or a tfquant.quantize --output_dir (repeatable)")
    p.add_argument("--signature", default=SIGNATURE_KEY, help=f"the signature to run (default {SIGNATURE_KEY})")
    p.add_argument("--tokenizer", help="tokenizer folder or tokenizer.json for every model (default: each model "
                                       "folder's own tokenizer, else GPT-2 BPE)")
    p.add_argument("--dataset", default=DEFAULT_DATASET, help=f"evaluation items: {dataset_help()}")
    p.add_argument("--data_dir", help="local LAMBADA copy for --dataset lambada")
    p.add_argument("--samples", default="200", help="number of eval items (the first N), or 'all' (default 200)")
    p.add_argument("--batch_size", default="4", help="batch size of the throughput run (default 4)")
    p.add_argument("--seq_len", default="128", help="prompt length of the latency/throughput runs (default 128)")
    p.add_argument("--warmup", default="3", help="untimed runs per model before timing (default 3)")
    p.add_argument("--iters", default="10", help="timed rounds (default 10)")
    p.add_argument("--output", default=DEFAULT_OUTPUT, help=f"JSON results file (default ./{DEFAULT_OUTPUT})")
    p.add_argument("--chart", help="write a PNG chart here (needs matplotlib)")
    p.add_argument("--no_accuracy", action="store_true", help="skip the accuracy evaluation")
    p.add_argument("--no_memory", action="store_true", help="skip the per-model peak RSS subprocesses")
    p.add_argument("--no_cache", action="store_true", help="neither read nor write the fp32 result cache")
    p.add_argument("--compare", action="append", default=[],
                   help="'inc': also quantize the fp32 model with Intel Neural Compressor 3.x (StaticQuantConfig) and add it "
                        "as a row; 'inc-smoothquant': the same after INC's SmoothQuant (alpha 0.5); repeatable")
    p.add_argument("--prompt", default=DEFAULT_PROMPT, help=f"greedy generation prompt (default {DEFAULT_PROMPT!r})")
    p.add_argument("--gen_tokens", default="16", help="new tokens of the generation sample (default 16)")
    p.add_argument("--generate", default="0", help="N: per model, prefill ms (128-token prompt), decode ms/token and "
                                                   "tokens/s for N new tokens (the KV cache where the model has a "
                                                   "decode signature), and the greedy continuations of two code "
                                                   "prompts with the share of tokens equal to fp32's (default 0: off)")
    p.add_argument("--threads", default="default",
                   help="TF thread pools for every model: 'default' (TF's own, measured fastest for a 128-token "
                        "prefill), 'decode' (inter-op = cores, intra-op = 1, fastest per decoded token), or INTER,INTRA")
    p.add_argument("--quiet", action="store_true", help="no progress bars or status lines")
    return p.parse_args(argv)


def _int_arg(value: str, flag: str, minimum: int) -> int:
    try:
        n = int(str(value).strip())
    except ValueError:
        raise UserError(f"{flag} must be an integer, got {value!r}") from None
    if n < minimum:
        raise UserError(f"{flag} must be {'positive' if minimum == 1 else f'at least {minimum}'}, got {n}")
    return n


def _samples_arg(value: str) -> Optional[int]:
    if str(value).strip().lower() == "all":
        return None
    try:
        n = int(str(value).strip())
    except ValueError:
        raise UserError(f"--samples must be a positive integer or 'all', got {value!r}") from None
    if n <= 0:
        raise UserError(f"--samples must be a positive integer or 'all', got {n}")
    return n


def _check_writable_parent(path: str, flag: str) -> None:
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise UserError(f"{flag} {path}: folder {parent} does not exist")
    if os.path.isdir(path):
        raise UserError(f"{flag} {path} is a folder; give a file name")


def _check_dataset(args) -> None:
    from ..data import DATASETS

    if args.dataset not in DATASETS:
        raise UserError(f"unknown dataset {args.dataset!r}; choose one of: {', '.join(DATASETS)}")
    if args.dataset == "lambada" and not args.no_accuracy:
        if not args.data_dir:
            raise UserError("--dataset lambada needs --data_dir (a local copy of the LAMBADA test split)")
        if not os.path.isdir(args.data_dir):
            raise UserError(f"--data_dir {args.data_dir} is not a folder")


def _compare_arg(values: List[str]) -> List[str]:
    compare = sorted(set(c.strip().lower() for c in values))
    for c in compare:
        if c not in INC_VARIANTS:
            raise UserError(f"--compare {c!r} is not supported (supported: {', '.join(INC_VARIANTS)})")
    return compare


def _check_paths_and_packages(args, compare: List[str]) -> None:
    """Where results go, the optional packages the flags need, the --tokenizer path."""
    _check_writable_parent(args.output, "--output")
    if args.chart:
        _check_writable_parent(args.chart, "--chart")
        if importlib.util.find_spec("matplotlib") is None:
            raise UserError("--chart needs matplotlib: pip install matplotlib (or pip install .[bench])")
    if compare and importlib.util.find_spec("neural_compressor") is None:
        raise UserError(f"--compare {compare[0]} needs neural-compressor: pip install .[inc]")
    if args.tokenizer and not os.path.exists(args.tokenizer):
        raise UserError(f"tokenizer not found: {args.tokenizer}")


def settings_from(args) -> Settings:
    """Everything a user can get wrong in the flags alone, checked before any model is touched (the first
    mistake found is the one reported, so the order of the checks is part of the behaviour)."""
    if not args.input_model:
        raise UserError("--input_model is required (the fp32 SavedModel folder)")
    _check_dataset(args)
    samples = _samples_arg(args.samples)
    batch_size = _int_arg(args.batch_size, "--batch_size", 1)
    seq_len = _int_arg(args.seq_len, "--seq_len", 1)
    warmup = _int_arg(args.warmup, "--warmup", 0)
    iters = _int_arg(args.iters, "--iters", 1)
    gen_tokens = _int_arg(args.gen_tokens, "--gen_tokens", 0)
    generate = _int_arg(args.generate, "--generate", 0)
    compare = _compare_arg(args.compare)
    if gen_tokens and not args.prompt.strip():
        raise UserError("--prompt must not be empty (or pass --gen_tokens 0)")
    parse_threads(args.threads)
    _check_paths_and_packages(args, compare)
    return Settings(
        input_model=args.input_model, quantized_models=list(args.quantized_model), signature=args.signature,
        tokenizer=os.path.abspath(args.tokenizer) if args.tokenizer else None,
        dataset=args.dataset, data_dir=args.data_dir, samples=samples, batch_size=batch_size, seq_len=seq_len,
        warmup=warmup, iters=iters, gen_tokens=gen_tokens, prompt=args.prompt, generate=generate, compare=compare,
        output=args.output, chart=args.chart, accuracy=not args.no_accuracy, memory=not args.no_memory,
        cache=not args.no_cache, quiet=bool(args.quiet), threads=args.threads)


def main(argv=None) -> int:
    return run(settings_from(parse_args(argv)))
