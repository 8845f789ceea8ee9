"""Recipe: a quantization scheme as one typed value.

Every option of ``python -m tfquant.quantize`` is a field here, with its default, help and
choices written once.  The command-line flags (:func:`add_arguments`), the keys of a YAML recipe
(``quantization:`` in ``configs/recipes/*.yaml``), the keyword arguments of ``ConvertSavedModel``
and ``report.json``'s ``recipe`` block are all derived from these two classes:

- :class:`Recipe`: *what* to do (weight format, activations, granularity, outliers, fallback).
- :class:`InputOptions`: *what to read* (signature, tokenizer, calibration data).

A few defaults depend on other fields (``--activations`` is int8 for int8 weights and none for
the others; int4 and the block formats group their weights); such a field defaults to None and
:meth:`Recipe.resolved` fills it in and rejects the combinations that do not exist.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field, fields, replace
from typing import Optional, Tuple

from .data import calibration_help
from .errors import UserError

# Weight formats: integer linear quantization, float downcasts, OCP MX, the shared-microexponent
# paper's MX6/MX9, and ggml's blocks (what a GGUF file keeps; see tools/prepare_model.py --keep_quantized).
INTEGER_WEIGHTS = ("int8", "int4")
FLOAT_WEIGHTS = ("bf16", "fp16")
BLOCK_WEIGHTS = {  # --weights name -> (tfquant.formats name, block size fixed by the format)
    "mxfp8": ("mxfp8_e4m3", 32), "mxfp6": ("mxfp6_e2m3", 32), "mxfp6_e3m2": ("mxfp6_e3m2", 32),
    "mxfp4": ("mxfp4", 32), "mxint8": ("mxint8", 32), "mx6": ("mx6", 16), "mx9": ("mx9", 16),
    "q4_0": ("q4_0", 32), "q4_1": ("q4_1", 32), "q8_0": ("q8_0", 32),
}
WEIGHTS = INTEGER_WEIGHTS + FLOAT_WEIGHTS + tuple(BLOCK_WEIGHTS)
ACTIVATIONS = ("int8", "dynamic", "none")
GRANULARITIES = ("per_tensor", "per_channel", "per_group")
OBSERVERS = ("minmax", "percentile", "mse", "kl")
OUTPUT_FORMATS = ("int8", "qdq")
WEIGHT_ROUNDINGS = ("nearest", "gptq")
WEIGHT_PAIRS = ("safe", "full")
DEFAULT_GROUP_SIZE = 32  # int4 (q4_0-like); MX and ggml blocks are fixed by their formats


def option(default, help: str, *, choices=None, type=None, flag: Optional[str] = None,
           negative: Optional[str] = None, both: bool = False, repeat: bool = False, cli: bool = True):
    """A recipe field: ``flag`` overrides ``--<name>``; ``negative`` names the flag that sets a bool False
    (``both``: ``--<name>`` exists too); ``repeat``: the flag may be given several times (a tuple);
    ``cli=False``: YAML and Python only."""
    meta = {"help": help, "choices": choices, "type": type, "flag": flag, "negative": negative, "both": both,
            "repeat": repeat, "cli": cli}
    if isinstance(default, tuple):
        return field(default_factory=lambda: default, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Recipe:
    weights: str = option("int8", "weight format: int8, int4 (linear, see --weight_granularity), bf16 or fp16 "
                          "(downcast), mxfp8/mxfp6/mxfp6_e3m2/mxfp4/mxint8 (OCP MX, blocks of 32), mx6/mx9 "
                          "(shared microexponents, blocks of 16) or q4_0/q4_1/q8_0 (ggml blocks)", choices=WEIGHTS)
    activations: Optional[str] = option(
        None, "int8: calibrated static ranges, int8 kernels; dynamic: per-token ranges computed at run time (no "
              "calibration), int8 kernels; none: weight-only, activations stay float and weights are dequantized "
              "in the graph (default: int8 for int8 weights, none otherwise)", choices=ACTIVATIONS)
    weight_granularity: Optional[str] = option(
        None, "integer weight scales per tensor, per output channel or per group of --group_size inputs "
              "(default: per_group for int4, per_channel for int8)", choices=GRANULARITIES)
    group_size: Optional[int] = option(None, f"inputs per group for per_group weights (default {DEFAULT_GROUP_SIZE}); "
                                             "a MatMul whose input size it does not divide is quantized per channel, "
                                             "and the report says which", type=int)
    symmetric: bool = option(True, "integer weights symmetric (default) or --asymmetric (a zero point per scale)",
                             negative="--asymmetric", both=True)
    exclude: Tuple[str, ...] = option((), "regex of op names to keep in fp32 (repeatable)", repeat=True)
    # 16 MB: SmolLM2's lm_head (113 MB decoded) in 7 slices; peak RSS of w4a16-g32 0.43x -> see README "Peak RSS".
    decode_chunk_mb: float = option(
        16.0, "weight-only: a weight whose fp32 decode is larger than this many MB is decoded and multiplied in "
            "column slices of at most this size, one after another, so its fp32 copy never exists whole "
            "(0 = whole weights)")
    itex_mode: bool = option(False, "write a QDQ graph for Intel Extension for TensorFlow (no ConcatV2 QDQ)")
    performance_only: bool = option(False, "symmetric (SCALED) activations, no fallback, relaxed ConcatV2 rule")
    output_format: Optional[str] = option(None, "int8: real int8 kernels on stock TF (default); qdq: keep "
                                                "QuantizeV2/Dequantize pairs", choices=OUTPUT_FORMATS, flag="--format")
    per_channel_min_spread: float = option(
        1.1, "int8 kernels: per-channel weight scales only where a weight's largest column max|w| exceeds its "
             "smallest by this factor (1 = always per channel)")
    # 8 since 2026-12-01 (was 7): pair-safe 8-bit codes are exact on every CPU, and measured off the calibration
    # domain (SmolLM2, bench/results/cross_domain_candidates) they close the gap 7 bits left (README).
    weight_bits: int = option(8, "bits of int8-kernel weights: 8 (codes in [-127, 127], see --weight_pairs) or 7 "
                                 "(codes in [-63, 63], the default before pair-safe codes)",
                              choices=(7, 8), type=int)
    weight_pairs: str = option(
        "safe", "8-bit weights: safe keeps |w[2i]| + |w[2i+1]| <= 128 for every pair of adjacent inputs (the scale "
                "grows where a pair needs it), so CPUs without VNNI, whose kernel adds pairs of u8 x s8 products in "
                "int16, cannot saturate; full uses all of [-127, 127]: correct on VNNI/AMX CPUs only",
        choices=WEIGHT_PAIRS)
    weight_rounding: str = option(
        "nearest", "int8 kernels: round weights to nearest, or gptq: error-compensating rounding from the "
                   "calibration inputs' second moments (same scales, different integers; tfquant/gptq.py)",
        choices=WEIGHT_ROUNDINGS)
    # The outlier defaults were chosen on SmolLM2-135M (README "Choosing a recipe"): output KL on the
    # calibration windows 0.139 with (6, 0.01, no per-token) -> 0.033 with (3, 0.03, 3) for ~0.03x more latency.
    outlier_threshold: float = option(3.0, "MatMul input channels whose calibrated |x| exceeds this x the median "
                                           "channel run in fp32 (0 turns it off)")
    max_outlier_fraction: float = option(0.03, "at most this share of a MatMul's input channels run in fp32 as outliers")
    token_outlier_threshold: float = option(3.0, "MatMul inputs whose top token's calibrated max|x| exceeds this x "
                                                 "the median token's are quantized per token (0 turns it off)")
    fuse_matmuls: bool = option(False, "int8 format: MatMuls that read one quantized input (q/k/v, gate/up) run as "
                                       "one kernel")
    simplify: bool = option(True, "int8 format: exact rewrites of slow fp32 glue (GPT-J's rotary -> one MatMul; "
                                  "shape arithmetic computed once per graph, identical ops merged); "
                                  "--no_simplify keeps the model's glue as it is", negative="--no_simplify")
    smooth_alpha: float = option(0.0, "SmoothQuant migration strength in [0, 1] (0 = off)")
    fallback_kl: float = option(0.0, "measured fallback: keep the most sensitive ops in fp32 until KL(fp32 || int8) "
                                     "of the next-token distributions on calibration windows is <= this (0 = off)")
    fallback_max_ops: int = option(16, "at most this many ops fall back")
    fallback_windows: int = option(2, "calibration windows the measured fallback scores on", cli=False)
    observer: str = option("mse", "activation range observer", choices=OBSERVERS)

    # --- derived -------------------------------------------------------------------------------
    @property
    def weight_only(self) -> bool:
        return self.resolved().activations == "none"

    def resolved(self) -> Recipe:
        """Derived defaults filled in; a combination that does not exist is a UserError."""
        check_choices(self)
        integer = self.weights in INTEGER_WEIGHTS
        activations = self.activations or ("int8" if self.weights == "int8" else "none")
        granularity = self.weight_granularity
        group = self.group_size
        if self.weights in BLOCK_WEIGHTS:
            fmt, block = BLOCK_WEIGHTS[self.weights]
            if granularity not in (None, "per_group"):
                raise UserError(f"--weights {self.weights} is a block format ({block} weights share a scale); "
                                f"--weight_granularity {granularity} does not apply")
            if group not in (None, block):
                raise UserError(f"--weights {self.weights} has blocks of {block} fixed by the format; "
                                f"--group_size {group} does not apply")
            granularity, group = "per_group", block
        elif integer:
            granularity = granularity or ("per_group" if self.weights == "int4" else "per_channel")
            if granularity == "per_group":
                group = group if group is not None else DEFAULT_GROUP_SIZE
                if group < 2 or group % 2:
                    raise UserError(f"--group_size must be an even number >= 2, got {group}")
            elif group is not None:
                raise UserError(f"--group_size needs --weight_granularity per_group (got {granularity})")
        else:
            if granularity is not None or group is not None:
                raise UserError(f"--weights {self.weights} is a float downcast: no granularity or group size")
        if self.decode_chunk_mb < 0:
            raise UserError(f"--decode_chunk_mb must be >= 0, got {self.decode_chunk_mb}")
        if not self.symmetric and not integer:
            raise UserError(f"--asymmetric applies to integer weights (int8, int4), not {self.weights}")
        if activations in ("int8", "dynamic"):
            if self.weights != "int8":
                raise UserError(f"--activations {activations} runs on the int8 kernels, which need int8 weights "
                                f"(got --weights {self.weights}); use --activations none for weight-only")
            if granularity == "per_group":
                raise UserError("the int8 kernels take one weight scale per output channel at most: per_group "
                                "int8 weights need --activations none")
            if not self.symmetric:
                raise UserError("the int8 kernels take symmetric int8 weights: --asymmetric needs --activations none")
        else:
            for flag, value in (("--itex_mode", self.itex_mode), ("--performance_only", self.performance_only),
                                ("--fuse_matmuls", self.fuse_matmuls), ("--format qdq", self.output_format == "qdq"),
                                ("--smooth_alpha", self.smooth_alpha), ("--fallback_kl", self.fallback_kl)):
                if value:
                    raise UserError(f"{flag} is for int8 activations; it cannot be combined with weight-only "
                                    f"--weights {self.weights} --activations none")
        if self.weight_rounding == "gptq":
            if activations != "int8":
                raise UserError("--weight_rounding gptq takes its second moments from calibration: it needs "
                                f"--activations int8 (got {activations})")
            if self.itex_mode or self.output_format == "qdq":
                raise UserError("--weight_rounding gptq changes the int8 weights the kernels read: a QDQ graph "
                                "(--format qdq, --itex_mode) quantizes its fp32 weights itself")
            if self.smooth_alpha:
                raise UserError("--weight_rounding gptq cannot be combined with --smooth_alpha (the smoothed "
                                "inputs' second moments are not collected)")
        if activations == "dynamic" and self.itex_mode:
            raise UserError("--itex_mode needs calibrated activations: ITEX fuses no per-token rescale")
        return replace(self, activations=activations, weight_granularity=granularity, group_size=group)

    def describe(self) -> dict:
        """The resolved recipe as report.json shows it."""
        r = self.resolved()
        return {f.name: list(v) if isinstance(v := getattr(r, f.name), tuple) else v for f in fields(r)}


@dataclass(frozen=True)
class InputOptions:
    signature: Optional[str] = option(None, "convert only this signature (default: every signature, e.g. prefill "
                                            "and decode; each kept under its name, sharing quantized weights)")
    tokenizer: Optional[str] = option(None, "a Hugging Face tokenizer folder or tokenizer.json (default: the model "
                                            "folder's own tokenizer/ or tokenizer files, else GPT-2 BPE)")
    calib_dataset: Optional[str] = option(None, f"calibration data: {calibration_help()}")
    data_dir: Optional[str] = option(None, "folder of a local LAMBADA copy (datasets save_to_disk, parquet or json)")
    calib_text: Optional[str] = option(None, "any UTF-8 text file for calibration (instead of --calib_dataset)")
    calib_samples: int = option(16, "calibration windows")
    seq_len: int = option(128, "tokens per calibration window")


OPTION_CLASSES = (Recipe, InputOptions)
YAML_ALIASES = {"format": "output_format"}  # older recipes spell output_format as format


def check_choices(value) -> None:
    """Choices hold for values from YAML and Python too, not only from argparse."""
    for f in fields(value):
        choices, v = f.metadata.get("choices"), getattr(value, f.name)
        if choices and v is not None and v not in choices:
            raise UserError(f"{f.name} must be one of {', '.join(map(str, choices))}, got {v!r}")


def _flag(f) -> str:
    return f.metadata.get("flag") or f"--{f.name}"


def _default_text(f) -> str:
    default = f.default if f.default is not argparse.SUPPRESS else None
    if f.metadata.get("repeat") or default is None or isinstance(default, bool):
        return ""
    return f" (default {default:g})" if isinstance(default, float) else f" (default {default})"


def add_arguments(parser: argparse.ArgumentParser, cls) -> None:
    """One flag per field of ``cls``; every flag defaults to None, so :func:`merge` can tell what was given."""
    for f in fields(cls):
        meta = f.metadata
        if not meta.get("cli", True):
            continue
        helptext = meta["help"] + _default_text(f)
        if f.type in ("bool", bool):
            if meta.get("negative"):
                if meta.get("both"):  # --symmetric / --asymmetric
                    group = parser.add_mutually_exclusive_group()
                    group.add_argument(_flag(f), dest=f.name, action="store_true", default=None, help=helptext)
                    group.add_argument(meta["negative"], dest=f.name, action="store_false", default=None,
                                       help=f"the opposite of {_flag(f)}")
                else:
                    parser.add_argument(meta["negative"], dest=f.name, action="store_false", default=None, help=helptext)
            else:
                parser.add_argument(_flag(f), dest=f.name, action="store_true", default=None, help=helptext)
            continue
        kind = meta.get("type") or (type(f.default) if f.default is not None and not meta.get("repeat") else str)
        kwargs = {"dest": f.name, "default": None, "help": helptext, "type": kind}
        if meta.get("choices"):
            kwargs["choices"] = meta["choices"]
        if meta.get("repeat"):
            kwargs["action"] = "append"
        parser.add_argument(_flag(f), **kwargs)


def merge(cls, given: dict, recipe: dict):
    """``cls`` from flags that were given (not None), then the YAML ``recipe``, then the defaults."""
    values = {}
    for f in fields(cls):
        value = given.get(f.name)
        if value is None:
            value = recipe.get(f.name)
        if value is not None:
            values[f.name] = tuple(value) if f.metadata.get("repeat") else value
    return cls(**values)


def yaml_section(path: str) -> dict:
    """The ``quantization:`` mapping of a YAML recipe, its keys checked against the option classes."""
    from .models import load_yaml_config

    section = dict(load_yaml_config(path).get("quantization", {}) or {})
    for old, new in YAML_ALIASES.items():
        if old in section:
            section[new] = section.pop(old)
    known = {f.name for cls in OPTION_CLASSES for f in fields(cls)}
    unknown = sorted(set(section) - known)
    if unknown:
        raise UserError(f"config {path}: unknown quantization keys {unknown}")
    return section


def split_options(options: dict) -> Tuple[dict, dict]:
    """Keyword arguments (``ConvertSavedModel(**options)``) -> (Recipe fields, InputOptions fields);
    an unknown name is an error, as for any Python call."""
    known = [{f.name for f in fields(cls)} for cls in OPTION_CLASSES]
    unknown = sorted(set(options) - set().union(*known))
    if unknown:
        raise TypeError(f"unknown quantization options {unknown}")
    return tuple({k: v for k, v in options.items() if k in names} for names in known)
