"""Accuracy: eval items as token ids, and per-item last-token / whole-word correctness (see the metric
definitions in ``python -m tfquant.benchmark --help``)."""
from __future__ import annotations

import hashlib
import sys
import time
from dataclasses import dataclass
from typing import List, Optional, Sequence

from ..data import encode
from ..errors import UserError
from .cache import ResultCache
from .runner import LoadedModel, PositionLimit

SAVE_EVERY = 25  # computed items between cache saves: an interrupted long run keeps what it computed


@dataclass
class TokItem:
    id: str
    ids: List[int]  # context tokens + target tokens
    n_target: int


def tokenize_items(items, tok) -> List[TokItem]:
    """``ctx = encode(context)``, ``tgt = encode(" " + target)``: the target is tokenized on its own, so no BPE
    merge can cross the context/target boundary."""
    out = []
    for it in items:
        ctx = encode(tok, it.context)
        tgt = encode(tok, " " + it.target)
        if not ctx or not tgt:
            raise UserError(f"eval item {it.id} tokenizes to an empty context or target")
        out.append(TokItem(it.id, ctx + tgt, len(tgt)))
    return out


def _fit(item: TokItem, limit: Optional[int]) -> tuple:
    """(sequence to use, n_target) with the input ``seq[:-1]`` at most ``limit`` tokens (left-truncated)."""
    seq = item.ids
    if limit and len(seq) - 1 > limit:
        if item.n_target >= limit:
            raise UserError(f"eval item {item.id}: its target has {item.n_target} tokens, more than the model's "
                            f"{limit} positions")
        seq = seq[len(seq) - 1 - limit:]
    return seq, item.n_target


def token_hash(seq: Sequence[int], n_target: int) -> str:
    """What a cached result is valid for: the exact tokens fed and how many of them are the target."""
    return hashlib.sha1((",".join(map(str, seq)) + f"|{n_target}").encode()).hexdigest()[:20]


def _run_item(model: LoadedModel, item: TokItem) -> tuple:
    """(token hash, (last token right, whole word right)) of one forward of ``full[:-1]`` (teacher forcing)."""
    import numpy as np

    seq, n_tgt = _fit(item, model.max_positions)
    try:
        logits = model.forward(np.asarray([seq[:-1]], dtype=np.int32))
    except PositionLimit as exc:  # limit unknown beforehand: learn it, truncate, retry once
        model.learn_limit(exc)
        seq, n_tgt = _fit(item, model.max_positions)
        logits = model.forward(np.asarray([seq[:-1]], dtype=np.int32))
    pred = model.tf.argmax(logits[0, -n_tgt:], axis=-1).numpy()
    target = np.asarray(seq[-n_tgt:])
    return token_hash(seq, n_tgt), (bool(pred[-1] == target[-1]), bool(np.all(pred == target)))


def score_items(model: LoadedModel, titems: List[TokItem], cache: Optional[ResultCache], progress: bool) -> dict:
    """Per-item (last-token, whole-word) correctness; cached items are not run."""
    from tqdm import tqdm

    last, word = [], []
    hits = 0
    t0 = time.perf_counter()
    bar = tqdm(titems, desc=f"accuracy {model.spec.name}", unit="item", disable=not progress, file=sys.stderr,
               dynamic_ncols=True)
    try:
        for k, item in enumerate(bar):
            got = cache.get(item.id, token_hash(*_fit(item, model.max_positions))) if cache else None
            if got is not None:
                hits += 1
            else:
                h, got = _run_item(model, item)
                if cache:
                    cache.put(item.id, h, *got)
                    if (k + 1) % SAVE_EVERY == 0:
                        cache.save()
            last.append(got[0])
            word.append(got[1])
    finally:
        bar.close()
        if cache:
            cache.save()
    return {"last": last, "word": word, "cache_hits": hits, "seconds": time.perf_counter() - t0}
