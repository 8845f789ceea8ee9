"""Running the models: a loaded SavedModel called with token ids, the latency ids, the round-robin timer and
greedy generation.  TensorFlow is imported when the first model is loaded, after the runtime env is set."""
from __future__ import annotations

import re
import time
from typing import List

from ..data import encode
from ..errors import UserError
from ..feeds import check_inputs, make_feeds
from ..savedmodel import LOGITS_KEY, SIGNATURE_KEY
from .models import ModelSpec

_OUT_OF_RANGE = re.compile(r"indices\[[^\]]*\] = (-?\d+) is not in \[0, (\d+)\)")


class PositionLimit(UserError):
    """A forward failed because the sequence is longer than the model's position table."""

    def __init__(self, name: str, length: int, limit: int):
        super().__init__(f"{name}: a sequence of {length} tokens is longer than the model accepts "
                         f"({limit} positions); use --seq_len {limit} or less")
        self.limit = limit


class LoadedModel:
    """A SavedModel's signature, called with numpy int32 token ids; the other inputs are derived (tfquant.feeds)."""

    def __init__(self, spec: ModelSpec, signature: str = SIGNATURE_KEY, tokenizer=None):
        import tensorflow as tf

        self.spec = spec
        self.tf = tf
        self.tokenizer = tokenizer  # the models sharing one tokenizer are fed the same ids and timed together
        self.obj = _load(spec)
        sigs = getattr(self.obj, "signatures", {}) or {}
        if signature not in sigs:
            raise UserError(f"{spec.given} has no '{signature}' signature (signatures: {', '.join(sorted(sigs)) or 'none'}; "
                            "choose one with --signature)")
        self.fn = sigs[signature]
        self.input_specs = self.fn.structured_input_signature[1]
        check_inputs(self.input_specs, f"the '{signature}' signature of {spec.given}")
        outputs = self.fn.structured_outputs
        self.out_key = _logits_key(outputs, f"the '{signature}' signature of {spec.given}")
        last = outputs[self.out_key].shape
        self.vocab = int(last[-1]) if last.rank and last[-1] is not None else None
        # None: unknown until a forward fails on it (learn_limit)
        self.max_positions = spec.max_positions

    def forward(self, ids):
        """Logits for int32 ids [batch, time]; out-of-range gathers become UserErrors naming the limit."""
        try:
            feeds = make_feeds(self.input_specs, ids)
            return self.fn(**{k: self.tf.constant(v) for k, v in feeds.items()})[self.out_key]
        except self.tf.errors.InvalidArgumentError as exc:
            raise self._explain(exc, ids) from None

    def learn_limit(self, exc: PositionLimit) -> None:
        """A forward hit the position limit: remember it when it was unknown (the caller then truncates and
        retries once); when it was known, the caller fed too much, and ``exc`` is raised."""
        if self.max_positions is not None:
            raise exc
        self.max_positions = exc.limit

    def release(self) -> None:
        """Drop the loaded SavedModel (before the memory probes, which are separate processes)."""
        self.fn = self.obj = None

    def _explain(self, exc, ids) -> Exception:
        import numpy as np

        msg = str(exc)
        m = _OUT_OF_RANGE.search(msg)
        t = int(np.shape(ids)[-1])
        if m:
            bad, limit = int(m.group(1)), int(m.group(2))
            # A position index is < t; a token index is one of the ids.  Positions win when both fit.
            if t > limit and (bad < t or not np.any(np.asarray(ids) == bad)):
                return PositionLimit(self.spec.name, t, limit)
            if np.any(np.asarray(ids) == bad):
                return UserError(f"{self.spec.name}: token id {bad} is outside the model's embedding table of {limit} "
                                 "rows: pass the model's own tokenizer with --tokenizer")
        first = (msg.strip().splitlines() or [type(exc).__name__])[0]
        return RuntimeError(f"{self.spec.name}: forward of shape {tuple(np.shape(ids))} failed: {first}")


def _load(spec: ModelSpec):
    import tensorflow as tf

    try:
        return tf.saved_model.load(spec.path)
    except Exception as exc:  # corrupt protobuf, missing variables, unknown ops ...
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"cannot load the SavedModel {spec.given}: {first[:300]}") from None


def _logits_key(outputs, what: str) -> str:
    if isinstance(outputs, dict) and LOGITS_KEY in outputs:
        return LOGITS_KEY
    if isinstance(outputs, dict) and len(outputs) == 1:
        return next(iter(outputs))  # e.g. INC's re-exported graph names it 'Identity'
    raise UserError(f"{what} has no '{LOGITS_KEY}' output "
                    f"(outputs: {sorted(outputs) if isinstance(outputs, dict) else outputs})")


def bench_tokens(tok, batch: int, seq_len: int):
    """Deterministic [batch, seq_len] ids: consecutive windows of the shipped calibration text (tiled if short)."""
    import numpy as np

    from ..data import default_calibration_text_path, read_text

    text = read_text(default_calibration_text_path())
    need = batch * seq_len
    ids = encode(tok, text[: max(4096, need * 16)])
    if len(ids) < need:
        ids = encode(tok, text)
    arr = np.resize(np.asarray(ids, dtype=np.int32), need)  # repeats the text if it is too short
    return arr.reshape(batch, seq_len)


def timed_round_robin(models: List[LoadedModel], ids, warmup: int, iters: int) -> List[List[float]]:
    """ms per forward for every model; each round runs every model once, rotating which goes first, so every
    model sees the same machine load."""
    for m in models:
        for _ in range(warmup):
            m.forward(ids)
    times = [[] for _ in models]
    n = len(models)
    for i in range(iters):
        for j in range(n):
            k = (i + j) % n
            t0 = time.perf_counter()
            out = models[k].forward(ids)
            _ = out.shape  # eager CPU execution is synchronous; keep the result alive until timed
            times[k].append(1000.0 * (time.perf_counter() - t0))
    return times


def greedy_generate(model: LoadedModel, tok, prompt_ids: List[int], n_new: int) -> dict:
    """Greedy decoding without a KV cache: the whole sequence is run again for every new token."""
    import numpy as np

    seq = list(prompt_ids)
    new = []
    for _ in range(n_new):
        window = seq[-model.max_positions:] if model.max_positions else seq
        try:
            logits = model.forward(np.asarray([window], dtype=np.int32))
        except PositionLimit as exc:  # limit unknown beforehand: learn it and keep the last positions
            model.learn_limit(exc)
            logits = model.forward(np.asarray([seq[-model.max_positions:]], dtype=np.int32))
        nxt = int(model.tf.argmax(logits[0, -1]).numpy())
        seq.append(nxt)
        new.append(nxt)
    try:
        text = tok.decode(new)
    except Exception:  # a tokenizer that cannot decode an id the model produced
        text = None
    return {"new_token_ids": new, "text": text}

