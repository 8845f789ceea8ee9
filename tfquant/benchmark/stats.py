"""The benchmark's statistics: intervals for accuracies and their paired differences, latency summaries.
Pure functions of numbers (numpy only).  KL divergence between next-token distributions: tfquant.divergence."""
from __future__ import annotations

import math
from typing import Sequence


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple:
    """The Wilson score interval for ``k`` successes out of ``n`` (95% for z = 1.96)."""
    if n <= 0:
        raise ValueError("wilson_interval needs n > 0")
    if not 0 <= k <= n:
        raise ValueError(f"wilson_interval needs 0 <= k <= n, got k={k}, n={n}")
    p = k / n
    z2 = z * z
    denom = 1.0 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1.0 - p) / n + z2 / (4.0 * n * n)) / denom
    return max(0.0, center - half), min(1.0, center + half)


def paired_difference(x: Sequence, y: Sequence, z: float = 1.96) -> dict:
    """Paired difference of two per-item correctness vectors over the same items: mean(x) - mean(y).

    ``b`` = items right in x and wrong in y, ``c`` = wrong in x and right in y (the discordant pairs);
    ``d = (b - c) / n``, ``se = sqrt((b + c) - (b - c)**2 / n) / n`` (the usual interval for the difference of
    paired proportions, as in McNemar's setting), interval ``d +/- z * se`` clipped to [-1, 1].
    """
    if len(x) != len(y):
        raise ValueError(f"paired_difference needs vectors of equal length, got {len(x)} and {len(y)}")
    n = len(x)
    if n == 0:
        raise ValueError("paired_difference needs at least one item")
    b = sum(1 for a, r in zip(x, y) if bool(a) and not bool(r))
    c = sum(1 for a, r in zip(x, y) if not bool(a) and bool(r))
    d = (b - c) / n
    se = math.sqrt(max(0.0, (b + c) - (b - c) ** 2 / n)) / n
    return {"n": n, "b": b, "c": c, "diff": d, "se": se,
            "ci95": [max(-1.0, d - z * se), min(1.0, d + z * se)], "mcnemar_exact_p": mcnemar_exact_p(b, c)}


def mcnemar_exact_p(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value (binomial test of b against b + c with p = 1/2)."""
    m = b + c
    if m == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(m, i) for i in range(k + 1)) / 2.0 ** m
    return min(1.0, 2.0 * tail)


def accuracy_summary(flags: Sequence[bool]) -> dict:
    """Count, correct, fraction and 95% Wilson interval of per-item correctness flags."""
    n, k = len(flags), int(sum(bool(f) for f in flags))
    lo, hi = wilson_interval(k, n)
    return {"n": n, "correct": k, "accuracy": k / n, "ci95": [lo, hi]}


def latency_summary(ms: Sequence[float]) -> dict:
    """Median, p90 (numpy's interpolated percentile), mean, min, max and count of per-run milliseconds."""
    import numpy as np

    a = np.asarray(ms, dtype=np.float64)
    return {"median": float(np.median(a)), "p90": float(np.percentile(a, 90)), "mean": float(a.mean()),
            "min": float(a.min()), "max": float(a.max()), "runs": int(a.size)}

