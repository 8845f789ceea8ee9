"""tfquant.benchmark: interval math on hand-computed values, an end-to-end run on the tiny GPT-J, bad input."""
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT

from tfquant import benchmark as bench
from tfquant.errors import run_cli

# --------------------------------------------------------------------------- Wilson interval
# Hand computation, z = 1.96, z^2 = 3.8416:
#   79/101: p = 0.782178, denominator 1 + z^2/n = 1.038036,
#           centre (p + z^2/2n) / 1.038036 = 0.801196 / 1.038036 = 0.771839,
#           half-width z * sqrt(p(1-p)/n + z^2/4n^2) / 1.038036 = 1.96 * 0.0422025 / 1.038036 = 0.079687
#           -> [0.692152, 0.851526]
#   0/10:   upper = z^2 / (n + z^2) = 3.8416 / 13.8416 = 0.277540, lower = 0
#   10/10:  lower = n / (n + z^2) = 10 / 13.8416 = 0.722460, upper = 1


@pytest.mark.parametrize("k,n,lo,hi", [
    (79, 101, 0.692152, 0.851526),
    (0, 10, 0.0, 0.277540),
    (10, 10, 0.722460, 1.0),
])
def test_wilson_known_values(k, n, lo, hi):
    got_lo, got_hi = bench.wilson_interval(k, n)
    assert got_lo == pytest.approx(lo, abs=2e-5)
    assert got_hi == pytest.approx(hi, abs=2e-5)


def test_wilson_edges_and_errors():
    assert bench.wilson_interval(0, 10)[0] == 0.0
    assert bench.wilson_interval(10, 10)[1] == 1.0
    lo, hi = bench.wilson_interval(50, 100)
    assert lo == pytest.approx(1 - hi, abs=1e-12)  # symmetric around 1/2
    for k, n in ((1, 0), (-1, 5), (6, 5)):
        with pytest.raises(ValueError):
            bench.wilson_interval(k, n)


# --------------------------------------------------------------------------- paired difference
# x = [1,1,0,1,0], y = [1,0,1,0,0]: b (x right, y wrong) = 2, c = 1, n = 5, d = 0.2,
# se = sqrt((b + c) - (b - c)^2 / n) / n = sqrt(3 - 0.2) / 5 = 0.334664, 1.96 se = 0.655941
#   -> [-0.455941, 0.855941]


def test_paired_difference_hand_computed():
    r = bench.paired_difference([1, 1, 0, 1, 0], [1, 0, 1, 0, 0])
    assert (r["n"], r["b"], r["c"]) == (5, 2, 1)
    assert r["diff"] == pytest.approx(0.2)
    assert r["se"] == pytest.approx(0.334664, abs=1e-6)
    assert r["ci95"] == pytest.approx([-0.455941, 0.855941], abs=1e-6)
    assert r["mcnemar_exact_p"] == pytest.approx(1.0)  # 2 * P(X <= 1 | 3, 1/2) = 2 * 4/8, capped at 1


def test_paired_difference_degenerate_cases():
    same = bench.paired_difference([True, False, True], [True, False, True])
    assert (same["b"], same["c"], same["diff"], same["ci95"]) == (0, 0, 0.0, [0.0, 0.0])
    all_better = bench.paired_difference([1] * 10, [0] * 10)
    assert all_better["diff"] == 1.0 and all_better["ci95"] == [1.0, 1.0]
    assert all_better["mcnemar_exact_p"] == pytest.approx(2 / 1024)
    with pytest.raises(ValueError):
        bench.paired_difference([1, 0], [1])
    with pytest.raises(ValueError):
        bench.paired_difference([], [])


def test_format_table_and_inc_block_are_pure():
    acc = {"n": 101, "correct": 79, "accuracy": 79 / 101, "ci95": list(bench.wilson_interval(79, 101))}
    results = {
        "settings": {"batch_size": 4},
        "models": [
            {"name": "fp32", "accuracy": {"last_token": acc, "whole_word": acc},
             "latency_ms": {"median": 1190.0, "mean": 1196.083}, "latency_ratio": 1.0,
             "throughput": {"samples_per_s": 3.3}, "size_mb": 100.0, "size_ratio": 1.0,
             "memory": {"peak_rss_mb": 900.0}},
            {"name": "int8", "latency_ms": {"median": 600.0, "mean": 610.0}, "latency_ratio": 0.5,
             "paired_vs_fp32": {"whole_word": bench.paired_difference([1, 1, 0, 1, 0], [1, 0, 1, 0, 0])},
             "throughput": {"samples_per_s": 6.6}, "size_mb": 30.0, "size_ratio": 0.3, "memory": None},
        ],
    }
    table = bench.format_table(results).splitlines()
    assert len(table) == 4 and table[0].count("|") == 11
    assert "throughput samples/s (bs=4)" in table[0]
    assert "78.22% [69.2, 85.2] (79/101)" in table[2]
    assert "+20.00 pts [-45.6, +85.6] (b=2, c=1)" in table[3]
    assert table[3].split("|")[2].strip() == "n/a" and table[3].split("|")[-2].strip() == "n/a"
    assert bench.format_table(results["models"]) .splitlines()[2:] == table[2:]
    block = bench.format_inc_block(results["models"][0])
    assert block == "Batch size = 1\nAccuracy: 0.78218\nLatency: 1196.083 ms\nThroughput: 0.836 samples/sec"


# --------------------------------------------------------------------------- model folders (no TF)

def test_model_folder_detection(tmp_path, tiny_gptj):
    from tfquant import modeldir

    out = tmp_path / "q"
    shutil.copytree(tiny_gptj, out / "model")
    os.remove(out / "model" / "tfquant_model.json")
    src = tmp_path / "src"
    src.mkdir()
    (src / "tfquant_model.json").write_text(json.dumps({"config": {"max_position_embeddings": 2048}}))
    (out / "report.json").write_text(json.dumps({"input_model": str(src), "policy": {"itex_mode": True}}))
    folder = modeldir.locate(str(out), "--quantized_model")
    assert folder.saved_model == str(out / "model")
    assert modeldir.locate(str(out / "model"), "--quantized_model").saved_model == folder.saved_model
    report = modeldir.conversion_report(folder)
    assert bench.runtime_env(folder.saved_model, report) == {"ITEX_TF_CONSTANT_FOLDING": "0"}
    assert modeldir.max_positions(folder, report) == (2048, str(src / "tfquant_model.json"))
    assert bench.runtime_env(tiny_gptj, None) == {}
    assert modeldir.max_positions(modeldir.locate(tiny_gptj), None) == (256, os.path.join(tiny_gptj, "tfquant_model.json"))


# --------------------------------------------------------------------------- end to end

def _bench(argv, capsys):
    code = run_cli(bench.main, argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_end_to_end_self_comparison(tiny_gptj, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TFQUANT_CACHE", str(tmp_path / "cache"))
    out_json = tmp_path / "results.json"
    chart = tmp_path / "chart.png"
    argv = ["--input_model", tiny_gptj, "--quantized_model", tiny_gptj, "--samples", "4", "--iters", "2",
            "--warmup", "1", "--seq_len", "32", "--batch_size", "2", "--gen_tokens", "3",
            "--output", str(out_json), "--quiet"]
    have_mpl = importlib.util.find_spec("matplotlib") is not None
    code, out, err = _bench(argv + (["--chart", str(chart)] if have_mpl else []), capsys)
    assert code == 0, err

    # the reference's block, once per model
    assert out.count("Batch size = 1\nAccuracy: ") == 2
    assert out.count(" ms\nThroughput: ") == 2 and "samples/sec" in out
    assert "| model | last-token acc [95% CI] | whole-word acc [95% CI] |" in out
    assert "cache not used: 4 per-item results computed and cached" in out

    res = json.loads(out_json.read_text())
    assert res["schema"] == bench.SCHEMA
    env = res["environment"]
    assert env["tensorflow"] and env["cpu_count"] >= 1 and env["date"]
    s = res["settings"]
    assert (s["dataset"], s["n_items"], s["batch_size"], s["seq_len"], s["iters"]) == ("austen", 4, 2, 32, 2)
    fp32, same = res["models"]
    assert (fp32["name"], fp32["role"], same["role"]) == ("fp32", "fp32", "quantized")
    assert fp32["name"] != same["name"]
    for m in (fp32, same):
        acc = m["accuracy"]
        assert acc["n"] == 4
        for key in ("last_token", "whole_word"):
            a = acc[key]
            assert a["n"] == 4 and 0 <= a["correct"] <= 4
            assert a["ci95"] == pytest.approx(list(bench.wilson_interval(a["correct"], 4)))
        assert m["latency_ms"]["runs"] == 2 and m["latency_ms"]["median"] > 0
        assert set(m["latency_ms"]) >= {"median", "p90", "mean"}
        assert m["throughput"]["batch_size"] == 2
        assert m["throughput"]["tokens_per_s"] == pytest.approx(32 * m["throughput"]["samples_per_s"])
        assert m["size_bytes"] > 0
        assert m["memory"]["peak_rss_mb"] > 0
        assert len(m["generation"]["new_token_ids"]) == 3
        assert "per_item" not in json.dumps(m)  # summaries only
    # the same model on the same items: identical results, a paired difference of exactly zero
    for key in ("last_token", "whole_word"):
        pair = same["paired_vs_fp32"][key]
        assert (pair["b"], pair["c"], pair["diff"], pair["ci95"]) == (0, 0, 0.0, [0.0, 0.0])
        assert same["accuracy"][key]["correct"] == fp32["accuracy"][key]["correct"]
    assert same["size_ratio"] == 1.0
    assert same["generation"]["same_prefix_as_fp32_tokens"] == 3
    assert fp32["accuracy"]["cache"]["used"] is False and same["accuracy"]["cache"] is None
    if have_mpl:
        assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # a second run reads the fp32 per-item results from the cache
    code, out, err = _bench(["--input_model", tiny_gptj, "--samples", "4", "--iters", "1", "--warmup", "0",
                             "--seq_len", "16", "--gen_tokens", "0", "--no_memory", "--output", str(out_json),
                             "--quiet"], capsys)
    assert code == 0, err
    assert "cache used: 4/4 per-item results read from the cache" in out
    again = json.loads(out_json.read_text())["models"][0]
    assert again["accuracy"]["cache"]["items_from_cache"] == 4
    assert again["accuracy"]["whole_word"] == fp32["accuracy"]["whole_word"]


# --------------------------------------------------------------------------- bad input

@pytest.fixture(scope="module")
def no_input_ids_model(tmp_path_factory):
    import tensorflow as tf

    path = str(tmp_path_factory.mktemp("bench_odd") / "no_input_ids")
    m = tf.Module()
    m.v = tf.Variable(1.0)

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32, name="tokens")])
    def f(tokens):
        return {"logits": tf.cast(tokens, tf.float32) * m.v}

    tf.saved_model.save(m, path, signatures={"serving_default": f})
    return path


def assert_one_line_error(code, err, needle):
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert needle in lines[0], lines[0]


@pytest.mark.parametrize("extra,needle", [
    (["--dataset", "wikitext"], "unknown dataset 'wikitext'"),
    (["--dataset", "lambada"], "--dataset lambada needs --data_dir"),
    (["--samples", "0"], "--samples must be a positive integer or 'all'"),
    (["--samples", "many"], "--samples must be a positive integer or 'all'"),
    (["--batch_size", "0"], "--batch_size must be positive"),
    (["--batch_size", "-3"], "--batch_size must be positive"),
    (["--seq_len", "x"], "--seq_len must be an integer"),
    (["--compare", "tflite"], "--compare 'tflite' is not supported"),
    (["--bogus_flag"], "unrecognized arguments: --bogus_flag"),
    (["--threads", "1,2,3"], "--threads takes 'default', 'decode' or INTER,INTRA"),
])
def test_bad_flags(tiny_gptj, tmp_path, capsys, extra, needle):
    code, _, err = _bench(["--input_model", tiny_gptj, "--output", str(tmp_path / "r.json")] + extra, capsys)
    assert_one_line_error(code, err, needle)
    assert not (tmp_path / "r.json").exists()


def test_bad_model_paths(tmp_path, capsys, no_input_ids_model, tiny_gptj):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = _bench(["--input_model", str(empty)], capsys)
    assert_one_line_error(code, err, "is not a TensorFlow SavedModel folder")
    code, _, err = _bench(["--input_model", str(tmp_path / "missing")], capsys)
    assert_one_line_error(code, err, "does not exist")
    code, _, err = _bench(["--input_model", tiny_gptj, "--quantized_model", no_input_ids_model, "--no_accuracy",
                           "--no_memory", "--output", str(tmp_path / "r.json")], capsys)
    assert_one_line_error(code, err, "has no 'input_ids' input")
    code, _, err = _bench([], capsys)
    assert_one_line_error(code, err, "--input_model is required")


def test_seq_len_over_the_position_limit(tiny_gptj, tmp_path, capsys):
    # limit unknown beforehand (no config beside the model): the first forward's error names it
    bare = tmp_path / "bare"
    shutil.copytree(tiny_gptj, bare)
    os.remove(bare / "tfquant_model.json")
    code, _, err = _bench(["--input_model", str(bare), "--seq_len", "300", "--no_accuracy", "--no_memory",
                           "--output", str(tmp_path / "r.json")], capsys)
    assert_one_line_error(code, err, "longer than the model accepts (256 positions)")
    # limit known from tfquant_model.json (prepare_model writes it): refused before anything is loaded
    code, _, err = _bench(["--input_model", tiny_gptj, "--seq_len", "300"], capsys)
    assert_one_line_error(code, err, "--seq_len 300 is longer than fp32 allows (256 positions")


def test_optional_dependencies_missing(tiny_gptj, tmp_path, capsys, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(bench.cli.importlib.util, "find_spec",
                        lambda name, *a: None if name in ("matplotlib", "neural_compressor") else real(name, *a))
    code, _, err = _bench(["--input_model", tiny_gptj, "--chart", str(tmp_path / "c.png")], capsys)
    assert_one_line_error(code, err, "pip install matplotlib")
    code, _, err = _bench(["--input_model", tiny_gptj, "--compare", "inc"], capsys)
    assert_one_line_error(code, err, "--compare inc needs neural-compressor: pip install .[inc]")


def test_cli_exit_status_and_single_line(tiny_gptj, tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-m", "tfquant.benchmark", "--input_model", tiny_gptj, "--samples", "-1"],
                          capture_output=True, text=True, cwd=str(tmp_path), env=env, timeout=120)
    assert_one_line_error(proc.returncode, proc.stderr, "--samples must be a positive integer or 'all'")
    assert proc.stdout == ""
