"""What to feed a causal LM's signature besides the token ids, and checks on the ids themselves.

Exports differ in what their serving signature takes: tfquant's own takes ``input_ids`` and
``attention_mask``; Hugging Face's ``save_pretrained(saved_model=True)`` GPT-J also takes
``token_type_ids``; other exports take ``position_ids``.  For unpadded batches (all that
calibration and scoring feed) each of these has one value a model expects, derived from the ids.
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional

import numpy as np

from .errors import UserError


def _mask(ids, past_len):
    return np.ones((ids.shape[0], past_len + ids.shape[1]), ids.dtype)  # every past and new position attends


def _token_types(ids, past_len):
    return np.zeros_like(ids)


def _positions(ids, past_len):
    return np.broadcast_to(np.arange(past_len, past_len + ids.shape[1], dtype=ids.dtype), ids.shape).copy()


# signature input name -> its value for an unpadded batch of new ids [batch, time] after past_len cached ones
DERIVED_INPUTS = {"attention_mask": _mask, "token_type_ids": _token_types, "position_ids": _positions}
FEEDABLE = ("input_ids",) + tuple(DERIVED_INPUTS)
# A decode signature takes the KV cache back ([layers, 2, batch, kv heads, past, head dim], float), as
# tfquant's cache export and later versions of the reference demo write it; its feeds come from running
# the prefill signature first (decode_feeds), not from the ids alone.
CACHE_INPUT = "past_key_values"


def takes_cache(specs: Mapping[str, object]) -> bool:
    return CACHE_INPUT in specs


def check_inputs(specs: Mapping[str, object], where: str) -> None:
    """Every signature input must be one tfquant can feed, integer-typed (the cache float); ``input_ids`` there."""
    if "input_ids" not in specs:
        raise UserError(f"{where} has no 'input_ids' input (inputs: {', '.join(sorted(specs))})")
    unknown = sorted(set(specs) - set(FEEDABLE) - {CACHE_INPUT})
    if unknown:
        raise UserError(f"{where} has input(s) {', '.join(unknown)} that tfquant does not know how to feed "
                        f"(inputs: {', '.join(sorted(specs))}; tfquant feeds {', '.join(FEEDABLE + (CACHE_INPUT,))})")
    for name, spec in specs.items():
        if name == CACHE_INPUT:
            if not spec.dtype.is_floating:
                raise UserError(f"{where}: input '{name}' is {spec.dtype.name}, tfquant feeds a float KV cache")
        elif not spec.dtype.is_integer:
            raise UserError(f"{where}: input '{name}' is {spec.dtype.name}, tfquant feeds integer token ids")


def make_feeds(specs: Mapping[str, object], ids: np.ndarray, past: Optional[np.ndarray] = None) -> Dict[str, np.ndarray]:
    """numpy feeds for every input of a signature, each in its spec's dtype (int32 or int64).

    With ``past`` (a decode step), ``ids`` are the new tokens and the mask covers past + new positions.
    """
    ids = np.asarray(ids)
    past_len = 0 if past is None else int(past.shape[4])
    feeds = {}
    for name, spec in specs.items():
        if name == CACHE_INPUT and not isinstance(past, np.ndarray) and past is not None:
            feeds[name] = past  # a tf.Tensor the previous step returned: fed back as it is, no copy
            continue
        value = {CACHE_INPUT: past, "input_ids": ids}.get(name)
        if value is None:
            value = DERIVED_INPUTS[name](ids, past_len)
        feeds[name] = np.asarray(value).astype(spec.dtype.as_numpy_dtype)
    return feeds


def decode_feeds(prefill, decode, prefill_specs, decode_specs, windows, steps: int) -> list:
    """Calibration feeds for a decode signature: each window's first ``T - steps`` tokens go through
    ``prefill``, then ``steps`` single-token decode steps follow, each fed the cache the previous step
    returned; every decode step's feeds are one calibration batch (single-token rows, a long past:
    what decode-time MatMuls see, unlike a full window)."""
    out = []
    for w in windows:
        cut = w.shape[1] - steps
        if cut < 1:
            raise UserError(f"calibration windows of {w.shape[1]} tokens are too short for {steps} decode steps")
        past = prefill(**make_feeds(prefill_specs, w[:, :cut]))[CACHE_INPUT].numpy()
        for t in range(cut, w.shape[1]):
            feeds = make_feeds(decode_specs, w[:, t:t + 1], past)
            out.append(feeds)
            past = decode(**feeds)[CACHE_INPUT].numpy()
    return out


def check_token_ids(max_id: int, vocab: Optional[int], what: str, vocab_source: str) -> None:
    """A token id the model has no embedding row for fails deep inside TF's Gather: say it first."""
    if vocab is not None and max_id >= vocab:
        raise UserError(f"the tokenizer gives {what} token ids up to {max_id}, but the model's vocabulary has {vocab} "
                        f"entries ({vocab_source}): pass the model's own tokenizer with --tokenizer")
