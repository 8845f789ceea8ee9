"""tfquant.torch_bin: ``torch.save`` checkpoints read in numpy, without torch and without running pickled code.

The files are written by real torch (pinned in requirements.txt, a test dependency only: tfquant never
imports it), except the hostile ones, which are pickled here by hand the way an attacker would.
"""
from __future__ import annotations

import collections
import json
import math
import os
import pickle
import subprocess
import sys
import zipfile
from typing import NamedTuple

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import ROOT, TINY_CONFIG, run_logits  # noqa: E402
from test_models import tf_gptj_to_pt_state  # noqa: E402  (HF PyTorch names of a TF GPT-J's weights)

from tfquant.errors import UserError  # noqa: E402
from tfquant.models import load_gptj_checkpoint, load_yaml_config, prepare_from_checkpoint  # noqa: E402
from tfquant.torch_bin import read_torch_bin  # noqa: E402

PREPARE = os.path.join(ROOT, "tools", "prepare_model.py")
TINY_FIELDS = load_yaml_config(TINY_CONFIG)["gptj"]  # the session fixture tiny_gptj's GPT-J config


# --------------------------------------------------------------------------- known answers

def _as_numpy(t):
    """What read_torch_bin must return for tensor ``t`` (numpy has no bfloat16: widened to float32)."""
    return t.float().numpy() if t.dtype == torch.bfloat16 else t.numpy()


def test_known_answers(tmp_path):
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(4, 6, generator=gen)
    tensors = {
        "fp32": torch.randn(3, 5, generator=gen),
        "fp16": torch.randn(3, 5, generator=gen).half(),
        "bf16": torch.randn(3, 5, generator=gen).bfloat16(),
        "fp64": torch.randn(2, generator=gen).double(),
        "int64": torch.arange(-3, 9),
        "int8": torch.tensor([-128, 0, 127], dtype=torch.int8),
        "bool": torch.tensor([True, False, True]),
        "base": base,
        "transposed": base.t(),  # same storage, strides (1, 6): must come back as the transpose, copied
        "view_with_offset": base[1:3, 2:],  # same storage again, starting at element 8
        "bf16_transposed": torch.randn(3, 2, generator=gen).bfloat16().t(),
        "scalar": torch.tensor(2.5),
        "bf16_scalar": torch.tensor(-0.3, dtype=torch.bfloat16),
        "empty": torch.zeros(0, 3),
    }
    assert tensors["view_with_offset"].storage_offset() == 8 and not tensors["transposed"].is_contiguous()
    path = tmp_path / "known.bin"
    torch.save(tensors, path)
    with zipfile.ZipFile(path) as zf:  # base, transposed and view_with_offset share one stored storage
        assert sum("/data/" in n for n in zf.namelist()) == len(tensors) - 2

    got = read_torch_bin(str(path))
    assert sorted(got) == sorted(tensors)
    for name, t in tensors.items():
        want = _as_numpy(t)
        assert got[name].dtype == want.dtype and got[name].shape == want.shape, name
        np.testing.assert_array_equal(got[name], want, err_msg=name)


def test_reads_without_torch(tmp_path):
    """The reader never imports torch: it works in a process where torch cannot be imported."""
    path = tmp_path / "w.bin"
    torch.save({"w": torch.arange(6.0).reshape(2, 3).t()}, path)
    code = ("import sys; sys.modules['torch'] = None\n"  # any 'import torch' now raises ImportError
            "from tfquant.torch_bin import read_torch_bin\n"
            f"print(read_torch_bin({str(path)!r})['w'].tolist())")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "[[0.0, 3.0], [1.0, 4.0], [2.0, 5.0]]"


# --------------------------------------------------------------------------- the tiny GPT-J as a .bin checkpoint

@pytest.fixture(scope="module")
def tiny_torch_state(tiny_gptj):
    """The session's tiny GPT-J as a torch state dict, with the buffers real GPT-J checkpoints carry."""
    import tensorflow as tf

    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in tf_gptj_to_pt_state(tf.saved_model.load(tiny_gptj)).items()}
    n_pos = TINY_FIELDS["n_positions"]
    state["transformer.h.0.attn.bias"] = torch.tril(torch.ones(n_pos, n_pos, dtype=torch.bool)).view(1, 1, n_pos, n_pos)
    state["transformer.h.0.attn.masked_bias"] = torch.tensor(-1e9)
    return state


def _write_tiny_config(folder):
    from transformers import GPTJConfig

    os.makedirs(folder, exist_ok=True)
    GPTJConfig(**TINY_FIELDS).to_json_file(os.path.join(folder, "config.json"))


def _write_bin_checkpoint(folder, state, shards=1):
    """config.json plus pytorch_model.bin, or HF-style shards named by pytorch_model.bin.index.json."""
    _write_tiny_config(folder)
    if shards == 1:
        torch.save(state, os.path.join(folder, "pytorch_model.bin"))
        return
    keys, weight_map = sorted(state), {}
    for n in range(shards):
        name = f"pytorch_model-{n + 1:05d}-of-{shards:05d}.bin"
        part = {k: state[k] for k in keys[n::shards]}
        torch.save(part, os.path.join(folder, name))
        weight_map.update(dict.fromkeys(part, name))
    with open(os.path.join(folder, "pytorch_model.bin.index.json"), "w") as fh:
        json.dump({"metadata": {}, "weight_map": weight_map}, fh)


def test_sharded_bin_checkpoint_converts(tmp_path, tiny_gptj, tiny_torch_state, random_batch):
    _write_bin_checkpoint(tmp_path / "ckpt", tiny_torch_state, shards=3)
    out = prepare_from_checkpoint(str(tmp_path / "ckpt"), str(tmp_path / "model"))
    np.testing.assert_array_equal(run_logits(out, random_batch), run_logits(tiny_gptj, random_batch))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_bin_checkpoint(tmp_path, tiny_torch_state, dtype):
    """fp16 / bf16 weights load into the TF model as exactly their float32 values."""
    half = {k: v.to(getattr(torch, dtype)) if v.is_floating_point() else v for k, v in tiny_torch_state.items()}
    _write_bin_checkpoint(tmp_path / "ckpt", half)
    loaded = tf_gptj_to_pt_state(load_gptj_checkpoint(str(tmp_path / "ckpt")))
    for name, value in loaded.items():
        assert value.dtype == np.float32, name
        np.testing.assert_array_equal(value, half[name].float().numpy(), err_msg=name)


# --------------------------------------------------------------------------- hostile and broken files

class _Call(NamedTuple):
    """Pickles as the call ``func(*args)``: how torch writes a tensor, and how a hostile file runs code."""
    func: object
    args: tuple

    def __reduce__(self):
        return (self.func, self.args)


class _StorageRef(NamedTuple):
    storage_class: type
    key: str
    numel: int


def _write_zip_bin(path, obj, blobs=None):
    """A torch-format zip whose data.pkl is ``obj``, pickled as torch does (storages as persistent ids)."""
    class TorchStylePickler(pickle.Pickler):
        def persistent_id(self, o):
            if isinstance(o, _StorageRef):
                return ("storage", o.storage_class, o.key, "cpu", o.numel)
            return None

    with zipfile.ZipFile(path, "w") as zf:
        with zf.open("archive/data.pkl", "w") as fh:
            TorchStylePickler(fh, protocol=2).dump(obj)
        zf.writestr("archive/byteorder", "little")
        for key, blob in (blobs or {}).items():
            zf.writestr(f"archive/data/{key}", blob)
        zf.writestr("archive/version", "3\n")


# protocol 2 spells builtins as __builtin__ (Python 2's name), and os.system is posix.system on Linux
@pytest.mark.parametrize("func, expect", [(os.system, f"'{os.system.__module__}.system'"),
                                          (exec, "'__builtin__.exec'")])
def test_code_in_the_pickle_is_refused_not_run(tmp_path, func, expect):
    marker = tmp_path / "pwned"
    payload = f"touch {marker}" if func is os.system else f"open({str(marker)!r}, 'w').close()"
    path = tmp_path / "evil.bin"
    _write_zip_bin(path, {"w": _Call(func, (payload,))})
    with zipfile.ZipFile(path) as zf:  # the payload is live: plain pickle.loads runs it
        pickle.loads(zf.read("archive/data.pkl"))
    assert marker.exists()
    marker.unlink()

    with pytest.raises(UserError, match=f"refusing to load global {expect}") as err:
        read_torch_bin(str(path))
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    assert not marker.exists()


def _legacy_file(path):
    torch.save({"w": torch.ones(2)}, path, _use_new_zipfile_serialization=False)


def _truncated_file(path):
    torch.save({"w": torch.ones(1000)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _tensor_record(storage, size):
    """A contiguous 1-D tensor over ``storage`` as torch pickles it."""
    return _Call(torch._utils._rebuild_tensor_v2, (storage, 0, (size,), (1,), False, collections.OrderedDict()))


def _storage_overrun_file(path):
    """A tensor of 9 elements over a storage of 4: as_strided would read past the storage."""
    tensor = _tensor_record(_StorageRef(torch.FloatStorage, "0", 4), 9)
    _write_zip_bin(path, {"w": tensor}, blobs={"0": np.zeros(4, "<f4").tobytes()})


def _corrupt_pickle_file(path):
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", b"\x80\x02}q\x00(X\x01\x00")  # cut off inside the dict


def _missing_storage_file(path):
    _write_zip_bin(path, {"w": _tensor_record(_StorageRef(torch.FloatStorage, "7", 4), 4)})


@pytest.mark.parametrize("make, expect", [
    (_legacy_file, "legacy torch < 1.6 (non-zip) checkpoint"),
    (_truncated_file, "truncated or corrupt"),
    (lambda p: p.write_bytes(b"hello, not a checkpoint"), "not a PyTorch checkpoint"),
    (lambda p: torch.save({"f": math.sqrt}, p), "refusing to load global 'math.sqrt'"),
    (lambda p: torch.save(torch.nn.Linear(2, 2), p), "refusing to load global 'torch.nn.modules.linear.Linear'"),
    (lambda p: torch.save({"w": torch.ones(2), "step": 3}, p), "entry 'step' is of type int, not a tensor"),
    (lambda p: torch.save([torch.ones(2)], p), "holds an object of type list, not a state dict"),
    (_storage_overrun_file, "reads past the end of storage 0"),
    (_corrupt_pickle_file, "data.pkl is corrupt"),
    (_missing_storage_file, "names storage 7, which the archive lacks"),
], ids=["legacy", "truncated", "not_zip", "function", "module", "non_tensor", "list", "overrun", "corrupt_pickle",
        "missing_storage"])
def test_broken_files_are_user_errors(tmp_path, make, expect):
    path = tmp_path / "pytorch_model.bin"
    make(path)
    with pytest.raises(UserError) as err:
        read_torch_bin(str(path))
    msg = str(err.value)
    assert expect in msg and msg.startswith(str(path)) and "\n" not in msg, msg


def test_cli_refuses_hostile_checkpoint(tmp_path):
    ckpt, out, marker = tmp_path / "ckpt", tmp_path / "out", tmp_path / "pwned"
    _write_tiny_config(ckpt)
    _write_zip_bin(ckpt / "pytorch_model.bin", {"w": _Call(os.system, (f"touch {marker}",))})
    res = subprocess.run([sys.executable, PREPARE, "--checkpoint", str(ckpt), "--output_dir", str(out)],
                         cwd=str(tmp_path), capture_output=True, text=True, timeout=120)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2, res.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "refusing to load global" in lines[0], lines
    assert not out.exists() and not marker.exists()
