"""One small quantizer per op type, registered by op type.

A quantizer looks at one node with the policy and the calibrated ranges and returns a
``Plan`` (which inputs get QDQ, with which parameters) or a ``Skip`` (why not).  It does
not edit the graph: ``tfquant.rewrite`` applies the plans.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

QUANTIZERS: Dict[str, object] = {}


def register(cls):
    QUANTIZERS[cls.op_type] = cls()
    return cls


@dataclass(frozen=True)
class ActivationQ:
    """QDQ on a float activation input: QuantizeV2(tensor, min, max) -> Dequantize."""

    input_index: int
    tensor: str
    dtype: str      # quint8 | qint8
    mode: str       # MIN_FIRST | SCALED
    min: float
    max: float


@dataclass(frozen=True)
class WeightQ:
    """QDQ on a weight: symmetric qint8, per tensor or per output channel."""

    input_index: int
    tensor: str     # the weight as stored (a ReadVariableOp or Const), Identity chains skipped
    per_channel: bool
    # The op multiplies by ``tensor`` transposed (transpose_b / adj_y / a Transpose op): the stored
    # tensor is [out, in] and its output channels are axis 0 (tied embeddings used as lm_head).
    transposed: bool = False


@dataclass
class Plan:
    op: str
    op_type: str
    activations: List[ActivationQ] = field(default_factory=list)
    weight: Optional[WeightQ] = None
    # Input channels whose calibrated magnitude would wreck a per-tensor int8 range: they are
    # computed in fp32 by a thin side MatMul and zeroed in the int8 weight (see rewrite.py).
    outlier_channels: Tuple[int, ...] = ()
    # Per-token activation scales: each row of the input is divided by its own max|x| before QuantizeV2
    # (range [-1, 1]) and the MatMul output multiplied back; see rewrite.scale_per_token.
    per_token: bool = False
    # Set by tfquant.fuse: the MatMuls this one replaced (one op per output slice, in order).
    fused_from: Tuple[str, ...] = ()


@dataclass(frozen=True)
class Skip:
    op: str
    op_type: str
    reason: str


# Importing the modules registers their quantizers.
from . import batchmatmul, concat, matmul  # noqa: E402,F401
