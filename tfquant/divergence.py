"""How far a quantized model's next-token distributions are from fp32's: log-softmax and mean KL, in float64."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """log p over the last axis, in float64 (float32 loses the small KLs a single op causes)."""
    x = np.asarray(logits, np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def mean_kl(ref_logp: Sequence[np.ndarray], logq: Sequence[np.ndarray]) -> float:
    """KL(p || q) averaged over every position of every batch; each array is [..., vocab] log-probabilities."""
    total, count = 0.0, 0
    for p, q in zip(ref_logp, logq):
        total += float((np.exp(p) * (p - q)).sum(-1).sum())
        count += int(np.prod(p.shape[:-1]))
    return total / max(count, 1)
