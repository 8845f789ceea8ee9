"""Calibration: run the float model on sample batches and collect activation ranges.

This module never edits the graph it reports on.  It asks the graph for the tensors
to observe (``activation_tensors``), runs a private copy of the model that also
returns those tensors, feeds every batch to one observer per tensor, and hands back
plain ``TensorRange`` objects.  The rewriter only ever sees those objects.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, asdict
from typing import Dict, Iterable, List

import numpy as np

from .errors import UserError
from .graph import Graph, canonical, parse_input


@dataclass(frozen=True)
class TensorRange:
    """The calibrated float range of one tensor (per tensor)."""

    min: float
    max: float
    observer: str = "minmax"

    def to_json(self) -> dict:
        return asdict(self)


# ----- observers --------------------------------------------------------------------------------
class MinMaxObserver:
    """The reference observer: global min of the per-batch minima, max of the maxima."""

    name = "minmax"

    def __init__(self):
        self.min = math.inf
        self.max = -math.inf
        self.count = 0  # values seen; 0 for tensors that are always empty

    def observe(self, x: np.ndarray) -> None:
        if x.size:
            self.count += x.size
            self.min = min(self.min, float(np.min(x)))
            self.max = max(self.max, float(np.max(x)))

    def range(self) -> TensorRange:
        return TensorRange(self.min, self.max, self.name)


OBSERVERS = {MinMaxObserver.name: MinMaxObserver}


# ----- what to observe -------------------------------------------------------------------------
def is_float(node) -> bool:
    return node.attr["T"].type == 1  # DT_FLOAT


def activation_tensors(graph: Graph) -> List[str]:
    """Float activation inputs of MatMul (input 0) and of float ConcatV2 (every data input).

    Sorted, so that calibration and its report are deterministic.
    """
    wanted = set()
    for node in graph.by_op("MatMul"):
        if is_float(node):
            wanted.add(canonical(node.input[0]))
    for node in graph.by_op("ConcatV2"):
        if is_float(node):
            n = node.attr["N"].i
            wanted.update(canonical(i) for i in node.input[:n])
    # Constants need no calibration: their range is known (and they are not activations).
    return sorted(t for t in wanted if graph.node(parse_input(t)[0]).op != "Const")


# ----- the loop --------------------------------------------------------------------------------
def calibrate(run_with_tensors, batches: Iterable[Dict[str, np.ndarray]], tensors: List[str],
              observer: str = "minmax", progress: bool = True) -> Dict[str, TensorRange]:
    """Feed ``batches`` through ``run_with_tensors(**feeds) -> {tensor: value}`` and observe ``tensors``."""
    from tqdm import tqdm

    if observer not in OBSERVERS:
        raise UserError(f"unknown observer {observer!r} (choose from {sorted(OBSERVERS)})")
    observers = {t: OBSERVERS[observer]() for t in tensors}
    batches = list(batches)
    if not batches:
        raise UserError("calibration needs at least one batch")
    for feeds in tqdm(batches, desc="calibrate", unit="batch", disable=not progress):
        values = run_with_tensors(**feeds)
        for t in tensors:
            observers[t].observe(np.asarray(values[t]))
    # A tensor that is empty in every batch has no range; it is left out and the quantizer
    # of its consumer reports it as not observed (GPT-J's rotary pass-through slice is empty
    # when rotary_dim equals the head size).
    ranges = {t: obs.range() for t, obs in observers.items() if obs.count}
    check_ranges(ranges)
    return ranges


def check_ranges(ranges: Dict[str, TensorRange]) -> None:
    """A NaN/Inf or zero-width range cannot be quantized: say which tensor, stop."""
    for t, r in ranges.items():
        if not (math.isfinite(r.min) and math.isfinite(r.max)):
            raise UserError(f"calibration gave a non-finite range [{r.min}, {r.max}] for tensor {t}")
        if r.max <= r.min:
            raise UserError(f"calibration gave a zero-width range [{r.min}, {r.max}] for tensor {t}")
