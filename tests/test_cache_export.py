"""KV-cache export (tfquant.cache_export): prefill + decode signatures over one set of variables.

For GPT-J and GPT-2 (random tiny configs) and Mistral/Llama (a tiny GGUF), loaded back with plain
``tf.saved_model.load``: greedy generation through prefill + decode, feeding ``past_key_values`` back,
must pick exactly the ids that full recompute with ``serving_default`` picks, with logits within 1e-4.
"""
import functools
import json
import os
import subprocess
import sys

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from conftest import ROOT  # noqa: E402
from test_models import make_llama_weights, write_tiny_gguf  # noqa: E402

FAMILIES = ("gptj", "gpt2", "mistral")
# (n_layers, kv_heads, head_dim, vocab) of the tiny models below
GEOMETRY = {"gptj": (2, 4, 16, 50400), "gpt2": (2, 4, 16, 50257), "mistral": (2, 2, 16, None)}
PROMPT_LEN, NEW_TOKENS, BATCH = 8, 12, 2


def _prepare_cli(args):
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    try:
        import prepare_model
    finally:
        sys.path.pop(0)
    assert prepare_model.main(args) == 0


@pytest.fixture(scope="module")
def exports(tmp_path_factory, tiny_gptj):
    """{family: (cache export, no-cache export)}, made each through a different entry point."""
    from tfquant.gguf_import import prepare_from_gguf
    from tfquant.models import prepare_from_config

    root = tmp_path_factory.mktemp("cache")
    out = {}
    gptj = str(root / "gptj")
    prepare_from_config(os.path.join(ROOT, "configs", "gptj-tiny.yaml"), gptj, cache=True)
    out["gptj"] = (gptj, tiny_gptj)  # conftest's model: same config, Python default (no cache)

    gpt2_yaml = os.path.join(ROOT, "configs", "gpt2-tiny.yaml")
    _prepare_cli(["--config", gpt2_yaml, "--output_dir", str(root / "gpt2")])  # the CLI default: a cache
    _prepare_cli(["--config", gpt2_yaml, "--output_dir", str(root / "gpt2_nc"), "--no_cache"])
    out["gpt2"] = (str(root / "gpt2"), str(root / "gpt2_nc"))

    gguf = root / "tiny.gguf"
    write_tiny_gguf(gguf, make_llama_weights(seed=0))
    _prepare_cli(["--gguf", str(gguf), "--output_dir", str(root / "mistral")])
    prepare_from_gguf(str(gguf), str(root / "mistral_nc"), cache=False)
    out["mistral"] = (str(root / "mistral"), str(root / "mistral_nc"))
    return out


@functools.cache
def _load(model_dir):
    """Plain tf.saved_model.load, once per model (the loaded object stays alive with its signatures)."""
    return tf.saved_model.load(model_dir)


def _vocab(model_dir):
    with open(os.path.join(model_dir, "tfquant_model.json"), encoding="utf-8") as fh:
        return json.load(fh)["config"]["vocab_size"]


def _greedy_full(serving, ids):
    """Greedy continuation recomputing the whole sequence each step; (new ids, last-position logits per step)."""
    logits = []
    for _ in range(NEW_TOKENS):
        last = serving(input_ids=ids, attention_mask=tf.ones_like(ids))["logits"][:, -1]
        logits.append(last.numpy())
        ids = tf.concat([ids, tf.argmax(last, -1, output_type=tf.int32)[:, None]], axis=1)
    return ids.numpy()[:, PROMPT_LEN:], np.stack(logits)


def _greedy_cached(prefill, decode, ids):
    """The same continuation with one prefill, then one decode step per token fed the returned cache."""
    out = prefill(input_ids=ids, attention_mask=tf.ones_like(ids))
    logits, past = [], out["past_key_values"]
    last = out["logits"][:, -1]
    for step in range(NEW_TOKENS):
        logits.append(last.numpy())
        nxt = tf.argmax(last, -1, output_type=tf.int32)[:, None]
        ids = tf.concat([ids, nxt], axis=1)
        if step + 1 < NEW_TOKENS:
            out = decode(input_ids=nxt, attention_mask=tf.ones_like(ids), past_key_values=past)
            past, last = out["past_key_values"], out["logits"][:, -1]
            assert past.shape[4] == ids.shape[1]  # the cache grows by the new token
    return ids.numpy()[:, PROMPT_LEN:], np.stack(logits)


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_decode_equals_full_recompute(exports, family):
    cache_dir, plain_dir = exports[family]
    sigs = _load(cache_dir).signatures
    ids = tf.constant(np.random.RandomState(7).randint(0, _vocab(cache_dir), (BATCH, PROMPT_LEN)), tf.int32)

    full_ids, full_logits = _greedy_full(sigs["serving_default"], ids)
    got_ids, got_logits = _greedy_cached(sigs["serving_default"], sigs["decode"], ids)
    np.testing.assert_array_equal(got_ids, full_ids)
    np.testing.assert_allclose(got_logits, full_logits, rtol=0, atol=1e-4)

    # the prefill computes what the no-cache serving function computes
    plain = _load(plain_dir).signatures["serving_default"]
    np.testing.assert_allclose(sigs["serving_default"](input_ids=ids, attention_mask=tf.ones_like(ids))["logits"],
                               plain(input_ids=ids, attention_mask=tf.ones_like(ids))["logits"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_decode_takes_several_new_tokens(exports, family):
    """decode is not limited to one token: 3 new tokens after a past of 5 give the full forward's last 3 logits."""
    cache_dir = exports[family][0]
    sigs = _load(cache_dir).signatures
    ids = tf.constant(np.random.RandomState(3).randint(0, _vocab(cache_dir), (BATCH, PROMPT_LEN)), tf.int32)
    full = sigs["serving_default"](input_ids=ids, attention_mask=tf.ones_like(ids))
    past = sigs["serving_default"](input_ids=ids[:, :5], attention_mask=tf.ones_like(ids[:, :5]))["past_key_values"]
    out = sigs["decode"](input_ids=ids[:, 5:], attention_mask=tf.ones_like(ids), past_key_values=past)
    np.testing.assert_allclose(out["logits"], full["logits"][:, 5:], rtol=0, atol=1e-4)
    np.testing.assert_allclose(out["past_key_values"], full["past_key_values"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_signature_specs(exports, family):
    n_layers, kv_heads, head_dim, vocab = GEOMETRY[family]
    cache_dir = exports[family][0]
    vocab = vocab or _vocab(cache_dir)
    past = [n_layers, 2, None, kv_heads, None, head_dim]
    sigs = _load(cache_dir).signatures
    assert sorted(sigs) == ["decode", "serving_default"]
    for name, inputs in (("serving_default", {"input_ids", "attention_mask"}),
                         ("decode", {"input_ids", "attention_mask", "past_key_values"})):
        specs = sigs[name].structured_input_signature[1]
        assert set(specs) == inputs, name
        for key in ("input_ids", "attention_mask"):
            assert (specs[key].dtype, specs[key].shape.as_list()) == (tf.int32, [None, None]), (name, key)
        if "past_key_values" in specs:
            assert (specs["past_key_values"].dtype, specs["past_key_values"].shape.as_list()) == (tf.float32, past)
        outs = sigs[name].structured_outputs
        assert set(outs) == {"logits", "past_key_values"}, name
        assert (outs["logits"].dtype, outs["logits"].shape.as_list()) == (tf.float32, [None, None, vocab])
        assert (outs["past_key_values"].dtype, outs["past_key_values"].shape.as_list()) == (tf.float32, past)


def _dir_bytes(folder):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(folder) for f in files)


@pytest.mark.parametrize("family", FAMILIES)
def test_no_cache_is_single_signature_and_variables_not_doubled(exports, family):
    cache_dir, plain_dir = exports[family]
    plain = _load(plain_dir).signatures
    assert list(plain) == ["serving_default"]
    assert set(plain["serving_default"].structured_outputs) == {"logits"}
    with_cache = _dir_bytes(os.path.join(cache_dir, "variables"))
    without = _dir_bytes(os.path.join(plain_dir, "variables"))
    assert abs(with_cache / without - 1) < 0.05, (with_cache, without)


@pytest.mark.parametrize("family", FAMILIES)
def test_model_info_lists_signatures(exports, family):
    n_layers, kv_heads, head_dim, _ = GEOMETRY[family]
    cache_dir, plain_dir = exports[family]
    with open(os.path.join(cache_dir, "tfquant_model.json"), encoding="utf-8") as fh:
        info = json.load(fh)
    assert sorted(info["signatures"]) == ["decode", "serving_default"]
    assert info["signatures"]["decode"]["outputs"] == ["logits", "past_key_values"]
    cache = info["cache"]
    assert cache["layout"] == ["n_layers", "2", "batch", "kv_heads", "time", "head_dim"]
    assert (cache["n_layers"], cache["kv_heads"], cache["head_dim"]) == (n_layers, kv_heads, head_dim)
    with open(os.path.join(plain_dir, "tfquant_model.json"), encoding="utf-8") as fh:
        plain = json.load(fh)
    assert list(plain["signatures"]) == ["serving_default"] and plain["cache"] is None
    assert plain["signatures"]["serving_default"]["outputs"] == ["logits"]


def _saved_model_cli_signatures(model_dir):
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    res = subprocess.run([cli, "show", "--dir", model_dir, "--all"], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert res.returncode == 0, res.stderr[-2000:]
    return {line.split("'")[1] for line in res.stdout.splitlines() if line.startswith("signature_def[")}


@pytest.mark.parametrize("family", FAMILIES)
def test_saved_model_cli_lists_both_signatures(exports, family):
    assert _saved_model_cli_signatures(exports[family][0]) == {"__saved_model_init_op", "serving_default", "decode"}


def test_saved_model_cli_no_cache(exports):
    assert _saved_model_cli_signatures(exports["gpt2"][1]) == {"__saved_model_init_op", "serving_default"}


@pytest.mark.parametrize("name, kind, geometry, vocab", [
    ("gptj-tiny.yaml", "gptj", (2, 4, 16), 50400),
    ("gpt2-tiny.yaml", "gpt2", (2, 4, 16), 50257),
    ("mistral-tiny.yaml", "mistral", (2, 2, 16), 50304),
])
def test_tiny_configs(name, kind, geometry, vocab):
    """The shipped tiny configs build their family, with vocabularies that take every GPT-2 BPE id."""
    from tfquant.cache_export import cache_geometry
    from tfquant.models import build_random_model, load_yaml_config

    cfg = load_yaml_config(os.path.join(ROOT, "configs", name))
    assert cfg["model_type"] == kind
    model = build_random_model(kind, cfg[kind], seed=cfg["seed"])
    g = cache_geometry(model)
    assert (g.family, g.n_layers, g.kv_heads, g.head_dim) == (kind, *geometry)
    assert model.config.vocab_size == vocab >= 50257


def test_unsupported_random_family(tmp_path):
    from tfquant.errors import UserError
    from tfquant.models import prepare_from_config

    bad = tmp_path / "opt.yaml"
    bad.write_text("model_type: opt\nopt: {}\n")
    with pytest.raises(UserError, match="use gptj, gpt2, mistral"):
        prepare_from_config(str(bad), str(tmp_path / "out"))
