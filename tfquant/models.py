"""Export causal LMs as TensorFlow SavedModels with tfquant's serving signature.

Every model tfquant handles is served the same way:

    serving_default(input_ids: int32[None, None], attention_mask: int32[None, None]) -> {"logits": float32}

which is what ``tfquant.quantize`` and ``tfquant.benchmark`` expect.  With ``cache=True`` (the
default of ``tools/prepare_model.py``) ``serving_default`` also returns ``past_key_values`` and a
``decode`` signature continues from it (``tfquant.cache_export``); ``cache=False``, the default in
Python, writes the single signature above.
"""
from __future__ import annotations

import os
from typing import Any, Mapping

from .errors import UserError
from .fsutil import atomic_output_dir
from .savedmodel import LOGITS_KEY, SIGNATURE_KEY

MODEL_INFO_FILE = "tfquant_model.json"


def load_yaml_config(path: str) -> dict:
    import yaml

    if not os.path.isfile(path):
        raise UserError(f"config file not found: {path}")
    try:
        with open(path, encoding="utf-8") as fh:
            cfg = yaml.safe_load(fh) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    except UnicodeDecodeError:
        raise UserError(f"config file {path} is not UTF-8 text (a YAML recipe is expected)") from None
    if not isinstance(cfg, dict):
        raise UserError(f"config file {path} must hold a mapping")
    return cfg


# model_type -> (transformers config class, TF model class) of the families built from a YAML config
RANDOM_FAMILIES = {
    "gptj": ("GPTJConfig", "TFGPTJForCausalLM"),
    "gpt2": ("GPT2Config", "TFGPT2LMHeadModel"),
    "mistral": ("MistralConfig", "TFMistralForCausalLM"),
}


def build_random_model(kind: str, fields: Mapping[str, Any], seed: int = 0):
    """A TF causal LM of family ``kind`` with seeded random weights; any field of its transformers config may be set."""
    import tensorflow as tf
    import transformers
    from transformers.modeling_tf_utils import keras  # the Keras 2 that transformers itself uses

    config_cls, model_cls = (getattr(transformers, name) for name in RANDOM_FAMILIES[kind])
    try:
        config = config_cls(**dict(fields))
    except (TypeError, ValueError) as exc:
        raise UserError(f"bad {kind} config: {exc}") from None
    keras.utils.set_random_seed(seed)  # seeds python, numpy and TF: same weights every run
    model = model_cls(config)
    model(tf.constant([[1, 2]], tf.int32), attention_mask=tf.constant([[1, 1]], tf.int32))  # build weights
    return model


def build_gptj_random(gptj_fields: Mapping[str, Any], seed: int = 0):
    """A TFGPTJForCausalLM with seeded random weights; any GPTJConfig field may be given."""
    return build_random_model("gptj", gptj_fields, seed)


def _logits_only_signatures(model) -> dict:
    """``serving_default(input_ids, attention_mask) -> {"logits"}``, the model called without a cache."""
    import tensorflow as tf

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, None], tf.int32, name="input_ids"),
            tf.TensorSpec([None, None], tf.int32, name="attention_mask"),
        ]
    )
    def serving(input_ids, attention_mask):
        out = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, training=False)
        return {LOGITS_KEY: out.logits}

    return {SIGNATURE_KEY: serving}


def export_serving_savedmodel(model, output_dir: str, overwrite: bool = False, extras=None,
                              info=None, cache: bool = False) -> str:
    """Save a transformers TF causal LM with the tfquant serving signature(s).

    ``cache=False``: the model is called with ``use_cache=False`` so the graph has no past-key-values
    plumbing; only ``logits`` is returned.  ``cache=True``: prefill and decode signatures over the same
    variables (``tfquant.cache_export``).  ``info`` is written as ``tfquant_model.json`` with the
    signatures added; ``extras(tmp_dir)`` may add files (tokenizer).  Everything is written into a
    temporary folder first, so the output appears whole or not at all.
    """
    import tensorflow as tf

    from .cache_export import cache_signatures, signatures_info

    signatures = cache_signatures(model) if cache else _logits_only_signatures(model)
    with atomic_output_dir(output_dir, overwrite=overwrite) as tmp:
        tf.saved_model.save(model, tmp, signatures=signatures)
        if extras is not None:
            extras(tmp)
        if info is not None:
            write_model_info(tmp, {**info, **signatures_info(model if cache else None)})
    return output_dir


def write_model_info(directory: str, info: dict) -> None:
    """``tfquant_model.json``: where the model came from, its config (position limit, vocabulary), its signatures."""
    import json as _json

    with open(os.path.join(directory, MODEL_INFO_FILE), "w", encoding="utf-8") as fh:
        _json.dump(info, fh, indent=2)
        fh.write("\n")


def prepare_from_config(config_path: str, output_dir: str, overwrite: bool = False, cache: bool = False) -> str:
    """``--config YAML``: ``model_type: gptj | gpt2 | mistral``, that family's config fields under a key of
    the same name, and ``seed``."""
    cfg = load_yaml_config(config_path)
    kind = cfg.get("model_type", "gptj")
    if kind not in RANDOM_FAMILIES:
        raise UserError(f"config {config_path}: model_type {kind!r} is not supported for random init "
                        f"(use {', '.join(RANDOM_FAMILIES)})")
    fields = cfg.get(kind) or {}
    if not isinstance(fields, dict):
        raise UserError(f"config {config_path}: {kind!r} must hold a mapping of {RANDOM_FAMILIES[kind][0]} fields")
    model = build_random_model(kind, fields, seed=int(cfg.get("seed", 0)))
    info = {"source": os.path.abspath(config_path), "source_format": "random_init", "architecture": kind,
            "tf_class": type(model).__name__, "config": model.config.to_diff_dict()}
    return export_serving_savedmodel(model, output_dir, overwrite=overwrite, info=info, cache=cache)


# --------------------------------------------------------------------------- GPT-J from a local HF checkpoint

# Buffers some PyTorch GPT-J checkpoints carry; the TF model recomputes them.
_GPTJ_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias", ".attn.embed_positions")


def _read_safetensors(path: str) -> dict:
    """All tensors of one safetensors file as numpy arrays (BF16 is widened to float32)."""
    import json as _json

    import numpy as np
    from safetensors import safe_open

    out = {}
    try:
        with safe_open(path, framework="numpy") as fh:
            keys = list(fh.keys())
            bf16 = []
            for key in keys:
                try:
                    out[key] = fh.get_tensor(key)
                except TypeError:  # numpy has no bfloat16
                    bf16.append(key)
    except Exception as exc:
        raise UserError(f"cannot read safetensors file {path}: {str(exc).splitlines()[0] if str(exc) else exc}") from None
    if bf16:
        with open(path, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            header = _json.loads(fh.read(n))
        raw = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n)
        for key in bf16:
            meta = header[key]
            if meta["dtype"] != "BF16":
                raise UserError(f"{path}: tensor {key} has unsupported dtype {meta['dtype']}")
            a, b = meta["data_offsets"]
            u16 = np.frombuffer(raw[a:b].tobytes(), dtype="<u2").astype(np.uint32)
            out[key] = (u16 << 16).view(np.float32).reshape(meta["shape"])
    return out


def _checkpoint_files(ckpt_dir: str):
    """('safetensors', [files]) | ('bin', [files]) | ('tf', [file]) for a local HF checkpoint folder."""
    import json as _json

    def index_files(index_name):
        index_path = os.path.join(ckpt_dir, index_name)
        try:
            with open(index_path, encoding="utf-8") as fh:
                weight_map = _json.load(fh)["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UserError(f"checkpoint index {index_path} is unreadable: {exc}") from None
        files = sorted(set(weight_map.values()))
        missing = [f for f in files if not os.path.isfile(os.path.join(ckpt_dir, f))]
        if missing:
            raise UserError(f"checkpoint index {index_path} names missing shard(s): {', '.join(missing[:3])}")
        return [os.path.join(ckpt_dir, f) for f in files]

    if os.path.isfile(os.path.join(ckpt_dir, "model.safetensors")):
        return "safetensors", [os.path.join(ckpt_dir, "model.safetensors")]
    if os.path.isfile(os.path.join(ckpt_dir, "model.safetensors.index.json")):
        return "safetensors", index_files("model.safetensors.index.json")
    if os.path.isfile(os.path.join(ckpt_dir, "pytorch_model.bin")):
        return "bin", [os.path.join(ckpt_dir, "pytorch_model.bin")]
    if os.path.isfile(os.path.join(ckpt_dir, "pytorch_model.bin.index.json")):
        return "bin", index_files("pytorch_model.bin.index.json")
    if os.path.isfile(os.path.join(ckpt_dir, "tf_model.h5")) or os.path.isfile(
        os.path.join(ckpt_dir, "tf_model.h5.index.json")
    ):
        return "tf", []
    raise UserError(
        f"checkpoint folder {ckpt_dir} has no model.safetensors, model.safetensors.index.json, "
        "pytorch_model.bin or tf_model.h5"
    )


def _gptj_config(ckpt_dir: str):
    import json as _json

    from transformers import GPTJConfig

    cfg_path = os.path.join(ckpt_dir, "config.json")
    if not os.path.isfile(cfg_path):
        raise UserError(f"checkpoint folder {ckpt_dir} has no config.json")
    try:
        with open(cfg_path, encoding="utf-8") as fh:
            raw = _json.load(fh)
    except (OSError, ValueError) as exc:
        raise UserError(f"{cfg_path} is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise UserError(f"{cfg_path} must hold a JSON object")
    if raw.get("model_type") != "gptj":
        raise UserError(f"checkpoint model_type {raw.get('model_type')!r} is not supported (only 'gptj')")
    try:
        return GPTJConfig.from_dict(raw)
    except Exception as exc:
        raise UserError(f"bad GPT-J config {cfg_path}: {exc}") from None


def check_gptj_pt_state(state: Mapping[str, Any], config) -> None:
    """Names and shapes of HF PyTorch GPT-J tensors against the config (before any TF work)."""
    d, v = config.n_embd, config.vocab_size
    inner = config.n_inner if config.n_inner is not None else 4 * d
    shapes = {"transformer.wte.weight": (v, d), "transformer.ln_f.weight": (d,), "transformer.ln_f.bias": (d,),
              "lm_head.weight": (v, d), "lm_head.bias": (v,)}
    for i in range(config.n_layer):
        p = f"transformer.h.{i}."
        shapes.update({p + "ln_1.weight": (d,), p + "ln_1.bias": (d,), p + "mlp.fc_in.weight": (inner, d),
                       p + "mlp.fc_in.bias": (inner,), p + "mlp.fc_out.weight": (d, inner), p + "mlp.fc_out.bias": (d,)})
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes[p + f"attn.{proj}.weight"] = (d, d)
    for name, shape in shapes.items():
        if name not in state:
            raise UserError(f"checkpoint has no tensor {name}")
        if tuple(state[name].shape) != shape:
            raise UserError(f"checkpoint tensor {name} has shape {tuple(state[name].shape)}, the config needs {shape}")
    extra = [k for k in state if k not in shapes and not k.endswith(_GPTJ_IGNORED_SUFFIXES)]
    if extra:
        raise UserError(f"checkpoint has {len(extra)} tensor(s) a GPT-J model does not use, e.g. {extra[0]}")


def gptj_pt_to_tf_assignments(model, state: Mapping[str, Any]):
    """Pairs (tf_variable, numpy value) mapping HF PyTorch GPT-J names onto a built TFGPTJForCausalLM.

    torch Linear weights are ``[out, in]``; TF Dense kernels are ``[in, out]`` (transposed).
    Raises UserError on missing, unexpected or mis-shaped tensors.
    """
    import numpy as np

    pairs = []
    used = set()

    def take(name, var, transpose=False):
        if name not in state:
            raise UserError(f"checkpoint has no tensor {name}")
        val = np.asarray(state[name])
        if transpose:
            val = val.T
        if tuple(val.shape) != tuple(var.shape):
            raise UserError(f"checkpoint tensor {name} has shape {tuple(state[name].shape)}, "
                            f"the model expects {tuple(var.shape)}{' (transposed)' if transpose else ''}")
        pairs.append((var, val.astype(np.float32)))
        used.add(name)

    t = model.transformer
    take("transformer.wte.weight", t.wte.weight)
    for i, blk in enumerate(t.h):
        p = f"transformer.h.{i}."
        take(p + "ln_1.weight", blk.ln_1.gamma)
        take(p + "ln_1.bias", blk.ln_1.beta)
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            take(p + f"attn.{proj}.weight", getattr(blk.attn, proj).kernel, transpose=True)
        for fc in ("fc_in", "fc_out"):
            take(p + f"mlp.{fc}.weight", getattr(blk.mlp, fc).kernel, transpose=True)
            take(p + f"mlp.{fc}.bias", getattr(blk.mlp, fc).bias)
    take("transformer.ln_f.weight", t.ln_f.gamma)
    take("transformer.ln_f.bias", t.ln_f.beta)
    take("lm_head.weight", model.lm_head.kernel, transpose=True)
    take("lm_head.bias", model.lm_head.bias)
    extra = [k for k in state if k not in used and not k.endswith(_GPTJ_IGNORED_SUFFIXES)]
    if extra:
        raise UserError(f"checkpoint has {len(extra)} tensor(s) a GPT-J model does not use, e.g. {extra[0]}")
    return pairs


def load_gptj_checkpoint(ckpt_dir: str):
    """A TFGPTJForCausalLM from a local Hugging Face checkpoint folder.

    ``config.json`` plus ``model.safetensors`` or ``pytorch_model.bin`` (or their shards, named by
    ``model.safetensors.index.json`` / ``pytorch_model.bin.index.json``): read in numpy, without torch
    (``.bin`` with ``tfquant.torch_bin``, which refuses any pickle content but tensors); fp32, fp16 and
    bf16 weights all load as float32.  ``tf_model.h5`` is loaded with ``from_pretrained``.
    """
    if not os.path.isdir(ckpt_dir):
        raise UserError(f"checkpoint folder not found: {ckpt_dir}")
    config = _gptj_config(ckpt_dir)
    kind, files = _checkpoint_files(ckpt_dir)

    state = {}
    if kind in ("safetensors", "bin"):
        from .torch_bin import read_torch_bin

        read = _read_safetensors if kind == "safetensors" else read_torch_bin
        for f in files:
            state.update(read(f))
        check_gptj_pt_state(state, config)

    import tensorflow as tf  # imported late: folder, config and tensor errors are reported without loading TF
    from transformers import TFGPTJForCausalLM

    if kind == "tf":
        return TFGPTJForCausalLM.from_pretrained(ckpt_dir, config=config, local_files_only=True)

    model = TFGPTJForCausalLM(config)
    model(tf.constant([[0]], tf.int32), attention_mask=tf.constant([[1]], tf.int32))  # build weights
    for var, val in gptj_pt_to_tf_assignments(model, state):
        var.assign(val)
    return model


def prepare_from_checkpoint(ckpt_dir: str, output_dir: str, overwrite: bool = False, cache: bool = False) -> str:
    """``--checkpoint DIR``: a local GPT-J checkpoint exported with the serving signature(s)."""
    from .fsutil import check_output_dir

    check_output_dir(output_dir, overwrite)
    model = load_gptj_checkpoint(ckpt_dir)
    cfg = model.config
    info = {
        "source": os.path.abspath(ckpt_dir),
        "source_format": "hf_checkpoint",
        "architecture": "gptj",
        "tf_class": "TFGPTJForCausalLM",
        "config": {k: getattr(cfg, k) for k in ("vocab_size", "n_embd", "n_layer", "n_head", "rotary_dim",
                                                  "n_positions", "n_inner", "activation_function")},
    }

    tokenizer = _checkpoint_tokenizer(ckpt_dir)
    if tokenizer is not None:
        info["tokenizer"] = {"dir": "tokenizer"}

    def extras(tmp):
        if tokenizer is not None:
            tokenizer.save_pretrained(os.path.join(tmp, "tokenizer"))

    return export_serving_savedmodel(model, output_dir, overwrite=overwrite, extras=extras, info=info, cache=cache)


def _checkpoint_tokenizer(ckpt_dir: str):
    """The checkpoint's own tokenizer if the folder has one (saved to OUTPUT/tokenizer/), else None."""
    import sys

    if not any(os.path.isfile(os.path.join(ckpt_dir, f)) for f in ("tokenizer.json", "vocab.json")):
        return None
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(ckpt_dir, local_files_only=True)
    except Exception as exc:  # a broken tokenizer does not stop the model export
        print(f"warning: tokenizer files in {ckpt_dir} could not be loaded ({exc}); none saved", file=sys.stderr)
        return None
