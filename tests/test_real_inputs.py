"""What users bring: Hugging Face's own SavedModel export, their tokenizer, their data, wheel installs."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT
from test_cli_errors import assert_one_line_error, leftovers, quantize

HF_GPTJ = dict(n_positions=128, n_embd=64, n_layer=2, n_head=4, rotary_dim=8)


def save_pretrained_gptj(directory, vocab_size, seed=0):
    """A tiny random GPT-J written the way users write one: save_pretrained(DIR, saved_model=True)."""
    import tensorflow as tf
    from transformers import GPTJConfig, TFGPTJForCausalLM
    from transformers.modeling_tf_utils import keras  # the Keras 2 transformers uses (tf.keras may not import)

    keras.utils.set_random_seed(seed)

    model = TFGPTJForCausalLM(GPTJConfig(vocab_size=vocab_size, **HF_GPTJ))
    model(tf.constant([[1, 2, 3]], tf.int32))
    model.save_pretrained(str(directory), saved_model=True)
    return str(directory)


def train_tokenizer(vocab_size):
    """A byte-level BPE tokenizer with ``vocab_size`` ids, trained on the shipped calibration text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from tfquant.data import default_calibration_text_path

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    with open(default_calibration_text_path(), encoding="utf-8") as fh:
        tok.train_from_iterator([fh.read()[:100000]], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok)


@pytest.fixture(scope="module")
def hf_gptj(tmp_path_factory):
    return save_pretrained_gptj(tmp_path_factory.mktemp("hf") / "gptj", vocab_size=50400)


@pytest.fixture(scope="module")
def hf_gptj_converted(tmp_path_factory, hf_gptj):
    from tfquant.convert import ConvertSavedModel

    out = str(tmp_path_factory.mktemp("hfq") / "q")
    report = ConvertSavedModel(hf_gptj, out, calib_samples=4, seq_len=32, progress=False)
    return out, report


def _signature(path, name="serving_default"):
    import tensorflow as tf

    fn = tf.saved_model.load(path).signatures[name]
    return fn, fn.structured_input_signature[1], fn.structured_outputs


def _random_feeds(specs, batch=3, length=20, vocab=50400, seed=1):
    import tensorflow as tf

    ids = np.random.RandomState(seed).randint(0, vocab, size=(batch, length))
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    return {k: tf.constant(feeds[k], dtype=spec.dtype) for k, spec in specs.items()}


# ----- the Hugging Face export ------------------------------------------------------------------
def test_hf_export_quantizes_from_its_parent_folder_and_keeps_the_signature(hf_gptj, hf_gptj_converted):
    out, report = hf_gptj_converted
    assert report["saved_model"] == os.path.join(hf_gptj, "saved_model", "1")
    assert report["inputs"] == {"attention_mask": "int32", "input_ids": "int32", "token_type_ids": "int32"}
    assert report["outputs"] == ["logits", "past_key_values"]
    assert report["calibration"]["windows"] == 4 and report["calibration"]["tokens"] == 128
    assert report["lowered"]["count"] == 13  # 6 per layer + lm_head

    ref_fn, ref_in, ref_out = _signature(os.path.join(hf_gptj, "saved_model", "1"))
    got_fn, got_in, got_out = _signature(os.path.join(out, "model"))
    assert {k: (v.dtype, v.shape.as_list()) for k, v in got_in.items()} == \
        {k: (v.dtype, v.shape.as_list()) for k, v in ref_in.items()}
    assert {k: (v.dtype, v.shape.as_list()) for k, v in got_out.items()} == \
        {k: (v.dtype, v.shape.as_list()) for k, v in ref_out.items()}
    assert ref_out["past_key_values"].shape.as_list() == [2, 2, None, 4, None, 16]

    feeds = _random_feeds(ref_in)
    ref, got = ref_fn(**feeds), got_fn(**feeds)
    assert (ref["logits"].numpy().argmax(-1) == got["logits"].numpy().argmax(-1)).mean() >= 0.9
    assert got["past_key_values"].shape == ref["past_key_values"].shape
    corr = np.corrcoef(ref["past_key_values"].numpy().ravel(), got["past_key_values"].numpy().ravel())[0, 1]
    assert corr >= 0.99


def test_other_signature_by_name(hf_gptj, tmp_path):
    """HF's export also has int64_serving: --signature converts it, under its own name, with int64 inputs."""
    code = subprocess.run([sys.executable, "-m", "tfquant.quantize", "--input_model", hf_gptj, "--output_dir",
                           str(tmp_path / "q"), "--signature", "int64_serving", "--calib_samples", "2", "--seq_len", "16",
                           "--quiet"], env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True)
    assert code.returncode == 0, code.stderr
    fn, specs, _ = _signature(str(tmp_path / "q" / "model"), "int64_serving")
    assert {k: v.dtype.name for k, v in specs.items()} == {k: "int64" for k in specs}
    assert fn(**_random_feeds(specs))["logits"].shape == (3, 20, 50400)


def test_benchmark_runs_the_hf_export_and_its_conversion(hf_gptj, hf_gptj_converted, tmp_path, monkeypatch, capsys):
    from tfquant import benchmark as bench
    from tfquant.errors import run_cli

    monkeypatch.setenv("TFQUANT_CACHE", str(tmp_path / "cache"))
    out_json = tmp_path / "r.json"
    code = run_cli(bench.main, ["--input_model", hf_gptj, "--quantized_model", hf_gptj_converted[0], "--samples", "3",
                                "--iters", "1", "--warmup", "0", "--seq_len", "16", "--batch_size", "1",
                                "--gen_tokens", "2", "--no_memory", "--quiet", "--output", str(out_json)])
    assert code == 0, capsys.readouterr().err
    models = json.loads(out_json.read_text())["models"]
    assert [m["accuracy"]["n"] for m in models] == [3, 3]
    assert models[0]["max_positions"] == 128  # read from config.json beside saved_model/


# ----- finding the SavedModel (no TF) ------------------------------------------------------------
def _fake_saved_model(path):
    os.makedirs(path)
    open(os.path.join(path, "saved_model.pb"), "wb").close()


def test_locate_versions_and_ambiguous_folders(tmp_path):
    from tfquant.errors import UserError
    from tfquant.modeldir import locate

    for v in ("1", "2", "10"):
        _fake_saved_model(tmp_path / "hf" / "saved_model" / v)
    found = locate(str(tmp_path / "hf"))
    assert found.saved_model == str(tmp_path / "hf" / "saved_model" / "10") and "1, 2, 10" in found.note
    assert found.search_path == (found.saved_model, str(tmp_path / "hf" / "saved_model"), str(tmp_path / "hf"))
    _fake_saved_model(tmp_path / "one" / "exported")
    assert locate(str(tmp_path / "one")).saved_model == str(tmp_path / "one" / "exported")
    _fake_saved_model(tmp_path / "two" / "a")
    _fake_saved_model(tmp_path / "two" / "b")
    with pytest.raises(UserError, match=r"holds several SavedModels \(a, b\)"):
        locate(str(tmp_path / "two"))


def test_several_saved_models_is_one_line(tmp_path, capsys):
    _fake_saved_model(tmp_path / "two" / "a")
    _fake_saved_model(tmp_path / "two" / "b")
    code, err = quantize(["--input_model", str(tmp_path / "two"), "--output_dir", str(tmp_path / "out")], capsys)
    assert_one_line_error(code, err, "holds several SavedModels (a, b): pass the one to use")
    assert not (tmp_path / "out").exists()


# ----- vocabulary and tokenizer ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_vocab_model(tmp_path_factory):
    """A GPT-J with 777 ids (smaller than GPT-2 BPE's), its own tokenizer elsewhere."""
    base = tmp_path_factory.mktemp("vocab")
    model = save_pretrained_gptj(base / "gptj777", vocab_size=777)
    tok_dir = str(base / "tok")
    train_tokenizer(700).save_pretrained(tok_dir)
    return model, tok_dir


def test_vocabulary_mismatch_is_one_line_and_writes_nothing(small_vocab_model, tmp_path, capsys):
    model, _ = small_vocab_model
    code, err = quantize(["--input_model", model, "--output_dir", str(tmp_path / "out")], capsys)
    assert_one_line_error(code, err, "vocabulary has 777 entries")
    assert "--tokenizer" in err and "up to 50" in err
    assert not (tmp_path / "out").exists() and not leftovers(tmp_path)


def test_tokenizer_flag_and_own_tokenizer(small_vocab_model, tmp_path, capsys):
    from tfquant.convert import ConvertSavedModel

    model, tok_dir = small_vocab_model
    report = ConvertSavedModel(model, str(tmp_path / "q"), tokenizer=tok_dir, calib_samples=2, seq_len=16, progress=False)
    assert report["calibration"]["tokenizer"] == tok_dir
    # the tokenizer travels with the converted model, so the benchmark finds it there
    assert os.path.isfile(tmp_path / "q" / "model" / "tokenizer" / "tokenizer.json")
    # saved beside the model (tokenizer.save_pretrained(DIR) next to model.save_pretrained(DIR)) it is found alone
    with_tok = tmp_path / "with_tok"
    shutil.copytree(model, with_tok)
    for name in os.listdir(tok_dir):
        shutil.copy(os.path.join(tok_dir, name), with_tok / name)
    report = ConvertSavedModel(str(with_tok), str(tmp_path / "q2"), calib_samples=2, seq_len=16, progress=False)
    assert report["calibration"]["tokenizer"] == str(with_tok)
    code, err = quantize(["--input_model", model, "--tokenizer", str(tmp_path / "missing"), "--output_dir",
                          str(tmp_path / "q3")], capsys)
    assert_one_line_error(code, err, "tokenizer not found")
    (tmp_path / "junk.json").write_text("{not json")
    code, err = quantize(["--input_model", model, "--tokenizer", str(tmp_path / "junk.json"), "--output_dir",
                          str(tmp_path / "q3")], capsys)
    assert_one_line_error(code, err, "cannot load a tokenizer from")
    assert not (tmp_path / "q3").exists()


def test_benchmark_vocabulary_mismatch(small_vocab_model, tmp_path, capsys):
    from tfquant import benchmark as bench
    from tfquant.errors import run_cli

    code = run_cli(bench.main, ["--input_model", small_vocab_model[0], "--no_memory", "--output", str(tmp_path / "r.json")])
    assert_one_line_error(code, capsys.readouterr().err.strip(), "vocabulary has 777 entries")
    assert not (tmp_path / "r.json").exists()


# ----- calibration data ---------------------------------------------------------------------------
def test_calibration_sources(tmp_path):
    from tfquant import data
    from tfquant.errors import UserError

    (tmp_path / "c.jsonl").write_text('{"text": "first passage"}\n\n{"text": "second"}\n')
    text, source = data.calibration_text(str(tmp_path / "c.jsonl"))
    assert text == "first passage\n\nsecond" and "jsonl" in source
    (tmp_path / "c.txt").write_text("plain text")
    assert data.calibration_text(str(tmp_path / "c.txt"))[0] == "plain text"
    assert "Northanger" in data.calibration_text("austen")[1]
    lam = tmp_path / "lambada"
    lam.mkdir()
    for split in ("test", "validation"):
        (lam / f"{split}.jsonl").write_text(json.dumps({"text": f"a {split} passage ends here"}) + "\n")
    text, source = data.calibration_text("lambada", str(lam))
    assert text == "a validation passage ends here"  # calibration prefers a split that is not scored
    for bad, needle in [("nope", "unknown calibration dataset 'nope'"), ("lambada", "needs a local copy"),
                        (str(tmp_path / "missing.jsonl"), "text file not found")]:
        with pytest.raises(UserError, match=needle):
            data.calibration_text(bad)
    (tmp_path / "empty.jsonl").write_text('{"text": ""}\n')
    with pytest.raises(UserError, match="no non-empty 'text'"):
        data.calibration_text(str(tmp_path / "empty.jsonl"))
    (tmp_path / "bad.jsonl").write_text('{"body": "x"}\n')
    with pytest.raises(UserError, match="needs a string 'text' field"):
        data.calibration_text(str(tmp_path / "bad.jsonl"))


def test_calib_dataset_end_to_end(tiny_gptj, tmp_path, capsys):
    from tfquant.data import default_calibration_text_path

    with open(default_calibration_text_path(), encoding="utf-8") as fh:
        paragraphs = [p for p in fh.read().split("\n\n") if len(p) > 200][:40]
    path = tmp_path / "mine.jsonl"
    path.write_text("".join(json.dumps({"text": p}) + "\n" for p in paragraphs))
    code, err = quantize(["--input_model", tiny_gptj, "--output_dir", str(tmp_path / "q"), "--calib_dataset", str(path),
                          "--calib_samples", "3", "--seq_len", "32", "--quiet"], capsys)
    assert code == 0, err
    calib = json.loads((tmp_path / "q" / "report.json").read_text())["calibration"]
    assert calib["data"].startswith(str(path)) and calib["windows"] == 3 and calib["tokens"] == 96
    code, err = quantize(["--input_model", tiny_gptj, "--output_dir", str(tmp_path / "q2"), "--calib_dataset", "moby"],
                         capsys)
    assert_one_line_error(code, err, "unknown calibration dataset 'moby'")


def test_seq_len_past_the_positions(tiny_gptj, hf_gptj, tmp_path, capsys):
    code, err = quantize(["--input_model", tiny_gptj, "--output_dir", str(tmp_path / "q"), "--seq_len", "300"], capsys)
    assert_one_line_error(code, err, "--seq_len 300 is longer than the model's 256 positions")
    # no config file anywhere: the model's own error, turned into one line
    bare = tmp_path / "bare"
    shutil.copytree(os.path.join(hf_gptj, "saved_model", "1"), bare)
    code, err = quantize(["--input_model", str(bare), "--output_dir", str(tmp_path / "q"), "--seq_len", "200",
                          "--calib_samples", "1", "--quiet"], capsys)
    assert_one_line_error(code, err, "is --seq_len longer than its positions")
    assert not (tmp_path / "q").exists() and not leftovers(tmp_path)


def test_config_that_is_not_utf8_yaml(tmp_path, capsys):
    (tmp_path / "r.yaml").write_bytes(b"\xff\xfe\x00quantization")
    code, err = quantize(["--config", str(tmp_path / "r.yaml"), "--output_dir", str(tmp_path / "q")], capsys)
    assert_one_line_error(code, err, "is not UTF-8 text")


def test_signature_input_tfquant_cannot_feed(tmp_path, capsys):
    import tensorflow as tf

    m = tf.Module()
    m.v = tf.Variable(1.0)

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32, name="input_ids"),
                                  tf.TensorSpec([None, None, 4], tf.float32, name="pixel_values")])
    def f(input_ids, pixel_values):
        return {"logits": tf.cast(input_ids, tf.float32)[..., None] * m.v + tf.reduce_sum(pixel_values)}

    tf.saved_model.save(m, str(tmp_path / "m"), signatures={"serving_default": f})
    code, err = quantize(["--input_model", str(tmp_path / "m"), "--output_dir", str(tmp_path / "q")], capsys)
    assert_one_line_error(code, err, "input(s) pixel_values that tfquant does not know how to feed")
    assert "tfquant feeds input_ids, attention_mask, token_type_ids, position_ids" in err


def test_feeds_for_every_known_input():
    import tensorflow as tf

    from tfquant.feeds import make_feeds

    specs = {n: tf.TensorSpec([None, None], tf.int64) for n in
             ("input_ids", "attention_mask", "token_type_ids", "position_ids")}
    feeds = make_feeds(specs, np.array([[5, 6, 7], [8, 9, 10]], np.int32))
    assert all(v.dtype == np.int64 for v in feeds.values())
    assert feeds["attention_mask"].tolist() == [[1, 1, 1]] * 2 and feeds["token_type_ids"].tolist() == [[0, 0, 0]] * 2
    assert feeds["position_ids"].tolist() == [[0, 1, 2]] * 2


# ----- installed as a wheel ----------------------------------------------------------------------
def test_wheel_install_runs_the_default_job_from_another_folder(tmp_path):
    """pip install of the built wheel (not editable), then the default job, from a folder with no checkout."""
    wheels, target, work = tmp_path / "wheels", tmp_path / "site", tmp_path / "elsewhere"
    work.mkdir()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(pip + ["wheel", "--no-deps", "-w", str(wheels), ROOT], check=True, cwd=str(tmp_path),
                   capture_output=True)
    wheel = next(wheels.glob("tfquant-*.whl"))
    subprocess.run(pip + ["install", "--no-deps", "--target", str(target), str(wheel)], check=True, capture_output=True)
    env = dict(os.environ, PYTHONPATH=str(target), TFQUANT_CACHE=str(tmp_path / "cache"))
    where = subprocess.run([sys.executable, "-c", "import tfquant; print(tfquant.__file__)"], env=env, cwd=str(work),
                           capture_output=True, text=True, check=True).stdout.strip()
    assert where.startswith(str(target))  # the installed copy, not the checkout
    proc = subprocess.run([sys.executable, "-m", "tfquant.quantize", "--output_dir", "out", "--calib_samples", "2",
                           "--seq_len", "16", "--quiet"], env=env, cwd=str(work), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (work / "out" / "model" / "saved_model.pb").is_file()
    report = json.loads((work / "out" / "report.json").read_text())
    assert report["lowered"]["count"] == 13
