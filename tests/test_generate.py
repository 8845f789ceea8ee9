"""Generation with a KV cache: quantized prefill + decode signatures, the generate command."""
import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT
from test_cli_errors import assert_one_line_error

FAMILIES = ("gptj", "gpt2", "mistral")
PROMPT = list(range(100, 108))


@pytest.fixture(scope="module")
def cached_models(tmp_path_factory):
    """Tiny random models of each family exported with prefill + decode signatures, and their int8 conversions."""
    from tfquant.convert import ConvertSavedModel
    from tfquant.models import prepare_from_config

    base = tmp_path_factory.mktemp("gen")
    out = {}
    for family in FAMILIES:
        fp32 = str(base / family)
        prepare_from_config(os.path.join(ROOT, "configs", f"{family}-tiny.yaml"), fp32, cache=True)
        int8 = str(base / f"{family}-int8")
        report = ConvertSavedModel(fp32, int8, calib_samples=4, seq_len=32, progress=False)
        out[family] = (fp32, int8, report)
    return out


def _greedy(path, use_cache, n=12):
    from tfquant.generate import Generator, Sampler

    return Generator(path, use_cache=use_cache).generate(PROMPT, n, Sampler()).new_ids


@pytest.mark.parametrize("family", FAMILIES)
def test_cached_greedy_equals_recompute(cached_models, family):
    fp32, int8, _ = cached_models[family]
    assert _greedy(fp32, True) == _greedy(fp32, False)  # exact in fp32
    cached, full = _greedy(int8, True), _greedy(int8, False)
    agree = sum(a == b for a, b in zip(cached, full)) / len(full)
    assert agree >= 0.9, (cached, full)


@pytest.mark.parametrize("family", FAMILIES)
def test_both_signatures_kept_and_weights_shared(cached_models, family):
    import tensorflow as tf

    fp32, int8, report = cached_models[family]
    ref, got = tf.saved_model.load(fp32), tf.saved_model.load(os.path.join(int8, "model"))
    assert sorted(got.signatures) == sorted(ref.signatures) == ["decode", "serving_default"]
    for name in ref.signatures:
        for attr in ("structured_input_signature",):
            r, g = getattr(ref.signatures[name], attr)[1], getattr(got.signatures[name], attr)[1]
            assert {k: (v.dtype, v.shape.as_list()) for k, v in r.items()} == \
                {k: (v.dtype, v.shape.as_list()) for k, v in g.items()}
        r, g = ref.signatures[name].structured_outputs, got.signatures[name].structured_outputs
        assert {k: (v.dtype, v.shape.as_list()) for k, v in r.items()} == \
            {k: (v.dtype, v.shape.as_list()) for k, v in g.items()}
    decode = report["other_signatures"]["decode"]
    assert decode["lowered"] == report["lowered"]["count"] > 0
    # the decode graph reads the same int8 variables: the model is not twice the size
    assert report["size_bytes"]["output"] < 0.35 * report["size_bytes"]["input"]
    assert report["variables"]["reused"] > 0


def test_decode_is_calibrated_on_decode_steps(cached_models):
    _, int8, report = cached_models["gptj"]
    decode = report["other_signatures"]["decode"]
    assert decode["calibration_batches"] == 4 * 4  # 4 windows x 4 decode steps
    with open(os.path.join(int8, "report.json")) as fh:
        assert json.load(fh)["other_signatures"]["decode"]["ranges"]


def _generate(*args):
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-m", "tfquant.generate", *args], capture_output=True, text=True, env=env,
                          timeout=300)


def test_generate_command(cached_models, tmp_path):
    fp32, int8, _ = cached_models["gpt2"]
    for model in (fp32, int8):
        proc = _generate("--model", model, "--prompt", "def hello_world():", "--max_new_tokens", "5")
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith("def hello_world():")
        assert "5 tokens with the KV cache" in proc.stdout and "ms/token" in proc.stdout and "tokens/s" in proc.stdout
    proc = _generate("--model", fp32, "--prompt", "x", "--max_new_tokens", "3", "--temperature", "0.8", "--top_k", "5",
                     "--seed", "1", "--no_cache")
    assert proc.returncode == 0 and "recomputing the sequence" in proc.stdout, proc.stderr


def test_generate_without_a_decode_signature_falls_back(tiny_gptj):
    proc = _generate("--model", tiny_gptj, "--prompt", "Hello", "--max_new_tokens", "2")
    assert proc.returncode == 0, proc.stderr
    assert "no 'decode' signature" in proc.stderr and "recomputing" in proc.stdout


@pytest.mark.parametrize("args,needle", [
    (["--max_new_tokens", "0"], "--max_new_tokens must be positive"),
    (["--max_new_tokens", "300"], "longer than the model's 256 positions"),
    (["--greedy", "--temperature", "0.5"], "contradict"),
    (["--threads", "fast"], "--threads takes 'default', 'decode' or INTER,INTRA"),
    (["--threads", "2,-1"], "--threads takes thread counts >= 0"),
])
def test_generate_bad_input(tiny_gptj, args, needle):
    proc = _generate("--model", tiny_gptj, "--prompt", "Hello", *args)
    assert_one_line_error(proc.returncode, proc.stderr, needle)


def test_benchmark_generate_rows(cached_models, tmp_path, capsys):
    from tfquant import benchmark as bench
    from tfquant.errors import run_cli

    fp32, int8, _ = cached_models["gpt2"]
    out = tmp_path / "r.json"
    code = run_cli(bench.main, ["--input_model", fp32, "--quantized_model", int8, "--generate", "3", "--no_accuracy",
                                "--no_memory", "--iters", "1", "--warmup", "0", "--seq_len", "16", "--batch_size", "1",
                                "--gen_tokens", "0", "--quiet", "--output", str(out)])
    assert code == 0, capsys.readouterr().err
    models = json.loads(out.read_text())["models"]
    for m in models:
        d = m["decoding"]
        assert d["cached"] and d["new_tokens"] == 3 and d["decode_ms_per_token"] > 0 and d["tokens_per_s"] > 0
        assert set(d["continuations"]) == {"def hello_world():", "def sum_of_natural_numbers(n):"}
    assert all("tokens_equal_to_fp32" in c for c in models[1]["decoding"]["continuations"].values())
