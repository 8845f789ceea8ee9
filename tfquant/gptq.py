"""Error-compensating weight rounding (GPTQ, Frantar et al. 2022, arXiv 2210.17323) for the int8 kernels.

Round-to-nearest (RTN) rounds every weight on its own.  What the model feels is the MatMul's output
error ``X (W - Q)``, and with correlated inputs the rounding error of one input row of ``W`` can be
cancelled by nudging the rows not yet rounded.  GPTQ does that greedily, one input row at a time, using
``H = sum over calibration tokens of x^T x`` (the inputs' second moments, collected during calibration):
after rounding row ``i`` its error, scaled by the inverse Hessian's Cholesky factor, is subtracted from the
remaining rows.  The scales stay what RTN would use (max|w| per output column / levels), so the lowered
kernel, its bias compensation and the report are unchanged; only the integer codes differ.

Rows processed in descending ``diag(H)`` (GPTQ's "act order"): the rows with the largest inputs are
rounded first, while the most rows remain to absorb their error.  Rows whose input channel runs in fp32
beside the kernel (outlier channels, ``rewrite.split_outliers``) are exact: they are left out of ``H``
and stay zero.  Rows that never see a non-zero input (``H_ii = 0``) are rounded to nearest.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np

# GPTQ's defaults: dampening of 1% of the mean diagonal (keeps H invertible with few calibration tokens
# and limits how far the compensation trusts the calibration text), lazy updates in blocks of
# 32 rows (128 in the paper; each row's update touches the block's later rows, which for an lm_head of 49152
# columns is memory traffic: 32 measured 2.8 s against 7.7 s there, and the result is the same up to float rounding).
DAMPENING = 0.01
BLOCK = 32
# Second moments are K x K float64 per MatMul input.  SmolLM2-135M needs 0.8 GB; GPT-J-6B would need ~68 GB
# (28 x 16384^2 for fc_out alone), so inputs are taken smallest first while they fit and the rest round to
# nearest (the report lists them).  A fixed number, not the machine's memory: the same inputs give the same graph.
MOMENT_BUDGET_BYTES = 4 * 2**30


def moment_bytes(width: int) -> int:
    return int(width) * int(width) * 8


def within_budget(widths: dict, budget: int = MOMENT_BUDGET_BYTES) -> set:
    """The tensors (name -> input width) whose second moments fit the budget, narrowest first, ties by name."""
    chosen, used = set(), 0
    for name, width in sorted(widths.items(), key=lambda kv: (kv[1], kv[0])):
        if used + moment_bytes(width) > budget:
            break
        chosen.add(name)
        used += moment_bytes(width)
    return chosen


def round_nearest(w: np.ndarray, scale, levels: int) -> np.ndarray:
    """RTN with the kernel's rule (round half to even, clamp to [-levels, levels]); as qparams.quantize_weight."""
    return np.clip(np.round(w / scale), -levels, levels)


class GptqSolver:
    """The part of GPTQ that depends only on the inputs: the row order and the inverse Hessian's factor.

    MatMuls that read one tensor (q/k/v, gate/up) share one solver: the factor (O(K^3)) is computed once.
    ``h`` [K, K]: sum of ``x^T x`` over the calibration tokens.  ``exact_rows``: input channels computed in
    fp32 elsewhere; their codes are 0 and they absorb no error.
    """

    def __init__(self, h: np.ndarray, exact_rows: Iterable[int] = (), dampening: float = DAMPENING):
        h = np.asarray(h, np.float64)
        self.width = h.shape[0]
        diag = np.diag(h)
        active = np.ones(self.width, bool)
        active[list(exact_rows)] = False
        self.dead = np.flatnonzero(active & ~(diag > 0))  # never multiplied by a non-zero input
        rows = np.flatnonzero(active & (diag > 0))
        self.order = rows[np.argsort(-diag[rows], kind="stable")]
        self.factor = _inverse_cholesky(h[np.ix_(self.order, self.order)], dampening) if rows.size else None

    def quantize(self, w: np.ndarray, max_abs, levels: int, block: int = BLOCK) -> np.ndarray:
        """Integer codes [K, N] (int8, in [-levels, levels]) of ``w`` [K, N] for ``y = x @ w``; ``max_abs``
        per output column [N] or one scalar, exactly as round-to-nearest would use it (scale = max_abs / levels)."""
        w = np.asarray(w, np.float64)
        if w.shape[0] != self.width:
            raise ValueError(f"weight has {w.shape[0]} input rows, the second moments {self.width}")
        scale = np.broadcast_to(np.asarray(max_abs, np.float64) / levels, (w.shape[1],))
        codes = np.zeros(w.shape, np.float64)
        codes[self.dead] = round_nearest(w[self.dead], scale, levels)
        if self.factor is not None:
            codes[self.order] = _gptq_rows(w[self.order], self.factor, scale, levels, block)
        return codes.astype(np.int8)


def gptq_quantize(w: np.ndarray, h: np.ndarray, max_abs, levels: int, exact_rows: Iterable[int] = (),
                  dampening: float = DAMPENING) -> np.ndarray:
    """One weight, one solver: ``GptqSolver(h, exact_rows, dampening).quantize(w, max_abs, levels)``."""
    return GptqSolver(h, exact_rows, dampening).quantize(w, max_abs, levels)


def _inverse_cholesky(h: np.ndarray, dampening: float) -> np.ndarray:
    """Upper U with U^T U = (H + damp I)^-1, GPTQ's stable form of the inverse Hessian.

    With J the reversal, chol(J H J) = M gives H = R R^T for the upper R = J M J, so (H)^-1 = R^-T R^-1 and
    U = R^-1: one Cholesky and one inverse (half the work of inverting H and factoring the inverse).
    """
    h = h.copy()
    h[np.diag_indices_from(h)] += dampening * float(np.mean(np.diag(h)))
    upper = np.linalg.cholesky(h[::-1, ::-1])[::-1, ::-1]
    return np.triu(np.linalg.inv(upper))


def _gptq_rows(w: np.ndarray, u: np.ndarray, scale: np.ndarray, levels: int, block: int) -> np.ndarray:
    """GPTQ over the rows of ``w`` in the order given (lazy batch updates, one block of rows at a time)."""
    w = w.copy()
    k = w.shape[0]
    codes = np.zeros_like(w)
    for start in range(0, k, block):
        stop = min(start + block, k)
        w_block = w[start:stop].copy()
        errors = np.zeros_like(w_block)
        u_block = u[start:stop, start:stop]
        for i in range(stop - start):
            q = round_nearest(w_block[i], scale, levels)
            codes[start + i] = q
            err = (w_block[i] - q * scale) / u_block[i, i]
            w_block[i + 1:] -= np.outer(u_block[i, i + 1:], err)
            errors[i] = err
        w[stop:] -= u[start:stop, stop:].T @ errors
    return codes
