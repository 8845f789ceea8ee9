"""User mistakes: one line on stderr, exit status 2, nothing left behind; and the graph tools."""
import os
import subprocess
import sys

import pytest
from conftest import ROOT

from tfquant.errors import run_cli


def quantize(argv, capsys):
    from tfquant.quantize import main

    code = run_cli(main, argv)
    err = capsys.readouterr().err.strip()
    return code, err


def assert_one_line_error(code, err, needle):
    assert code == 2
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert needle in lines[0], lines[0]


def leftovers(folder):
    return [n for n in os.listdir(folder) if n.startswith(".")]


@pytest.fixture(scope="module")
def odd_models(tmp_path_factory):
    """SavedModels with the wrong signature name, or without input_ids."""
    import tensorflow as tf

    base = tmp_path_factory.mktemp("odd")
    m = tf.Module()
    m.v = tf.Variable(1.0)

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32, name="tokens")])
    def f(tokens):
        return {"logits": tf.cast(tokens, tf.float32) * m.v}

    tf.saved_model.save(m, str(base / "no_input_ids"), signatures={"serving_default": f})
    tf.saved_model.save(m, str(base / "no_serving"), signatures={"other": f})
    corrupt = base / "corrupt"
    corrupt.mkdir()
    (corrupt / "saved_model.pb").write_bytes(b"\x00\xffnot a protobuf at all" * 10)
    return base


def test_missing_model(tmp_path, capsys):
    code, err = quantize(["--input_model", str(tmp_path / "nope"), "--output_dir", str(tmp_path / "out")], capsys)
    assert_one_line_error(code, err, "does not exist")
    assert not (tmp_path / "out").exists()


def test_not_a_saved_model(tmp_path, capsys):
    (tmp_path / "folder").mkdir()
    code, err = quantize(["--input_model", str(tmp_path / "folder"), "--output_dir", str(tmp_path / "out")], capsys)
    assert_one_line_error(code, err, "not a TensorFlow SavedModel")


@pytest.mark.parametrize("name,needle", [("no_input_ids", "no 'input_ids'"), ("no_serving", "the 'other' signature"),
                                         ("corrupt", "cannot load SavedModel")])
def test_bad_saved_models(odd_models, tmp_path, capsys, name, needle):
    code, err = quantize(["--input_model", str(odd_models / name), "--output_dir", str(tmp_path / "out")], capsys)
    assert_one_line_error(code, err, needle)
    assert not (tmp_path / "out").exists() and not leftovers(tmp_path)


def test_existing_output_needs_overwrite(tiny_gptj, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    code, err = quantize(["--input_model", tiny_gptj, "--output_dir", str(tmp_path / "out")], capsys)
    assert_one_line_error(code, err, "--overwrite")
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("content,needle", [("", "empty"), ("just a few words", "too short")])
def test_bad_calibration_text(tiny_gptj, tmp_path, capsys, content, needle):
    text = tmp_path / "calib.txt"
    text.write_text(content)
    code, err = quantize(["--input_model", tiny_gptj, "--output_dir", str(tmp_path / "out"),
                          "--calib_text", str(text), "--calib_samples", "2", "--seq_len", "16"], capsys)
    assert_one_line_error(code, err, needle)
    assert not (tmp_path / "out").exists() and not leftovers(tmp_path)


def test_bad_ranges_are_user_errors():
    from tfquant.calibrate import TensorRange, check_ranges
    from tfquant.errors import UserError

    with pytest.raises(UserError, match="non-finite"):
        check_ranges({"t": TensorRange(float("nan"), 1.0)})
    with pytest.raises(UserError, match="non-finite"):
        check_ranges({"t": TensorRange(0.0, float("inf"))})
    with pytest.raises(UserError, match="zero-width"):
        check_ranges({"t": TensorRange(0.5, 0.5)})


def test_interrupt_leaves_no_output(tiny_gptj, tmp_path, monkeypatch, capsys):
    """Ctrl-C during saving: the temporary folder is removed and the output never appears."""
    import tfquant.savedmodel as sm

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(sm, "save", interrupted)
    from tfquant.quantize import main

    code = run_cli(main, ["--input_model", tiny_gptj, "--output_dir", str(tmp_path / "out"),
                          "--calib_samples", "2", "--seq_len", "16", "--quiet"])
    assert code == 130
    assert not (tmp_path / "out").exists() and not leftovers(tmp_path)


def test_cli_module_runs_and_overwrites(tiny_gptj, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    cmd = [sys.executable, "-m", "tfquant.quantize", "--input_model", tiny_gptj, "--output_dir", str(out),
           "--calib_samples", "2", "--seq_len", "16", "--quiet", "--overwrite"]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "== tfquant summary ==" in res.stdout and "MatMul 13/13" in res.stdout
    assert sorted(os.listdir(out)) == ["converted_graph_def.pb", "extracted_graph_def.pb", "model", "report.json"]


def run_tool(script, *args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "tools", script), *args],
                          capture_output=True, text=True, timeout=300)


def test_pb_pbtxt_round_trip_is_lossless(int8_default, tmp_path):
    src = os.path.join(int8_default[0], "converted_graph_def.pb")
    res = run_tool("pb_to_pbtxt.py", src, str(tmp_path / "g.pbtxt"))
    assert res.returncode == 0, res.stderr
    res = run_tool("pb_to_pbtxt.py", str(tmp_path / "g.pbtxt"), str(tmp_path / "g.pb"))
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "g.pb").read_bytes() == open(src, "rb").read()
    res = run_tool("pb_to_pbtxt.py", str(tmp_path / "g.pbtxt"), str(tmp_path / "g.pb"))
    assert res.returncode == 2 and "--overwrite" in res.stderr


def test_pb_tool_rejects_corrupt_file(tmp_path):
    bad = tmp_path / "bad.pbtxt"
    bad.write_text("node { this is not protobuf text")
    res = run_tool("pb_to_pbtxt.py", str(bad))
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "bad.pb").exists()


def test_dump_graph_from_saved_model(tiny_gptj, tmp_path):
    res = run_tool("dump_graph_from_saved_model.py", "--input_model", tiny_gptj, "--output", str(tmp_path / "d.pb"))
    assert res.returncode == 0, res.stderr
    from tfquant.graphio import read_graph_def

    gd = read_graph_def(str(tmp_path / "d.pb"))
    assert sum(n.op == "MatMul" for n in gd.node) == 13
    res = run_tool("dump_graph_from_saved_model.py", "--input_model", str(tmp_path / "missing"), "--output", str(tmp_path / "e.pb"))
    assert res.returncode == 2 and "does not exist" in res.stderr


def test_every_shipped_recipe_resolves_to_a_valid_policy():
    import glob

    from tfquant.policy import QuantPolicy
    from tfquant.quantize import parse_args, resolve_options

    recipes = sorted(glob.glob(os.path.join(ROOT, "configs", "recipes", "*.yaml")))
    assert len(recipes) >= 13
    for path in recipes:
        recipe, _ = resolve_options(parse_args(["--output_dir", "unused", "--config", path]))
        policy = QuantPolicy.from_recipe(recipe)
        assert policy.output_format == "int8", path
    fast, _ = resolve_options(parse_args(["--output_dir", "unused", "--config", "fast"]))  # a preset by name
    assert (fast.outlier_threshold, fast.max_outlier_fraction, fast.token_outlier_threshold) == (6.0, 0.01, 0)
    w4, _ = resolve_options(parse_args(["--output_dir", "unused", "--config", "w4a16-g32-asym", "--group_size", "64"]))
    assert QuantPolicy.from_recipe(w4).weight_format_options == (
        ("granularity", "per_group"), ("symmetric", False), ("group_size", 64))  # the flag wins over the preset
