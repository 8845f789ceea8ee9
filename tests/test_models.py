"""Model preparation: GGUF import, local GPT-J checkpoints, tools/prepare_model.py.

The GGUF test writes a tiny llama GGUF file itself and checks the TF model against a numpy
forward pass written here that works on the GGUF layout directly (llama.cpp semantics: rotary
pairs are adjacent elements ``(x[2i], x[2i+1])``).  TFMistral pairs ``x[i]`` with ``x[i + d/2]``,
so the two agree only if the importer undoes llama.cpp's Q/K row permutation correctly.
"""
from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

gguf = pytest.importorskip("gguf")
tf = pytest.importorskip("tensorflow")

from tfquant.errors import UserError  # noqa: E402

PREPARE = os.path.join(ROOT, "tools", "prepare_model.py")

# --------------------------------------------------------------------------- tiny GGUF

DIM, N_HEAD, N_KV, FFN, N_LAYER = 64, 4, 2, 96, 2
HEAD_DIM = DIM // N_HEAD
ROPE_BASE, EPS = 10000.0, 1e-5
Q8_TENSOR = "blk.0.attn_q.weight"   # stored Q8_0
F16_TENSOR = "blk.1.ffn_up.weight"  # stored F16


def _bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for _, c in sorted(zip(bs, cs))]


SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["Ġ t", "h e", "Ġt he", "1 2"]
TOKENS = SPECIALS + _bytes_to_unicode() + ["Ġt", "he", "Ġthe", "12"]
TOKEN_TYPES = [3, 3, 3] + [1] * (len(TOKENS) - 3)
VOCAB = len(TOKENS)


def _q8_0_roundtrip(w: np.ndarray) -> np.ndarray:
    """Q8_0 as ggml defines it (blocks of 32 along a row, fp16 scale = amax/127), written independently."""
    blocks = w.astype(np.float32).reshape(-1, 32)
    d = np.abs(blocks).max(axis=1, keepdims=True) / 127.0
    q = np.round(np.where(d == 0, 0.0, blocks / np.where(d == 0, 1.0, d)))
    return (q * d.astype(np.float16).astype(np.float32)).reshape(w.shape)


def make_llama_weights(seed=0, tied=True):
    """Random weights in GGUF storage layout ([out, in] rows, Q/K rows in llama.cpp's rope order)."""
    rng = np.random.default_rng(seed)

    def mat(out, inp, scale=0.15):
        return (rng.standard_normal((out, inp)) * scale).astype(np.float32)

    w = {"token_embd.weight": mat(VOCAB, DIM, 0.5), "output_norm.weight": (1 + 0.1 * rng.standard_normal(DIM)).astype(np.float32)}
    if not tied:
        w["output.weight"] = mat(VOCAB, DIM, 0.2)
    for i in range(N_LAYER):
        b = f"blk.{i}."
        w[b + "attn_norm.weight"] = (1 + 0.1 * rng.standard_normal(DIM)).astype(np.float32)
        w[b + "ffn_norm.weight"] = (1 + 0.1 * rng.standard_normal(DIM)).astype(np.float32)
        w[b + "attn_q.weight"] = mat(N_HEAD * HEAD_DIM, DIM, 0.4)
        w[b + "attn_k.weight"] = mat(N_KV * HEAD_DIM, DIM, 0.4)
        w[b + "attn_v.weight"] = mat(N_KV * HEAD_DIM, DIM)
        w[b + "attn_output.weight"] = mat(DIM, N_HEAD * HEAD_DIM)
        w[b + "ffn_gate.weight"] = mat(FFN, DIM)
        w[b + "ffn_up.weight"] = mat(FFN, DIM)
        w[b + "ffn_down.weight"] = mat(DIM, FFN)
    return w


def write_tiny_gguf(path, weights, arch="llama", tokenizer=True, types=None):
    """Write ``weights`` (GGUF layout) to a GGUF file; returns the weights as the reader will see them.
    ``types``: tensor name -> GGMLQuantizationType to store it as (quantized by the gguf package)."""
    from gguf import GGMLQuantizationType, quants

    wr = gguf.GGUFWriter(str(path), arch)
    wr.add_block_count(N_LAYER)
    wr.add_context_length(256)
    wr.add_embedding_length(DIM)
    wr.add_feed_forward_length(FFN)
    wr.add_head_count(N_HEAD)
    wr.add_head_count_kv(N_KV)
    wr.add_rope_freq_base(ROPE_BASE)
    wr.add_layer_norm_rms_eps(EPS)
    wr.add_rope_dimension_count(HEAD_DIM)
    if tokenizer:
        wr.add_tokenizer_model("gpt2")
        wr.add_tokenizer_pre("smollm")
        wr.add_token_list(TOKENS)
        wr.add_token_types(TOKEN_TYPES)
        wr.add_token_merges(MERGES)
        wr.add_bos_token_id(1)
        wr.add_eos_token_id(2)
        wr.add_unk_token_id(0)
        wr.add_pad_token_id(2)
        wr.add_add_bos_token(False)
    seen = {}
    for name, arr in weights.items():
        if types and name in types:
            raw = quants.quantize(arr, types[name])
            wr.add_tensor(name, raw, raw_dtype=types[name])
            seen[name] = quants.dequantize(raw, types[name])
        elif name == Q8_TENSOR:
            wr.add_tensor(name, quants.quantize(arr, GGMLQuantizationType.Q8_0), raw_dtype=GGMLQuantizationType.Q8_0)
            seen[name] = _q8_0_roundtrip(arr)
        elif name == F16_TENSOR:
            wr.add_tensor(name, arr.astype(np.float16))
            seen[name] = arr.astype(np.float16).astype(np.float32)
        else:
            wr.add_tensor(name, arr)
            seen[name] = arr
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()
    return seen


# --------------------------------------------------------------------------- numpy llama reference

def _rmsnorm(x, w):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + EPS) * w


def _rope(x, adjacent_pairs=True):
    """x [T, H, hd]; adjacent_pairs=True is llama.cpp's layout, False the HF half-split layout."""
    t, _, hd = x.shape
    ang = np.arange(t)[:, None] * ROPE_BASE ** (-np.arange(0, hd, 2) / hd)[None, :]  # [T, hd/2]
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    if adjacent_pairs:
        a, b = x[..., 0::2], x[..., 1::2]
    else:
        a, b = x[..., : hd // 2], x[..., hd // 2:]
    ra, rb = a * cos - b * sin, a * sin + b * cos
    out = np.empty_like(x)
    if adjacent_pairs:
        out[..., 0::2], out[..., 1::2] = ra, rb
    else:
        out[..., : hd // 2], out[..., hd // 2:] = ra, rb
    return out


def llama_reference_logits(w, ids, adjacent_pairs=True):
    """Float64 llama forward (RMSNorm, rotary, GQA causal attention, SwiGLU) on GGUF-layout weights."""
    w = {k: v.astype(np.float64) for k, v in w.items()}
    t = len(ids)
    h = w["token_embd.weight"][np.asarray(ids)]
    causal = np.tril(np.ones((t, t), bool))
    for i in range(N_LAYER):
        b = f"blk.{i}."
        x = _rmsnorm(h, w[b + "attn_norm.weight"])
        q = _rope((x @ w[b + "attn_q.weight"].T).reshape(t, N_HEAD, HEAD_DIM), adjacent_pairs)
        k = _rope((x @ w[b + "attn_k.weight"].T).reshape(t, N_KV, HEAD_DIM), adjacent_pairs)
        v = (x @ w[b + "attn_v.weight"].T).reshape(t, N_KV, HEAD_DIM)
        ctx = np.empty((t, N_HEAD, HEAD_DIM))
        for hh in range(N_HEAD):
            kv = hh // (N_HEAD // N_KV)
            s = q[:, hh] @ k[:, kv].T / np.sqrt(HEAD_DIM)
            s = np.where(causal, s, -np.inf)
            p = np.exp(s - s.max(-1, keepdims=True))
            p /= p.sum(-1, keepdims=True)
            ctx[:, hh] = p @ v[:, kv]
        h = h + ctx.reshape(t, DIM) @ w[b + "attn_output.weight"].T
        x = _rmsnorm(h, w[b + "ffn_norm.weight"])
        g = x @ w[b + "ffn_gate.weight"].T
        h = h + ((g / (1 + np.exp(-g))) * (x @ w[b + "ffn_up.weight"].T)) @ w[b + "ffn_down.weight"].T
    h = _rmsnorm(h, w["output_norm.weight"])
    out = w.get("output.weight", w["token_embd.weight"])
    return h @ out.T


IDS = [5, 17, 3, 200, 42, 9, 260, 77, 1]


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf"
    seen = write_tiny_gguf(path, make_llama_weights(seed=0, tied=True))
    return str(path), seen


def test_unpermute_inverts_llama_cpp_permute():
    from tfquant.gguf_import import unpermute_qk

    def permute(w, n_head):  # llama.cpp convert_hf_to_gguf.py LlamaModel.permute
        return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    w = np.arange(6 * 8 * 5, dtype=np.float32).reshape(6 * 8, 5)
    for n in (1, 2, 6):
        np.testing.assert_array_equal(unpermute_qk(permute(w, n), n), w)
    # within one head of 8: GGUF rows (0,1),(2,3).. are HF rows (0,4),(1,5)..
    p = permute(w[:8], 1)
    np.testing.assert_array_equal(p[[0, 1, 2, 3]], w[[0, 4, 1, 5]])


@pytest.mark.parametrize("tied", [True, False])
def test_gguf_logits_match_numpy_llama_reference(tmp_path, tied):
    from tfquant.gguf_import import load_gguf_mistral

    if tied:
        path = tmp_path / "tied.gguf"
    else:
        path = tmp_path / "untied.gguf"
    seen = write_tiny_gguf(path, make_llama_weights(seed=1 if tied else 2, tied=tied))
    model, info = load_gguf_mistral(str(path))
    assert model.config.num_key_value_heads == N_KV and model.config.vocab_size == VOCAB
    assert info["tensor_types"] == {"F32": len(seen) - 2, "Q8_0": 1, "F16": 1}
    assert info["tied_embeddings"] is tied

    ref = llama_reference_logits(seen, IDS)
    # the check is sensitive to the rotary layout: the other pairing gives clearly different logits
    wrong = llama_reference_logits(seen, IDS, adjacent_pairs=False)
    assert np.abs(wrong - ref).max() > 0.05 * np.abs(ref).max()

    ids = tf.constant([IDS], tf.int32)
    got = model(ids, attention_mask=tf.ones_like(ids), use_cache=False).logits.numpy()[0]
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_gguf_tokenizer(tiny_gguf):
    from tfquant.gguf_import import _open_reader, build_tokenizer, read_tokenizer_info

    info = read_tokenizer_info(_open_reader(tiny_gguf[0]))
    tok = build_tokenizer(info)
    tid = {t: i for i, t in enumerate(TOKENS)}
    assert len(tok) == VOCAB
    ids = tok("the the<|im_start|>12")["input_ids"]
    # merges apply; special token stays whole; "smollm" pre-tokenizer splits digits one by one
    assert ids == [tid["t"], tid["he"], tid["Ġthe"], 1, tid["1"], tid["2"]]
    assert tok.decode(ids) == "the the<|im_start|>12"
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (1, 2, 2)
    text = "Hello, wörld! 42 ü"
    assert tok.decode(tok(text)["input_ids"]) == text


def test_gguf_errors(tmp_path):
    from tfquant.gguf_import import load_gguf_mistral

    with pytest.raises(UserError, match="not found"):
        load_gguf_mistral(str(tmp_path / "nope.gguf"))
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(UserError, match="not a GGUF file"):
        load_gguf_mistral(str(bad))
    write_tiny_gguf(tmp_path / "full.gguf", make_llama_weights())
    for cut in (6, 40, 5000):
        (tmp_path / "cut.gguf").write_bytes((tmp_path / "full.gguf").read_bytes()[:cut])
        with pytest.raises(UserError, match="not a readable GGUF"):
            load_gguf_mistral(str(tmp_path / "cut.gguf"))
    w = make_llama_weights()
    del w["blk.1.ffn_down.weight"]
    write_tiny_gguf(tmp_path / "missing.gguf", w)
    with pytest.raises(UserError, match="no tensor blk.1.ffn_down.weight"):
        load_gguf_mistral(str(tmp_path / "missing.gguf"))
    write_tiny_gguf(tmp_path / "notok.gguf", make_llama_weights(), tokenizer=False)
    with pytest.raises(UserError, match="no tokenizer"):
        load_gguf_mistral(str(tmp_path / "notok.gguf"))


# --------------------------------------------------------------------------- GPT-J checkpoints

GPTJ_FIELDS = dict(vocab_size=97, n_positions=64, n_embd=32, n_layer=2, n_head=4, rotary_dim=4, n_inner=None)


def tf_gptj_to_pt_state(model) -> dict:
    """HF PyTorch names for a TFGPTJForCausalLM's weights (Linear weights are [out, in])."""
    t = model.transformer
    s = {"transformer.wte.weight": t.wte.weight.numpy()}
    for i, blk in enumerate(t.h):
        p = f"transformer.h.{i}."
        s[p + "ln_1.weight"], s[p + "ln_1.bias"] = blk.ln_1.gamma.numpy(), blk.ln_1.beta.numpy()
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            s[p + f"attn.{proj}.weight"] = getattr(blk.attn, proj).kernel.numpy().T
        for fc in ("fc_in", "fc_out"):
            s[p + f"mlp.{fc}.weight"] = getattr(blk.mlp, fc).kernel.numpy().T
            s[p + f"mlp.{fc}.bias"] = getattr(blk.mlp, fc).bias.numpy()
    s["transformer.ln_f.weight"], s["transformer.ln_f.bias"] = t.ln_f.gamma.numpy(), t.ln_f.beta.numpy()
    s["lm_head.weight"] = model.lm_head.kernel.numpy().T
    s["lm_head.bias"] = model.lm_head.bias.numpy()
    return {k: np.ascontiguousarray(v) for k, v in s.items()}


def write_gptj_checkpoint(model, folder, shards=1, dtype=np.float32):
    from safetensors.numpy import save_file

    os.makedirs(folder, exist_ok=True)
    model.config.to_json_file(os.path.join(folder, "config.json"))
    state = {k: v.astype(dtype) for k, v in tf_gptj_to_pt_state(model).items()}
    state["transformer.h.0.attn.masked_bias"] = np.array(-1e9, np.float32)  # buffer older checkpoints carry
    if shards == 1:
        save_file(state, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
        return
    keys = sorted(state)
    weight_map = {}
    for n in range(shards):
        name = f"model-{n + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: state[k] for k in keys[n::shards]}
        save_file(part, os.path.join(folder, name), metadata={"format": "pt"})
        weight_map.update({k: name for k in part})
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as fh:
        json.dump({"metadata": {}, "weight_map": weight_map}, fh)


@pytest.fixture(scope="module")
def gptj_keras():
    from tfquant.models import build_gptj_random

    return build_gptj_random(GPTJ_FIELDS, seed=3)


def _gptj_logits(model, ids):
    ids = tf.constant([ids], tf.int32)
    return model(input_ids=ids, attention_mask=tf.ones_like(ids), use_cache=False, training=False).logits.numpy()


@pytest.mark.parametrize("shards", [1, 3])
def test_gptj_checkpoint_roundtrip(tmp_path, gptj_keras, shards):
    from tfquant.models import load_gptj_checkpoint

    write_gptj_checkpoint(gptj_keras, tmp_path / "ckpt", shards=shards)
    loaded = load_gptj_checkpoint(str(tmp_path / "ckpt"))
    ids = [3, 14, 15, 92, 65, 35, 8]
    np.testing.assert_array_equal(_gptj_logits(loaded, ids), _gptj_logits(gptj_keras, ids))


def test_gptj_checkpoint_bf16(tmp_path, gptj_keras):
    """BF16 safetensors (numpy has no bfloat16) are widened to float32."""
    import struct

    from tfquant.models import _read_safetensors

    vals = np.array([1.0, -2.5, 3.140625], np.float32)
    raw = (vals.view(np.uint32) >> 16).astype("<u2").tobytes()
    header = json.dumps({"x": {"dtype": "BF16", "shape": [3], "data_offsets": [0, len(raw)]}}).encode()
    path = tmp_path / "bf16.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + raw)
    np.testing.assert_array_equal(_read_safetensors(str(path))["x"], vals)


def test_gptj_checkpoint_errors(tmp_path, gptj_keras):
    from tfquant.models import load_gptj_checkpoint

    with pytest.raises(UserError, match="not found"):
        load_gptj_checkpoint(str(tmp_path / "nope"))
    ck = tmp_path / "ck"
    write_gptj_checkpoint(gptj_keras, ck)
    os.remove(ck / "model.safetensors")
    with pytest.raises(UserError, match="has no model.safetensors"):
        load_gptj_checkpoint(str(ck))
    (ck / "pytorch_model.bin").write_bytes(b"not really")
    with pytest.raises(UserError, match="not a PyTorch checkpoint"):
        load_gptj_checkpoint(str(ck))
    cfg = json.loads((ck / "config.json").read_text())
    cfg["model_type"] = "gpt2"
    (ck / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="only 'gptj'"):
        load_gptj_checkpoint(str(ck))

    from safetensors.numpy import save_file

    ck2 = tmp_path / "ck2"
    write_gptj_checkpoint(gptj_keras, ck2)
    state = tf_gptj_to_pt_state(gptj_keras)
    state["transformer.h.0.attn.q_proj.weight"] = state["transformer.h.0.attn.q_proj.weight"][:, :-1].copy()
    save_file(state, str(ck2 / "model.safetensors"))
    with pytest.raises(UserError, match="q_proj.weight has shape"):
        load_gptj_checkpoint(str(ck2))


# --------------------------------------------------------------------------- prepare_model CLI

def _serving_logits(saved_dir, ids):
    loaded = tf.saved_model.load(saved_dir)
    fn = loaded.signatures["serving_default"]
    x = tf.constant([ids], tf.int32)
    return fn(input_ids=x, attention_mask=tf.ones_like(x))["logits"].numpy()[0]


def test_prepare_model_gguf_in_process(tmp_path, tiny_gguf):
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    try:
        import prepare_model
    finally:
        sys.path.pop(0)
    from transformers import AutoTokenizer

    out = tmp_path / "sm"
    assert prepare_model.main(["--gguf", tiny_gguf[0], "--output_dir", str(out)]) == 0
    np.testing.assert_allclose(_serving_logits(str(out), IDS), llama_reference_logits(tiny_gguf[1], IDS),
                               rtol=1e-4, atol=1e-3)
    info = json.loads((out / "tfquant_model.json").read_text())
    assert info["architecture"] == "mistral/llama" and info["config"]["num_key_value_heads"] == N_KV
    assert info["source"].endswith("tiny-llama.gguf") and "Q8_0" in info["note"]
    tok = AutoTokenizer.from_pretrained(str(out / "tokenizer"))
    tid = {t: i for i, t in enumerate(TOKENS)}
    assert tok("the 12")["input_ids"] == [tid["t"], tid["he"], tid["Ġ"], tid["1"], tid["2"]]
    assert sorted(os.listdir(tmp_path)) == ["sm"]  # no temporary folders left beside it


def test_prepare_model_checkpoint_in_process(tmp_path, gptj_keras):
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    try:
        import prepare_model
    finally:
        sys.path.pop(0)
    write_gptj_checkpoint(gptj_keras, tmp_path / "ckpt")
    out = tmp_path / "gj"
    assert prepare_model.main(["--checkpoint", str(tmp_path / "ckpt"), "--output_dir", str(out)]) == 0
    ids = [1, 2, 3, 4, 5]
    np.testing.assert_allclose(_serving_logits(str(out), ids), _gptj_logits(gptj_keras, ids)[0], rtol=1e-5, atol=1e-5)
    assert json.loads((out / "tfquant_model.json").read_text())["architecture"] == "gptj"


def _run_cli(args, cwd):
    return subprocess.run([sys.executable, PREPARE, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def _cli_cases(tmp, gptj_model):
    bad = tmp / "corrupt.gguf"
    bad.write_bytes(b"this is not a gguf file at all" * 10)
    trunc = tmp / "truncated.gguf"
    data = (tmp / "tiny.gguf").read_bytes()
    trunc.write_bytes(data[: len(data) // 3])
    write_tiny_gguf(tmp / "gpt2arch.gguf", make_llama_weights(), arch="gpt2")
    (tmp / "exists").mkdir()
    (tmp / "exists" / "keep.txt").write_text("x")
    w = make_llama_weights()
    del w["blk.1.attn_v.weight"]
    write_tiny_gguf(tmp / "notensor.gguf", w)
    badck = tmp / "badshape_ckpt"
    write_gptj_checkpoint(gptj_model, badck)
    from safetensors.numpy import save_file

    state = tf_gptj_to_pt_state(gptj_model)
    state["lm_head.bias"] = state["lm_head.bias"][:-1].copy()
    save_file(state, str(badck / "model.safetensors"))
    wrong = tmp / "wrongtype"
    wrong.mkdir()
    (wrong / "config.json").write_text(json.dumps({"model_type": "llama"}))
    return {
        "missing_gguf": (["--gguf", str(tmp / "none.gguf")], "not found"),
        "corrupt_gguf": (["--gguf", str(bad)], "is not a GGUF file"),
        "truncated_gguf": (["--gguf", str(trunc)], "is not a readable GGUF file"),
        "gguf_missing_tensor": (["--gguf", str(tmp / "notensor.gguf")], "no tensor blk.1.attn_v.weight"),
        "checkpoint_bad_shape": (["--checkpoint", str(badck)], "lm_head.bias has shape"),
        "unsupported_arch": (["--gguf", str(tmp / "gpt2arch.gguf")], "architecture 'gpt2'"),
        "existing_output": (["--gguf", str(tmp / "tiny.gguf"), "--output_dir", str(tmp / "exists")], "already exists"),
        "missing_checkpoint": (["--checkpoint", str(tmp / "nodir")], "not found"),
        "wrong_checkpoint_type": (["--checkpoint", str(wrong)], "only 'gptj'"),
        "missing_config": (["--config", str(tmp / "none.yaml")], "not found"),
        "no_source": ([], "one of the arguments"),
        "two_sources": (["--gguf", "default", "--config", "x.yaml"], "not allowed with"),
        "no_parent": (["--gguf", str(tmp / "tiny.gguf"), "--output_dir", str(tmp / "a" / "b")], "parent folder"),
    }


def test_prepare_model_cli_errors(tmp_path, gptj_keras):
    """Each mistake: exit 2, exactly one line on stderr (TF is not even imported), no output folder."""
    write_tiny_gguf(tmp_path / "tiny.gguf", make_llama_weights())
    cases = _cli_cases(tmp_path, gptj_keras)
    before = set(os.listdir(tmp_path))
    for name, (args, expect) in cases.items():
        if "--output_dir" not in args:
            args = args + ["--output_dir", str(tmp_path / f"out_{name}")]
        res = _run_cli(args, cwd=str(tmp_path))
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 2, (name, res.returncode, res.stderr[-2000:])
        assert len(lines) == 1 and lines[0].startswith("error: "), (name, res.stderr[-2000:])
        assert expect in lines[0], (name, lines[0])
        assert set(os.listdir(tmp_path)) == before, (name, set(os.listdir(tmp_path)) ^ before)
    assert os.listdir(tmp_path / "exists") == ["keep.txt"]
    assert not glob.glob(str(tmp_path / ".*tmp-*"))
