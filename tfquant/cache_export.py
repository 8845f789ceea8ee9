"""Causal LMs exported with a KV cache: a prefill and a decode signature over one set of variables.

    serving_default(input_ids, attention_mask)                  -> {"logits", "past_key_values"}   (prefill)
    decode(input_ids, attention_mask, past_key_values)          -> {"logits", "past_key_values"}

``past_key_values`` is float32 ``[n_layers, 2, batch, kv_heads, time, head_dim]`` (``[:, 0]`` keys,
``[:, 1]`` values), the layout Hugging Face's own SavedModel export gives its present cache.  decode
takes the new token(s) (usually ``[batch, 1]``), an ``attention_mask`` covering past + new tokens,
and returns the cache grown by the new tokens.  New tokens get positions ``past_len, past_len + 1, ...``
(the models' own default), so a decode step equals the full recompute of the same unpadded sequence.

Both signatures are concrete functions of the same Keras model, so ``tf.saved_model.save`` writes
its variables once.  The prefill is what ``tfquant.quantize`` reads as ``serving_default``.
"""
from __future__ import annotations

import contextlib
import inspect
import textwrap
from dataclasses import dataclass

from .errors import UserError
from .savedmodel import LOGITS_KEY, SIGNATURE_KEY

DECODE_SIGNATURE = "decode"
PAST_KEY = "past_key_values"
CACHE_LAYOUT = ("n_layers", "2", "batch", "kv_heads", "time", "head_dim")


@dataclass(frozen=True)
class CacheGeometry:
    family: str      # transformers model_type: gptj | gpt2 | mistral
    n_layers: int
    kv_heads: int
    head_dim: int


def cache_geometry(model) -> CacheGeometry:
    cfg = model.config
    kind = cfg.model_type
    if kind in ("gptj", "gpt2"):
        return CacheGeometry(kind, cfg.n_layer, cfg.n_head, cfg.n_embd // cfg.n_head)
    if kind == "mistral":
        # TFMistralAttention derives head_dim from hidden_size, whatever config.head_dim says
        return CacheGeometry(kind, cfg.num_hidden_layers, cfg.num_key_value_heads,
                             cfg.hidden_size // cfg.num_attention_heads)
    raise UserError(f"no KV-cache export for model_type {kind!r} (gptj, gpt2 and mistral have one); "
                    "export without a cache (cache=False, --no_cache)")


def _model_past(geometry: CacheGeometry, past):
    """The stacked cache in the per-layer form the model's call takes."""
    import tensorflow as tf

    layers = tf.unstack(past, axis=0)
    if geometry.family == "gpt2":
        # TFGPT2Attention tf.unstack()s one [2, B, H, T, D] tensor per layer; a (k, v) tuple fails to trace
        return tuple(layers)
    return tuple((layer[0], layer[1]) for layer in layers)  # GPT-J and Mistral index a (key, value) pair


def _stack_present(presents):
    """Per-layer presents ((key, value) pairs, or GPT-2's stacked [2, ...] tensors) as one tensor."""
    import tensorflow as tf

    return tf.stack([p if tf.is_tensor(p) else tf.stack(p) for p in presents])


def _mistral_call_with_dynamic_past_length():
    """TFMistralAttention.call (transformers 4.46.3) with its one static-shape read made dynamic.

    It sizes its rotary table with ``q_len + past_key_value[0].shape[-2]``; when the signature's
    cache has a dynamic time dimension that static dimension is None and tracing fails ("None values
    not supported").  ``shape_list`` (which the rest of that file uses) gives the static value when it
    is known and ``tf.shape`` otherwise.  Patching that one expression of HF's source keeps every
    other line theirs; if the expression is gone (another transformers), this refuses loudly.
    """
    import tensorflow as tf
    from transformers.models.mistral import modeling_tf_mistral as mistral

    old, new = "past_key_value[0].shape[-2]", "shape_list(past_key_value[0])[-2]"
    source = textwrap.dedent(inspect.getsource(mistral.TFMistralAttention.call))
    if source.count(old) != 1:
        raise RuntimeError(f"TFMistralAttention.call no longer reads {old!r} once; the cache patch needs a review")
    namespace: dict = {}
    exec(compile(source.replace(old, new), "<tfquant: TFMistralAttention.call, dynamic past length>", "exec"),
         vars(mistral), namespace)
    # autograph cannot read the source of exec'd code; the method has no tensor-dependent Python control flow
    return tf.autograph.experimental.do_not_convert(namespace["call"])


@contextlib.contextmanager
def _traceable_with_dynamic_past(geometry: CacheGeometry):
    """While tracing the decode signature: make the model accept a past of dynamic length (Mistral only)."""
    if geometry.family != "mistral":
        yield
        return
    from transformers.models.mistral.modeling_tf_mistral import TFMistralAttention

    original = TFMistralAttention.call
    TFMistralAttention.call = _mistral_call_with_dynamic_past_length()
    try:
        yield
    finally:
        TFMistralAttention.call = original


def cache_signatures(model) -> dict:
    """``{"serving_default": prefill, "decode": decode}`` concrete functions of ``model``."""
    import tensorflow as tf

    geometry = cache_geometry(model)
    ids = tf.TensorSpec([None, None], tf.int32, name="input_ids")
    mask = tf.TensorSpec([None, None], tf.int32, name="attention_mask")
    past = tf.TensorSpec([geometry.n_layers, 2, None, geometry.kv_heads, None, geometry.head_dim], tf.float32,
                         name=PAST_KEY)

    @tf.function(input_signature=[ids, mask])
    def prefill(input_ids, attention_mask):
        out = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=True, training=False)
        return {LOGITS_KEY: out.logits, PAST_KEY: _stack_present(out.past_key_values)}

    @tf.function(input_signature=[ids, mask, past])
    def decode(input_ids, attention_mask, past_key_values):
        out = model(input_ids=input_ids, attention_mask=attention_mask,
                    past_key_values=_model_past(geometry, past_key_values), use_cache=True, training=False)
        return {LOGITS_KEY: out.logits, PAST_KEY: _stack_present(out.past_key_values)}

    with _traceable_with_dynamic_past(geometry):
        return {SIGNATURE_KEY: prefill.get_concrete_function(), DECODE_SIGNATURE: decode.get_concrete_function()}


def signatures_info(model=None) -> dict:
    """The ``signatures`` and ``cache`` entries of ``tfquant_model.json``; ``model=None``: no cache exported."""
    serving_in = {"input_ids": "int32[batch, time]", "attention_mask": "int32[batch, time]"}
    if model is None:
        return {"signatures": {SIGNATURE_KEY: {"inputs": serving_in, "outputs": [LOGITS_KEY]}}, "cache": None}
    g = cache_geometry(model)
    shape = f"float32[{g.n_layers}, 2, batch, {g.kv_heads}, time, {g.head_dim}]"
    return {
        "signatures": {
            SIGNATURE_KEY: {"role": "prefill", "inputs": serving_in, "outputs": [LOGITS_KEY, PAST_KEY]},
            DECODE_SIGNATURE: {"role": "decode",
                               "inputs": {"input_ids": "int32[batch, new]",
                                          "attention_mask": "int32[batch, past + new]", PAST_KEY: shape},
                               "outputs": [LOGITS_KEY, PAST_KEY]},
        },
        "cache": {"key": PAST_KEY, "layout": list(CACHE_LAYOUT), "dtype": "float32", "n_layers": g.n_layers,
                  "kv_heads": g.kv_heads, "head_dim": g.head_dim, "keys_values": "[:, 0] keys, [:, 1] values",
                  "positions": "new tokens are at past_len, past_len + 1, ... (no left padding)"},
    }
