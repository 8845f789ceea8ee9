"""QuantPolicy: the user's flags, resolved once into the decisions the passes need.

No pass reads ``itex_mode`` or ``performance_only`` directly; they ask the policy a
question ("quantize float ConcatV2?", "which mode for this activation?") instead.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Tuple

from .errors import UserError
from .recipe import BLOCK_WEIGHTS, Recipe

# Each default lives in tfquant.recipe.Recipe; these names stay for the modules that print them.
_R = Recipe()
DEFAULT_OUTLIER_THRESHOLD = _R.outlier_threshold
DEFAULT_MAX_OUTLIER_FRACTION = _R.max_outlier_fraction
DEFAULT_TOKEN_OUTLIER_THRESHOLD = _R.token_outlier_threshold
DEFAULT_PER_CHANNEL_MIN_SPREAD = _R.per_channel_min_spread


@dataclass(frozen=True)
class QuantPolicy:
    itex_mode: bool = False
    performance_only: bool = False
    # --- decisions derived from the flags (see from_flags) ---
    concat_skip_reason: str = ""            # why float ConcatV2 gets no QDQ at all ("" = it may)
    concat_needs_nonnegative: bool = True   # reference rule; performance_only relaxes it to "same type"
    symmetric_activations: bool = False     # performance_only: SCALED everywhere
    allow_transpose_a: bool = False         # itex_mode: ITEX handles MatMul(transpose_a)
    allow_fallback: bool = True             # performance_only: never keep ops in fp32 for accuracy
    weight_per_channel: bool = True         # per output channel (MatMul axis 1); the reference is per tensor
    # ... but only where it buys precision: a weight whose largest column max|w| is within this factor of its
    # smallest gets one scale (per-channel would cost a rescale Mul per output for < log2(1.1) = 0.14 bit).
    per_channel_min_spread: float = DEFAULT_PER_CHANNEL_MIN_SPREAD
    output_format: str = "int8"             # "int8": lower to real int8 kernels; "qdq": keep the QDQ graph
    weight_bits: int = _R.weight_bits       # lowered weights: 8 (pair-safe, see weight_pairs) or 7
    weight_pairs: str = _R.weight_pairs     # 8-bit lowered weights: "safe" on every CPU, "full" VNNI/AMX only
    weight_rounding: str = _R.weight_rounding  # lowered weights: "nearest" or "gptq" (tfquant/gptq.py)
    exclude: Tuple[str, ...] = field(default_factory=tuple)  # regexes of op names kept in fp32
    outlier_threshold: float = DEFAULT_OUTLIER_THRESHOLD  # > 0: channels above threshold x median |x| run in fp32 (a fallback)
    max_outlier_fraction: float = DEFAULT_MAX_OUTLIER_FRACTION  # at most this share of a MatMul's input channels
    # > 0: a MatMul input whose calibrated token spread (top token max|x| / median token's) exceeds this is
    # quantized per token: rows scaled to [-1, 1] before QuantizeV2, the output rescaled (rewrite.py).
    token_outlier_threshold: float = DEFAULT_TOKEN_OUTLIER_THRESHOLD
    smooth_alpha: float = 0.0               # > 0: SmoothQuant migration strength (tfquant/smooth.py)
    # itex_mode: ITEX fuses Const(fp32) -> QuantizeV2 -> Dequantize -> MatMul, not a variable read, so weights
    # are written into the GraphDef as fp32 Consts -- while they fit (protobuf caps a GraphDef at 2 GB).
    weights_as_const: bool = False
    # int8 format: MatMuls sharing one quantized input run as one kernel (tfquant/fuse.py).  Not for QDQ
    # graphs, where the fused weight would be a run-time ConcatV2 of variables.
    fuse_shared_input: bool = False
    # int8 format: exact fp32 rewrites of slow glue around the kernels (tfquant/simplify.py: GPT-J's rotary;
    # shapes.py + cse.py: shape arithmetic shared across layers, identical pure ops merged).
    simplify: bool = True
    # --- the scheme (tfquant/recipe.py) ---
    activations: str = "int8"               # int8 (calibrated) | dynamic (per-token at run time) | none (weight-only)
    weight_format: str = ""                 # weight-only: the tfquant.formats name the weights are stored in
    weight_format_options: Tuple[tuple, ...] = ()  # ... and its options (granularity, group size, symmetric)
    compute_dtype: str = "float32"          # weight-only MatMuls: bfloat16 where bf16 weights meet a CPU with bf16 units
    decode_chunk_mb: float = _R.decode_chunk_mb  # weight-only: larger fp32 decodes run in column slices (weightonly.py)

    @classmethod
    def from_flags(cls, **options) -> QuantPolicy:
        """``from_recipe(Recipe(**options))``: the recipe's field names as keyword arguments."""
        return cls.from_recipe(Recipe(**options))

    @classmethod
    def from_recipe(cls, recipe: Recipe) -> QuantPolicy:
        r = recipe.resolved()
        itex_mode, performance_only, output_format = r.itex_mode, r.performance_only, r.output_format
        if output_format is None:
            # ITEX fuses QDQ itself at run time; stock TF needs the lowered int8 kernels to be fast.
            output_format = "qdq" if itex_mode else "int8"
        if itex_mode and output_format != "qdq":
            raise UserError("--itex_mode writes a QDQ graph for ITEX to fuse; it cannot be combined with --format int8")
        if not 0.0 <= r.smooth_alpha <= 1.0:
            raise UserError(f"--smooth_alpha must be in [0, 1], got {r.smooth_alpha}")
        if r.outlier_threshold < 0:
            raise UserError(f"--outlier_threshold must be >= 0, got {r.outlier_threshold}")
        if not 0.0 < r.max_outlier_fraction <= 0.5:
            raise UserError(f"--max_outlier_fraction must be in (0, 0.5], got {r.max_outlier_fraction}")
        if r.per_channel_min_spread < 1.0:
            raise UserError(f"--per_channel_min_spread must be >= 1, got {r.per_channel_min_spread}")
        if r.token_outlier_threshold < 0:
            raise UserError(f"--token_outlier_threshold must be >= 0, got {r.token_outlier_threshold}")
        if r.fallback_kl < 0 or r.fallback_max_ops < 0 or r.fallback_windows <= 0:
            raise UserError("fallback budget and op count must be >= 0 and fallback windows > 0")
        for pattern in r.exclude:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise UserError(f"bad --exclude pattern {pattern!r}: {exc}") from None
        dynamic = r.activations == "dynamic"
        weight_only = r.activations == "none"
        fmt, fmt_options = weight_format(r) if weight_only else ("", ())
        weight_granularity, smooth_alpha, fuse_matmuls = r.weight_granularity, r.smooth_alpha, r.fuse_matmuls
        exclude, weight_bits, simplify = r.exclude, r.weight_bits, r.simplify
        outlier_threshold, token_outlier_threshold = r.outlier_threshold, r.token_outlier_threshold
        max_outlier_fraction, per_channel_min_spread = r.max_outlier_fraction, r.per_channel_min_spread
        return cls(
            itex_mode=itex_mode,
            performance_only=performance_only,
            concat_skip_reason=(
                "itex_mode: ConcatV2 gets no QDQ" if itex_mode else
                "weight-only: activations stay float" if weight_only else
                "dynamic activations: a ConcatV2 has no run-time range" if dynamic else
                "int8 format: no int8 kernel consumes a ConcatV2 on stock TF, QDQ would only add error"
                if output_format == "int8" else ""),
            concat_needs_nonnegative=not performance_only,
            # ITEX fuses Dequantize -> MatMul only for SCALED activations (measured: with MIN_FIRST nothing fuses
            # and the weight QDQ then re-runs every call, 6x slower than fp32)
            symmetric_activations=performance_only or itex_mode,
            allow_transpose_a=itex_mode,
            allow_fallback=not performance_only,
            weight_per_channel=weight_granularity == "per_channel",
            per_channel_min_spread=float(per_channel_min_spread),
            output_format=output_format,
            weight_bits=weight_bits,
            weight_rounding=r.weight_rounding,
            weight_pairs=r.weight_pairs,
            exclude=tuple(exclude),
            # performance_only means no fallback of any kind, partial (outlier channels) included
            # dynamic ranges are per token by construction, and without calibration no channel is known to be an outlier
            outlier_threshold=0.0 if performance_only or dynamic or weight_only else float(outlier_threshold),
            # itex_mode: measured, one per-token rescale (Abs/Max/RealDiv) anywhere in the graph and ITEX fused
            # nothing at all (6x slower than fp32, the weight QDQ then runs every call); so no per-token there.
            token_outlier_threshold=0.0 if performance_only or itex_mode or weight_only else float(token_outlier_threshold),
            max_outlier_fraction=float(max_outlier_fraction),
            smooth_alpha=float(smooth_alpha),
            weights_as_const=itex_mode,
            fuse_shared_input=fuse_matmuls and output_format == "int8",
            simplify=simplify and output_format == "int8",
            activations=r.activations,
            weight_format=fmt,
            weight_format_options=fmt_options,
            compute_dtype=compute_dtype(r.weights),
            decode_chunk_mb=float(r.decode_chunk_mb),
        )

    @property
    def weight_only(self) -> bool:
        return self.activations == "none"

    @property
    def needs_calibration(self) -> bool:
        return self.activations == "int8"

    def activation_mode(self) -> str:
        return "SCALED" if self.symmetric_activations else "MIN_FIRST"

    def activation_dtype(self, rng) -> str:
        """quint8 is the reference type.  With SCALED (symmetric) quint8 would clip every negative
        value to zero, which destroys activations after LayerNorm, so signed ranges use qint8."""
        if self.symmetric_activations and rng.min < 0:
            return "qint8"
        return "quint8"

    def is_excluded(self, op_name: str) -> bool:
        return any(re.search(p, op_name) for p in self.exclude)

    def describe(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


def weight_format(r: Recipe) -> Tuple[str, tuple]:
    """(tfquant.formats name, its options) of a resolved weight-only recipe."""
    if r.weights in BLOCK_WEIGHTS:
        return BLOCK_WEIGHTS[r.weights][0], ()
    if r.weights in ("bf16", "fp16"):
        return r.weights, ()
    base = "int8_per_channel" if r.weights == "int8" else "int4_g32"
    options = (("granularity", r.weight_granularity), ("symmetric", r.symmetric))
    if r.weight_granularity == "per_group":
        options += (("group_size", r.group_size),)
    else:
        options += (("group_size", None),)
    return base, options


def compute_dtype(weights: str) -> str:
    """bf16 weights compute in bf16 where the CPU has bf16 dot products (measured here, AMX/AVX512_BF16,
    [128, 576] x [576, 1536]: 1.15 ms against 1.65 ms fp32 and 2.10 ms for Cast-to-fp32 then MatMul);
    elsewhere oneDNN emulates bf16 and the weight is cast to fp32 instead."""
    from .machine import cpu_flags

    if weights == "bf16" and {"avx512_bf16", "amx_bf16"} & set(cpu_flags()):
        return "bfloat16"
    return "float32"
