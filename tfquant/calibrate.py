"""Calibration: run the float model on sample batches and collect activation ranges.

This module never edits the graph it reports on.  It asks the graph for the tensors
to observe (``activation_tensors``), runs a private copy of the model that also
returns those tensors, feeds every batch to one observer per tensor, and hands back
plain ``TensorRange`` objects.  The rewriter only ever sees those objects.

Observers follow torch.ao's split: an observer only *collects* statistics (min/max,
a histogram, per-channel extremes); ``choose_range`` turns statistics into a range.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np

from .errors import UserError
from .graph import Graph, canonical, is_float, parse_input

OBSERVERS = ("minmax", "percentile", "mse", "kl")


@dataclass(frozen=True)
class TensorRange:
    """The calibrated float range of one tensor (per tensor), plus per-channel extremes when observed."""

    min: float
    max: float
    observer: str = "minmax"
    # Per last-axis channel min/max over all batches (MatMul inputs only); not written to report.json.
    channel_min: Optional[Tuple[float, ...]] = field(default=None, compare=False, repr=False)
    channel_max: Optional[Tuple[float, ...]] = field(default=None, compare=False, repr=False)
    # Largest per-batch ratio of the top token's max|x| to the median token's (MatMul inputs only):
    # large where a few tokens carry "massive activations" (the attention-sink token in down_proj).
    token_spread: Optional[float] = field(default=None, compare=False)
    # Sum of x^T x over every calibration token [K, K] float64 (MatMul inputs, GPTQ rounding only; tfquant/gptq.py).
    second_moment: Optional[np.ndarray] = field(default=None, compare=False, repr=False)

    def to_json(self) -> dict:
        out = {"min": self.min, "max": self.max, "observer": self.observer}
        if self.token_spread is not None:
            out["token_spread"] = round(self.token_spread, 3)
        return out


# ----- statistics ------------------------------------------------------------------------------
class Histogram:
    """A fixed-size histogram whose range grows to cover every value seen (re-binned when it does).

    Re-binning moves each old bin's count to the new bin holding its centre, which is exact
    enough for range selection and fully deterministic.
    """

    def __init__(self, bins: int = 2048):
        self.bins = bins
        self.counts = np.zeros(bins, np.float64)
        self.lo = self.hi = None

    def add(self, x: np.ndarray) -> None:
        x = x.ravel().astype(np.float64)
        lo, hi = float(x.min()), float(x.max())
        if self.lo is None:
            self.lo, self.hi = lo, hi if hi > lo else lo + 1e-6
        elif lo < self.lo or hi > self.hi:
            old_centres = self.centres()
            old_counts = self.counts
            self.lo, self.hi = min(lo, self.lo), max(hi, self.hi)
            self.counts = np.zeros(self.bins, np.float64)
            np.add.at(self.counts, self._index(old_centres), old_counts)
        np.add.at(self.counts, self._index(x), 1.0)

    def _index(self, v: np.ndarray) -> np.ndarray:
        idx = ((v - self.lo) / (self.hi - self.lo) * self.bins).astype(np.int64)
        return np.clip(idx, 0, self.bins - 1)

    def centres(self) -> np.ndarray:
        width = (self.hi - self.lo) / self.bins
        return self.lo + (np.arange(self.bins) + 0.5) * width

    def quantile(self, q: float) -> float:
        cdf = np.cumsum(self.counts) / self.counts.sum()
        i = int(np.searchsorted(cdf, q))
        return float(self.centres()[min(i, self.bins - 1)])


class Observer:
    """Collects min/max, per-channel min/max (optional) and a histogram (when the range needs one)."""

    def __init__(self, method: str = "minmax", per_channel: bool = False, bins: int = 2048,
                 second_moment: bool = False):
        if method not in OBSERVERS:
            raise UserError(f"unknown observer {method!r} (choose from {', '.join(OBSERVERS)})")
        self.method = method
        self.min, self.max = math.inf, -math.inf
        self.count = 0  # values seen; 0 for tensors that are always empty
        self.per_channel = per_channel
        self.ch_min = self.ch_max = None
        self.token_spread = None
        self.second_moment = second_moment
        self.h = None
        self.hist = Histogram(bins) if method != "minmax" else None

    def observe(self, x: np.ndarray) -> None:
        if not x.size:
            return
        self.count += x.size
        self.min = min(self.min, float(np.min(x)))
        self.max = max(self.max, float(np.max(x)))
        if self.per_channel and x.ndim >= 2:
            flat = x.reshape(-1, x.shape[-1])
            lo, hi = flat.min(axis=0), flat.max(axis=0)
            self.ch_min = lo if self.ch_min is None else np.minimum(self.ch_min, lo)
            self.ch_max = hi if self.ch_max is None else np.maximum(self.ch_max, hi)
            token_absmax = np.abs(flat).max(axis=1)
            spread = float(token_absmax.max() / max(float(np.median(token_absmax)), 1e-12))
            self.token_spread = spread if self.token_spread is None else max(self.token_spread, spread)
        if self.second_moment and x.ndim >= 2:
            flat = x.reshape(-1, x.shape[-1]).astype(np.float32)
            # float32 products of one batch's tokens, summed over batches in float64
            h = (flat.T @ flat).astype(np.float64)
            self.h = h if self.h is None else self.h + h
        if self.hist is not None:
            self.hist.add(x)

    def range(self) -> TensorRange:
        lo, hi = choose_range(self.method, self.min, self.max, self.hist)
        ch = {}
        if self.ch_min is not None:
            ch = {"channel_min": tuple(float(v) for v in self.ch_min),
                  "channel_max": tuple(float(v) for v in self.ch_max), "token_spread": self.token_spread}
        if self.h is not None:
            ch["second_moment"] = self.h
        return TensorRange(lo, hi, self.method, **ch)


# ----- statistics -> range ---------------------------------------------------------------------
def choose_range(method: str, lo: float, hi: float, hist: Optional[Histogram], percentile: float = 99.99,
                 levels: int = 255) -> Tuple[float, float]:
    if method == "minmax" or hist is None:
        return lo, hi
    if method == "percentile":
        tail = (100.0 - percentile) / 100.0
        return min(hist.quantile(tail), 0.0) if lo < 0 else lo, hist.quantile(1.0 - tail)
    if method == "mse":
        return _mse_range(hist, lo, hi, levels)
    if method == "kl":
        return _kl_range(hist, lo, hi)
    raise UserError(f"unknown observer {method!r}")


def _expected_sq_error(hist: Histogram, lo: float, hi: float, levels: int) -> float:
    """Expected squared error of uniform quantization to ``levels`` steps on [lo, hi] (clip + rounding)."""
    c, n = hist.centres(), hist.counts
    step = (hi - lo) / levels
    clipped = np.where(c < lo, (lo - c) ** 2, np.where(c > hi, (c - hi) ** 2, step * step / 12.0))
    return float((clipped * n).sum())


def _mse_range(hist: Histogram, lo: float, hi: float, levels: int, candidates: int = 200) -> Tuple[float, float]:
    """Shrink [lo, hi] towards 0 in `candidates` steps; keep the range with the least expected error."""
    best, best_err = (lo, hi), math.inf
    for i in range(candidates):
        f = 1.0 - i / candidates
        cand = (lo * f if lo < 0 else lo, hi * f if hi > 0 else hi)
        if cand[1] <= cand[0]:
            break
        err = _expected_sq_error(hist, cand[0], cand[1], levels)
        if err < best_err:
            best, best_err = cand, err
    return best


def _kl_range(hist: Histogram, lo: float, hi: float, target_bins: int = 128) -> Tuple[float, float]:
    """TensorRT-style entropy calibration on |x|: the clip threshold whose quantized distribution
    is closest (KL divergence) to the clipped reference distribution."""
    c, n = hist.centres(), hist.counts
    amax = max(abs(lo), abs(hi))
    bins = 2048
    abs_counts, edges = np.histogram(np.abs(c), bins=bins, range=(0.0, amax), weights=n)
    best_i, best_kl = bins, math.inf
    for i in range(target_bins, bins + 1, 16):
        ref = abs_counts[:i].copy()
        ref[i - 1] += abs_counts[i:].sum()  # outliers are clipped into the last bin
        if ref.sum() == 0:
            continue
        # quantize the first i bins into target_bins, then expand back (only over non-empty bins)
        chunks = np.array_split(np.arange(i), target_bins)
        q = np.zeros(i)
        for ch in chunks:
            nz = abs_counts[ch] > 0
            if nz.any():
                q[ch[nz]] = abs_counts[ch].sum() / nz.sum()
        p = ref / ref.sum()
        qs = q / q.sum() if q.sum() else q
        mask = p > 0
        kl = float(np.sum(p[mask] * np.log(p[mask] / np.maximum(qs[mask], 1e-12))))
        if kl < best_kl:
            best_i, best_kl = i, kl
    t = float(edges[best_i])
    return max(lo, -t), min(hi, t)


# ----- what to observe -------------------------------------------------------------------------
def activation_tensors(graph: Graph, include_concat: bool = True) -> List[str]:
    """Float activation inputs of MatMul and of BatchMatMul by a weight (input 0) and of float ConcatV2
    (every data input, unless the policy never quantizes ConcatV2).

    Sorted, so that calibration and its report are deterministic.
    """
    wanted = matmul_inputs(graph)
    for node in graph.by_op("ConcatV2") if include_concat else ():
        if is_float(node):
            n = node.attr["N"].i
            wanted.update(canonical(i) for i in node.input[:n])
    # Constants need no calibration: their range is known (and they are not activations).
    return sorted(t for t in wanted if graph.node(parse_input(t)[0]).op != "Const")


def matmul_inputs(graph: Graph) -> set:
    from .quantizers.matmul import BATCH_MATMULS, weight_matmul_activation  # quantizers import this module

    found = (weight_matmul_activation(graph, n) for n in graph.by_op("MatMul", *BATCH_MATMULS))
    return {t for t in found if t is not None}


# ----- the loop --------------------------------------------------------------------------------
def calibrate(run_with_tensors, batches: Iterable[Dict[str, np.ndarray]], tensors: List[str],
              observer: str = "minmax", progress: bool = True, per_channel: Iterable[str] = (),
              second_moments: Iterable[str] = ()) -> Dict[str, TensorRange]:
    """Feed ``batches`` through ``run_with_tensors(**feeds) -> {tensor: value}`` and observe ``tensors``.

    Tensors in ``per_channel`` also get per-channel min/max (for outlier handling and smoothing); those in
    ``second_moments`` the sum of x^T x (GPTQ rounding), as many as ``gptq.MOMENT_BUDGET_BYTES`` allows,
    narrowest first (the widths are known after the first batch).
    """
    from tqdm import tqdm

    from .gptq import within_budget

    per_channel, second_moments = set(per_channel), set(second_moments)
    observers = {t: Observer(observer, per_channel=t in per_channel) for t in tensors}
    batches = list(batches)
    if not batches:
        raise UserError("calibration needs at least one batch")
    for step, feeds in enumerate(tqdm(batches, desc="calibrate", unit="batch", disable=not progress)):
        values = run_with_tensors(**feeds)
        if step == 0 and second_moments:
            widths = {t: int(np.shape(values[t])[-1]) for t in second_moments if np.ndim(values[t]) >= 2}
            for t in within_budget(widths):
                observers[t].second_moment = True
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
