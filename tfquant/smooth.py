"""SmoothQuant: move activation outliers into the weights before quantizing.

For an activation X feeding MatMuls with weights W_1..W_m (q, k, v share one X), per input
channel j:   s_j = max|X_j|^alpha / max_i max|W_i[j, :]|^(1 - alpha)
and X @ W = (X / s) @ (s * W).  X / s is an explicit ``Mul`` by a constant vector (one per
activation, shared by its MatMuls); s * W is a ``Mul`` on the weight that the int8 lowering
folds into the stored int8 weights, so big models still keep weights in variables.

Smoothing alone leaves the fp32 function unchanged (tests check it); it only changes which
tensors are quantized.  The calibrated ranges of X are rescaled from the per-channel
statistics, so no second calibration pass is needed.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable, Dict, List

import numpy as np

from .calibrate import TensorRange
from .graph import DType, Graph, canonical, is_float, make_const, make_node, parse_input
from .quantizers.matmul import is_weight


def smoothing_groups(graph: Graph, policy) -> Dict[str, List]:
    """Activation tensor -> the float MatMuls (not excluded, weight on input 1) that read it."""
    groups: Dict[str, List] = {}
    for mm in graph.by_op("MatMul"):
        if not is_float(mm) or policy.is_excluded(mm.name) or mm.attr["transpose_a"].b or mm.attr["transpose_b"].b:
            continue
        if not is_weight(graph, graph.skip_identity(mm.input[1])):
            continue
        groups.setdefault(canonical(mm.input[0]), []).append(mm)
    return dict(sorted(groups.items()))


def apply_smoothing(graph: Graph, ranges: Dict[str, TensorRange], weight_values: Callable[[str], np.ndarray],
                    policy, alpha: float) -> tuple:
    """Insert the smoothing Muls; returns (new ranges, report rows)."""
    new_ranges = dict(ranges)
    rows = []
    for act, matmuls in smoothing_groups(graph, policy).items():
        rng = ranges.get(act)
        if rng is None or rng.channel_min is None:
            continue
        cmin, cmax = np.asarray(rng.channel_min), np.asarray(rng.channel_max)
        act_max = np.maximum(np.abs(cmin), np.abs(cmax))
        weights = [graph.skip_identity(mm.input[1]) for mm in matmuls]
        w_max = np.max([np.abs(weight_values(w)).max(axis=1) for w in weights], axis=0)
        s = np.power(np.maximum(act_max, 1e-5), alpha) / np.power(np.maximum(w_max, 1e-5), 1.0 - alpha)
        s = np.clip(s, 1e-5, 1e5).astype(np.float32)
        base = f"{parse_input(act)[0]}_smoothquant"
        graph.add(make_const(f"{base}/inv_scale", (1.0 / s).astype(np.float32)))
        smoothed = graph.add(make_node("Mul", f"{base}/x", [act, f"{base}/inv_scale"], {"T": DType("float")})).name
        for mm, w in zip(matmuls, weights):
            graph.add(make_const(f"{mm.name}_smoothquant/scale", s[:, None]))
            w_s = graph.add(make_node("Mul", f"{mm.name}_smoothquant/weight", [w, f"{mm.name}_smoothquant/scale"],
                                      {"T": DType("float")}))
            mm.input[0] = smoothed
            mm.input[1] = w_s.name
        lo, hi = cmin / s, cmax / s
        new_ranges[smoothed] = replace(rng, min=float(lo.min()), max=float(hi.max()),
                                       channel_min=tuple(float(v) for v in lo), channel_max=tuple(float(v) for v in hi))
        rows.append({"activation": act, "matmuls": [mm.name for mm in matmuls],
                     "range_before": [rng.min, rng.max], "range_after": [float(lo.min()), float(hi.max())]})
    graph.toposort()
    return new_ranges, rows
