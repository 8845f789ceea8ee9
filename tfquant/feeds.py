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

def _ones(ids):
    return np.ones_like(ids)


def _zeros(ids):
    return np.zeros_like(ids)


def _positions(ids):
    return np.broadcast_to(np.arange(ids.shape[1], dtype=ids.dtype), ids.shape).copy()


# signature input name -> its value for an unpadded batch of ids [batch, time]
DERIVED_INPUTS = {"attention_mask": _ones, "token_type_ids": _zeros, "position_ids": _positions}
FEEDABLE = ("input_ids",) + tuple(DERIVED_INPUTS)


def check_inputs(specs: Mapping[str, object], where: str) -> None:
    """Every signature input must be one tfquant can feed, integer-typed; ``input_ids`` must be there."""
    if "input_ids" not in specs:
        raise UserError(f"{where} has no 'input_ids' input (inputs: {', '.join(sorted(specs))})")
    unknown = sorted(set(specs) - set(FEEDABLE))
    if unknown:
        raise UserError(f"{where} has input(s) {', '.join(unknown)} that tfquant does not know how to feed "
                        f"(inputs: {', '.join(sorted(specs))}; tfquant feeds {', '.join(FEEDABLE)})")
    for name, spec in specs.items():
        if not spec.dtype.is_integer:
            raise UserError(f"{where}: input '{name}' is {spec.dtype.name}, tfquant feeds integer token ids")


def make_feeds(specs: Mapping[str, object], ids: np.ndarray) -> Dict[str, np.ndarray]:
    """numpy feeds for every input of a signature, each in its spec's dtype (int32 or int64)."""
    ids = np.asarray(ids)
    feeds = {}
    for name, spec in specs.items():
        value = ids if name == "input_ids" else DERIVED_INPUTS[name](ids)
        feeds[name] = value.astype(spec.dtype.as_numpy_dtype)
    return feeds


def check_token_ids(max_id: int, vocab: Optional[int], what: str, vocab_source: str) -> None:
    """A token id the model has no embedding row for fails deep inside TF's Gather: say it first."""
    if vocab is not None and max_id >= vocab:
        raise UserError(f"the tokenizer gives {what} token ids up to {max_id}, but the model's vocabulary has {vocab} "
                        f"entries ({vocab_source}): pass the model's own tokenizer with --tokenizer")
