"""Every preset scheme end to end on the tiny GPT-J and the tiny Mistral; weight-only storage sizes;
bad scheme combinations; GGUF blocks kept as they are (--keep_quantized)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRESETS = ("w8a8", "w8a8-dynamic", "w8a16", "w4a16-g32", "w4a16-g32-asym", "w4a16-g128", "bf16", "fp16", "mxfp6")
# Presets of 8 bits or more: top-1 agreement with fp32 >= 0.9 even on random tiny models.  4-bit and MX6 round
# to nearest on random weights move logits that random models leave nearly tied (measured: w4a16-g32 0.63 on
# the tiny GPT-J, 0.57 on the tiny Mistral; mxfp6 0.85 / 0.78), so those are held to their numpy emulation.
EIGHT_BIT = ("w8a8", "w8a8-dynamic", "w8a16", "bf16", "fp16")
OTHER_WEIGHTS = ("mxfp8", "mxfp4", "mxint8", "mx6", "mx9", "q4_0", "q4_1", "q8_0")


def _run(*args, cwd=ROOT):
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    from tfquant.assets import config_path
    from tfquant.models import prepare_from_config

    root = tmp_path_factory.mktemp("scheme_models")
    # the Mistral with prefill + decode signatures (what tools/prepare_model.py writes), the GPT-J with one
    return {kind: prepare_from_config(config_path(f"{kind}-tiny.yaml"), str(root / kind), overwrite=True,
                                      cache=kind == "mistral")
            for kind in ("gptj", "mistral")}


@pytest.fixture(scope="session")
def batch():
    """8 x 32 tokens of real text (the shipped second domain's contexts, GPT-2 BPE as calibration uses)."""
    from tfquant.data import encode, gpt2_tokenizer, load_eval_items

    tok = gpt2_tokenizer()
    ids = np.array([encode(tok, item.context)[:32] for item in load_eval_items("adventures")[:8]], np.int32)
    return ids, np.ones_like(ids)


def _logits(model_dir, batch):
    import tensorflow as tf

    ids, mask = batch
    fn = tf.saved_model.load(model_dir).signatures["serving_default"]
    return fn(input_ids=tf.constant(ids), attention_mask=tf.constant(mask))["logits"].numpy()


@pytest.fixture(scope="session")
def converted(tmp_path_factory, tiny_models):
    from tfquant.convert import ConvertSavedModel

    out = {}
    root = tmp_path_factory.mktemp("schemes")
    for kind, src in tiny_models.items():
        for name in PRESETS + (OTHER_WEIGHTS if kind == "gptj" else ()):
            dst = str(root / f"{kind}-{name}")
            report = ConvertSavedModel(src, dst, recipe=_recipe(name), progress=False)
            out[kind, name] = (dst, report)
    return out


def _emulated_logits(src, recipe, batch):
    """fp32 logits with every 2-D weight replaced by numpy's dequantize(quantize(w)) in the recipe's format
    (tables quantized along the hidden size, as tfquant stores them; groups that do not divide -> int8 per
    channel): what the weight-only graph must compute."""
    import tensorflow as tf

    from tfquant.formats import dequantize_weight, get_format, quantize_weight
    from tfquant.policy import QuantPolicy

    policy = QuantPolicy.from_recipe(recipe)
    loaded = tf.saved_model.load(src)  # kept alive: the signature only references its variables
    fn = loaded.signatures["serving_default"]
    for var in fn.variables:
        if len(var.shape) != 2:
            continue
        table = "wte" in var.name or "embed_tokens" in var.name
        w = var.numpy().T if table else var.numpy()
        fmt, options = policy.weight_format, dict(policy.weight_format_options)
        family = get_format(fmt).family
        group = options.get("group_size") if family == "int" else {"ggml": 32, "mx": 32, "mx_paper": 16}.get(family)
        if group and w.shape[0] % group:
            fmt, options = "int8_per_channel", {}
        d = dequantize_weight(quantize_weight(w, fmt, **options))
        var.assign(d.T if table else d)
    ids, mask = batch
    return fn(input_ids=tf.constant(ids), attention_mask=tf.constant(mask))["logits"].numpy()


def _recipe(name):
    from tfquant.quantize import recipe_path
    from tfquant.recipe import Recipe, merge, yaml_section

    return merge(Recipe, {}, yaml_section(recipe_path(name))) if name in PRESETS else Recipe(weights=name)


@pytest.mark.parametrize("kind", ["gptj", "mistral"])
@pytest.mark.parametrize("name", EIGHT_BIT)
def test_8bit_preset_agrees_with_fp32(tiny_models, converted, batch, kind, name):
    dst, report = converted[kind, name]
    ref = _logits(tiny_models[kind], batch)
    got = _logits(os.path.join(dst, "model"), batch)
    agree = float((ref.argmax(-1) == got.argmax(-1)).mean())
    assert agree >= 0.9, (kind, name, agree)
    assert report["recipe"]["weights"] == {"bf16": "bf16", "fp16": "fp16"}.get(name, "int8")


@pytest.mark.parametrize("kind, name", [(k, n) for k in ("gptj", "mistral") for n in PRESETS[2:]]
                         + [("gptj", n) for n in OTHER_WEIGHTS])
def test_weight_only_computes_its_numpy_emulation(tiny_models, converted, batch, kind, name):
    """The graph decodes exactly what tfquant.formats dequantizes (bit for bit, tests/test_tfdecode.py), so its
    logits are the emulated model's; bf16 on a bf16 CPU also rounds activations to bf16, hence the tolerance."""
    dst, report = converted[kind, name]
    emulated = _emulated_logits(tiny_models[kind], _recipe(name), batch)
    got = _logits(os.path.join(dst, "model"), batch)
    scale = float(np.abs(emulated).max())
    tol = 2e-2 if report["policy"]["compute_dtype"] == "bfloat16" else 1e-4
    assert float(np.abs(got - emulated).max()) <= tol * scale, (kind, name, np.abs(got - emulated).max(), scale)
    assert float((emulated.argmax(-1) == got.argmax(-1)).mean()) >= (0.9 if tol > 1e-3 else 0.99)
    ref = _logits(tiny_models[kind], batch)
    corr = np.corrcoef(ref.ravel(), got.ravel())[0, 1]
    assert corr > (0.95 if name in ("mxfp4", "q4_0", "q4_1", "w4a16-g32", "w4a16-g32-asym") else 0.99), (name, corr)


def test_storage_is_the_format(tiny_models, converted):
    """Variables on disk: the weights' own format (int4 packed two per byte, MXFP6 four per three bytes...)."""
    sizes = {name: converted["mistral", name][1]["size_bytes"] for name in PRESETS}
    ratio = {name: s["output"] / s["input"] for name, s in sizes.items()}
    # (whole folders of a tiny model: saved_model.pb, norms and the decode graphs weigh more than they will
    # on a real one; SmolLM2's are in bench/results/schemes_smollm2.json)
    assert ratio["bf16"] < 0.52 and ratio["fp16"] < 0.52
    assert ratio["w4a16-g32"] < ratio["mxfp6"] < ratio["w8a16"] < ratio["bf16"]
    block = converted["mistral", "w4a16-g32"][1]["weight_only"]
    assert block["stored_bytes"] / block["fp32_bytes"] == pytest.approx((4 + 32 / 32) / 32, rel=0.01)
    mx = converted["mistral", "mxfp6"][1]["weight_only"]
    assert mx["stored_bytes"] / mx["fp32_bytes"] == pytest.approx(6.25 / 32, rel=0.001)


def test_group_size_that_does_not_divide_falls_back_per_channel(converted):
    """The tiny GPT-J's MatMuls take 64 or 256 inputs: groups of 128 do not divide 64."""
    block = converted["gptj", "w4a16-g128"][1]["weight_only"]
    notes = {f["op"]: f["note"] for f in block["fallbacks"]}
    assert notes and all("do not divide the input dimension 64" in n for n in notes.values())
    assert {o["format"] for o in block["ops"] if o["op"] in notes} == {"int8_per_channel"}
    assert any(o["format"] == "int4_g32" for o in block["ops"])  # fc_out (256 inputs) stays int4


def test_weight_only_keeps_signatures_and_loads_with_saved_model_cli(tiny_models, converted):
    import tensorflow as tf

    dst, report = converted["mistral", "w4a16-g32"]
    model = tf.saved_model.load(os.path.join(dst, "model"))
    original = tf.saved_model.load(tiny_models["mistral"])
    assert sorted(model.signatures) == sorted(original.signatures)
    for name in original.signatures:
        assert (model.signatures[name].structured_input_signature
                == original.signatures[name].structured_input_signature)
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    res = subprocess.run([cli, "show", "--dir", os.path.join(dst, "model"), "--all"], capture_output=True, text=True)
    assert res.returncode == 0 and "logits" in res.stdout and "past_key_values" in res.stdout
    assert report["variables"]["reused"] > 0  # prefill and decode read the same packed weights
    assert report["op_histogram"]["after"].get("MatMul", 0) >= report["weight_only"]["count"]


def test_bf16_compute_follows_the_cpu(converted):
    from tfquant.machine import cpu_flags

    report = converted["gptj", "bf16"][1]
    expected = "bfloat16" if {"avx512_bf16", "amx_bf16"} & set(cpu_flags()) else "float32"
    assert report["policy"]["compute_dtype"] == report["weight_only"]["compute_dtype"] == expected


def test_dynamic_needs_no_calibration(converted):
    report = converted["gptj", "w8a8-dynamic"][1]
    assert report["ranges"] == {} and report["timings_s"].get("calibrate", 0.0) < 0.05
    assert report["calibration"] == {"run": False, "reason": "dynamic activations take no ranges from data"}
    assert all(q["per_token"] for q in report["quantized"] if q["op_type"] == "MatMul")
    assert report["lowered"]["count"] == len(report["quantized"])


def test_each_decode_waits_for_its_matmul_input(converted):
    """Without a control edge TF would decode every weight at the start of a call (they read only variables)
    and hold all the fp32 copies at once (SmolLM2 w8a16 peak RSS 1598 MB; with the edges 1233 MB)."""
    from tfquant.graph import Graph, parse_input
    from tfquant.graphio import read_graph_def

    out, _ = converted["mistral", "w8a16"]
    graph = Graph(read_graph_def(os.path.join(out, "converted_graph_def.pb")))
    entry = [n for n in graph.nodes.values() if "/decode/" in n.name
             and any(graph.node(i).op == "ReadVariableOp" for i in n.input if not i.startswith("^"))]
    assert entry
    for node in entry:
        decode = node.name.split("/decode/")[0] + "/decode/output"
        readers = [m for m in graph.nodes.values() if m.op == "MatMul" and decode in m.input]
        assert len(readers) == 1
        assert "^" + parse_input(readers[0].input[0])[0] in node.input, node.name


@pytest.mark.parametrize("kind, name", [("mistral", "w4a16-g32"), ("gptj", "q4_0"), ("gptj", "mxfp6")])
def test_large_weights_decode_in_column_slices_exactly(tmp_path, tiny_models, converted, batch, kind, name):
    """--decode_chunk_mb 4 slices the tiny models' lm_head (12.9 MB decoded) into 4 slices: logits of every
    signature equal the whole-weight decode's, and each slice's decode waits for the previous slice's product."""
    import tensorflow as tf

    from tfquant.convert import ConvertSavedModel
    from tfquant.graph import Graph, parse_input
    from tfquant.graphio import read_graph_def

    whole, _ = converted[kind, name]
    dst = str(tmp_path / "sliced")
    report = ConvertSavedModel(tiny_models[kind], dst, recipe=replace(_recipe(name), decode_chunk_mb=4.0),
                               progress=False)
    sliced = report["weight_only"]["decoded_in_slices"]
    assert sliced and all("lm_head" in s["op"] and s["columns_per_slice"] == 16384 for s in sliced), sliced
    ids, mask = batch
    for sig in (("serving_default", "decode") if kind == "mistral" else ("serving_default",)):
        outs = []
        for folder in (whole, dst):
            fn = tf.saved_model.load(os.path.join(folder, "model")).signatures[sig]
            feed = {"input_ids": tf.constant(ids), "attention_mask": tf.constant(mask)}
            if sig == "decode":
                past = tf.saved_model.load(os.path.join(folder, "model")).signatures["serving_default"](**feed)
                feed = {"input_ids": tf.constant(ids[:, :1]), "attention_mask": tf.constant(np.ones((8, 33), np.int32)),
                        "past_key_values": past["past_key_values"]}
            outs.append(fn(**feed)["logits"].numpy())
        assert np.array_equal(*outs), (sig, np.abs(outs[0] - outs[1]).max())
    graph = Graph(read_graph_def(os.path.join(dst, "converted_graph_def.pb")))
    concat = graph.node(sliced[0]["op"])
    parts = [graph.node(parse_input(i)[0]) for i in concat.input[:-1]]
    assert concat.op == "ConcatV2" and len(parts) == 4 and all(p.op == "MatMul" for p in parts)
    for before, part in zip([graph.node(parse_input(parts[0].input[0])[0])] + parts[:-1], parts):
        prefix = part.input[1].split("/decode/")[0] + "/decode/"
        entry = [n for n in graph.nodes.values() if n.name.startswith(prefix)
                 and any(graph.node(parse_input(i)[0]).op == "ReadVariableOp" for i in n.input if i[0] != "^")]
        assert entry and all("^" + before.name in n.input for n in entry), part.name


def test_weight_only_is_deterministic(tmp_path, tiny_models, converted):
    from tfquant.convert import ConvertSavedModel

    dst = str(tmp_path / "again")
    ConvertSavedModel(tiny_models["gptj"], dst, weights="mxfp6", progress=False)
    first = converted["gptj", "mxfp6"][0]
    with open(os.path.join(first, "converted_graph_def.pb"), "rb") as a, \
            open(os.path.join(dst, "converted_graph_def.pb"), "rb") as b:
        assert a.read() == b.read()


@pytest.mark.parametrize("flags, message", [
    (["--weights", "int3"], "invalid choice"),
    (["--weights", "bf16", "--activations", "int8"], "need int8 weights"),
    (["--weights", "int4", "--itex_mode"], "cannot be combined with weight-only"),
    (["--weights", "int4", "--group_size", "0"], "--group_size must be an even number"),
    (["--weights", "mxfp6", "--group_size", "16"], "blocks of 32 fixed by the format"),
    (["--weights", "int8", "--activations", "int8", "--weight_granularity", "per_group"], "per_group"),
    (["--weights", "fp16", "--asymmetric"], "--asymmetric applies to integer weights"),
    (["--config", "no-such-preset"], "no such file, and no preset"),
])
def test_bad_scheme_is_one_line_exit_2(tmp_path, flags, message):
    out = tmp_path / "out"
    res = _run("-m", "tfquant.quantize", "--output_dir", str(out), *flags)
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    assert message in res.stderr and "Traceback" not in res.stderr and len(lines) <= 3, res.stderr
    assert not out.exists()


# --------------------------------------------------------------------------- GGUF blocks kept

@pytest.fixture(scope="module")
def quantized_gguf(tmp_path_factory):
    from gguf import GGMLQuantizationType as T
    from test_models import make_llama_weights, write_tiny_gguf

    weights = make_llama_weights(seed=4, tied=True)
    types = {"token_embd.weight": T.Q8_0}
    for i in range(2):
        b = f"blk.{i}."
        types.update({b + "attn_q.weight": T.Q4_0, b + "attn_k.weight": T.Q4_1, b + "attn_v.weight": T.Q4_1,
                      b + "attn_output.weight": T.Q8_0, b + "ffn_gate.weight": T.Q4_1, b + "ffn_up.weight": T.Q4_0,
                      b + "ffn_down.weight": T.Q4_1})
    path = tmp_path_factory.mktemp("qgguf") / "tiny-q.gguf"
    write_tiny_gguf(path, weights, types=types)
    return str(path), weights, types


def test_keep_quantized_logits_equal_the_dequantized_model(tmp_path, quantized_gguf):
    path = quantized_gguf[0]
    fp32, kept = tmp_path / "fp32", tmp_path / "kept"
    assert _run("tools/prepare_model.py", "--gguf", path, "--output_dir", str(fp32)).returncode == 0
    res = _run("tools/prepare_model.py", "--gguf", path, "--keep_quantized", "--output_dir", str(kept))
    assert res.returncode == 0, res.stderr
    ids = np.array([[5, 17, 3, 200, 42, 9, 260, 77, 1]], np.int32)
    ref = _logits(str(fp32), (ids, np.ones_like(ids)))
    got = _logits(str(kept / "model"), (ids, np.ones_like(ids)))
    assert np.array_equal(ref, got), np.abs(ref - got).max()
    report = json.loads((kept / "report.json").read_text())
    formats = {o["format"] for o in report["weight_only"]["ops"]}
    assert formats == {"q4_0", "q4_1", "q8_0"} and report["weight_only"]["count"] == 2 * 7 + 1
    assert report["weight_only"]["embeddings"]  # the Q8_0 table is gathered from its blocks
    kept = report["weight_only"]
    assert kept["stored_bytes"] < 0.3 * kept["fp32_bytes"]  # Q4_0 4.5, Q4_1 5, Q8_0 8.5 bits of 32


def test_keep_quantized_refuses_an_unsupported_type(tmp_path):
    from gguf import GGMLQuantizationType as T
    from test_models import make_llama_weights, write_tiny_gguf

    path = tmp_path / "q5.gguf"
    write_tiny_gguf(path, make_llama_weights(seed=5, tied=True), types={"blk.1.ffn_down.weight": T.Q5_0})
    out = tmp_path / "out"
    res = _run("tools/prepare_model.py", "--gguf", str(path), "--keep_quantized", "--output_dir", str(out))
    assert res.returncode == 2 and "blk.1.ffn_down.weight is Q5_0" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr and not out.exists()
