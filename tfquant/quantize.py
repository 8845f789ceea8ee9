"""python -m tfquant.quantize: quantize a TF causal-LM SavedModel.

With no --input_model, the embedded default model is used: a tiny random GPT-J
(configs/gptj-tiny.yaml) exported once and cached under ~/.cache/tfquant, so the
command works offline on a fresh machine.
"""
from __future__ import annotations

import argparse
import os
import sys

from .errors import UserError, run_cli
from .fsutil import cache_root
from .policy import (
    DEFAULT_MAX_OUTLIER_FRACTION,
    DEFAULT_OUTLIER_THRESHOLD,
    DEFAULT_PER_CHANNEL_MIN_SPREAD,
    DEFAULT_TOKEN_OUTLIER_THRESHOLD,
)


def default_model_dir() -> str:
    """Export the embedded default model once; later runs reuse the cached SavedModel."""
    from .assets import config_path
    from .models import prepare_from_config

    target = os.path.join(cache_root(), "gptj-tiny")
    if not os.path.isfile(os.path.join(target, "saved_model.pb")):
        os.makedirs(cache_root(), exist_ok=True)
        print(f"preparing the embedded default model (tiny random GPT-J) in {target}", file=sys.stderr)
        prepare_from_config(config_path("gptj-tiny.yaml"), target, overwrite=True)
    return target


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m tfquant.quantize", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input_model",
                   help="SavedModel folder, or a folder holding saved_model/<version>/ as save_pretrained(saved_model=True) "
                        "writes (default: the embedded tiny GPT-J)")
    p.add_argument("--signature", help="convert only this signature (default: every signature, e.g. prefill and "
                                       "decode; each kept under its name, sharing int8 weights)")
    p.add_argument("--tokenizer", help="a Hugging Face tokenizer folder or tokenizer.json (default: the model folder's "
                                       "own tokenizer/ or tokenizer files, else GPT-2 BPE)")
    p.add_argument("--output_dir", required=True, help="where model/, the graph dumps and report.json go")
    p.add_argument("--config", help="YAML recipe; its keys set the defaults of the flags below")
    p.add_argument("--itex_mode", action="store_true", default=None,
                   help="write a QDQ graph for Intel Extension for TensorFlow (no ConcatV2 QDQ)")
    p.add_argument("--performance_only", action="store_true", default=None,
                   help="symmetric (SCALED) activations, no fallback, relaxed ConcatV2 rule")
    p.add_argument("--format", dest="output_format", choices=("int8", "qdq"),
                   help="int8: real int8 kernels on stock TF (default); qdq: keep QuantizeV2/Dequantize pairs")
    p.add_argument("--weight_granularity", choices=("per_channel", "per_tensor"),
                   help="weight scales: per output channel (default) or one per tensor (the reference)")
    p.add_argument("--per_channel_min_spread", type=float,
                   help="per-channel weight scales only where a weight's largest column max|w| exceeds its smallest "
                        f"by this factor (default {DEFAULT_PER_CHANNEL_MIN_SPREAD:g}; 1 = always per channel)")
    p.add_argument("--weight_bits", type=int, choices=(7, 8),
                   help="bits of lowered int8 weights: 7 (default) cannot saturate on CPUs without VNNI; 8 for VNNI/AMX")
    p.add_argument("--outlier_threshold", type=float,
                   help="MatMul input channels whose calibrated |x| exceeds this x the median channel run in fp32 "
                        f"(default {DEFAULT_OUTLIER_THRESHOLD:g}; 0 turns it off)")
    p.add_argument("--max_outlier_fraction", type=float,
                   help="at most this share of a MatMul's input channels run in fp32 as outliers "
                        f"(default {DEFAULT_MAX_OUTLIER_FRACTION:g})")
    p.add_argument("--token_outlier_threshold", type=float,
                   help="MatMul inputs whose top token's calibrated max|x| exceeds this x the median token's are "
                        f"quantized per token (rows scaled before QuantizeV2; default {DEFAULT_TOKEN_OUTLIER_THRESHOLD:g}; "
                        "0 turns it off)")
    p.add_argument("--fuse_matmuls", action="store_true", default=None,
                   help="int8 format: MatMuls that read one quantized input (q/k/v, gate/up) run as one kernel")
    p.add_argument("--no_simplify", dest="simplify", action="store_false", default=None,
                   help="int8 format: keep the model's fp32 glue as it is (default: exact rewrites of slow patterns, "
                        "e.g. GPT-J's rotary rotate_every_two -> one MatMul; tfquant/simplify.py)")
    p.add_argument("--smooth_alpha", type=float, help="SmoothQuant migration strength in [0, 1] (default 0 = off)")
    p.add_argument("--fallback_kl", type=float,
                   help="measured fallback: keep the most sensitive ops in fp32 until KL(fp32 || int8) of the "
                        "next-token distributions on calibration windows is <= this (default 0 = off)")
    p.add_argument("--fallback_max_ops", type=int, help="at most this many ops fall back (default 16)")
    p.add_argument("--observer", choices=("minmax", "percentile", "mse", "kl"), help="activation range observer")
    p.add_argument("--exclude", action="append", help="regex of op names to keep in fp32 (repeatable)")
    p.add_argument("--calib_dataset", help="calibration data: austen (default, shipped), lambada (a local copy in "
                                           "--data_dir), FILE.txt, or FILE.jsonl (a 'text' field per line)")
    p.add_argument("--data_dir", help="folder of a local LAMBADA copy (datasets save_to_disk, parquet or json)")
    p.add_argument("--calib_text", help="any UTF-8 text file for calibration (instead of --calib_dataset)")
    p.add_argument("--calib_samples", type=int, help="calibration windows (default 16)")
    p.add_argument("--seq_len", type=int, help="tokens per calibration window (default 128)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output_dir")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p.parse_args(argv)


DEFAULTS = {"itex_mode": False, "performance_only": False, "output_format": None, "weight_granularity": "per_channel",
            "exclude": [], "weight_bits": 7, "outlier_threshold": DEFAULT_OUTLIER_THRESHOLD,
            "max_outlier_fraction": DEFAULT_MAX_OUTLIER_FRACTION, "token_outlier_threshold": DEFAULT_TOKEN_OUTLIER_THRESHOLD,
            "fuse_matmuls": False, "per_channel_min_spread": DEFAULT_PER_CHANNEL_MIN_SPREAD, "smooth_alpha": 0.0, "observer": "mse",
            "simplify": True, "fallback_kl": 0.0, "fallback_max_ops": 16,
            "signature": None, "tokenizer": None, "calib_dataset": None, "data_dir": None, "calib_text": None,
            "calib_samples": 16, "seq_len": 128}


def resolve_options(args) -> dict:
    """Flags given on the command line win over the --config recipe, which wins over the defaults."""
    recipe = {}
    if args.config:
        from .models import load_yaml_config

        recipe = load_yaml_config(args.config).get("quantization", {}) or {}
        unknown = sorted(set(recipe) - set(DEFAULTS) - {"format"})
        if unknown:
            raise UserError(f"config {args.config}: unknown quantization keys {unknown}")
        if "format" in recipe:
            recipe["output_format"] = recipe.pop("format")
    opts = {}
    for key, default in DEFAULTS.items():
        value = getattr(args, key)
        opts[key] = value if value is not None else recipe.get(key, default)
    return opts


def main(argv=None) -> int:
    args = parse_args(argv)
    opts = resolve_options(args)
    from .fsutil import check_output_dir

    check_output_dir(args.output_dir, args.overwrite)
    src = args.input_model or default_model_dir()
    from .convert import ConvertSavedModel
    from .report import format_summary

    report = ConvertSavedModel(src, args.output_dir, overwrite=args.overwrite, progress=not args.quiet, **opts)
    print(format_summary(report))
    print(f"wrote {os.path.abspath(args.output_dir)}")
    return 0


def _console():  # console_scripts entry point
    sys.exit(run_cli(main))


if __name__ == "__main__":
    _console()
