"""Consts that several signatures hold alike are stored once (tfquant/sharedconst.py), exactly."""
from __future__ import annotations

import numpy as np
import pytest


def _graph(extra: float):
    import tensorflow as tf

    g = tf.Graph()
    with g.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 64], name="x")
        shared = tf.constant(np.random.RandomState(0).randn(64, 64).astype(np.float32), name="shared_weight")
        own = tf.constant(np.full((64,), extra, np.float32), name="own_bias")  # differs between the graphs
        small = tf.constant(np.float32(2.0), name="small")  # under MIN_BYTES: stays where it is
        y = tf.matmul(x, shared) + own
        tf.identity(y * small, name="y")
        tf.identity(tf.reduce_sum(shared, 0), name="z")
    return g.as_graph_def()


def _run(graph_def, x):
    import tensorflow as tf
    from tensorflow.python.eager import wrap_function

    fn = wrap_function.function_from_graph_def(graph_def, ["x:0"], ["y:0", "z:0"])
    return [t.numpy() for t in fn(tf.constant(x))]


def test_shared_consts_move_into_one_function_and_values_stay():
    from tfquant.sharedconst import CALL_NODE, FUNCTION_NAME, share_constants

    graphs = [_graph(1.0), _graph(3.0)]
    new, report = share_constants(graphs)
    assert report["constants"] == 1 and report["bytes"] == graphs[0].node[1].attr["value"].tensor.ByteSize()
    assert report["function"].startswith(FUNCTION_NAME + "_")
    x = np.random.RandomState(1).randn(5, 64).astype(np.float32)
    for before, after in zip(graphs, new):
        names = {n.name: n for n in after.node}
        assert "shared_weight" not in names and names["own_bias"].op == "Const" and names["small"].op == "Const"
        assert names[CALL_NODE].op == "PartitionedCall"
        assert [f.signature.name for f in after.library.function] == [report["function"]]
        for a, b in zip(_run(before, x), _run(after, x)):
            assert np.array_equal(a, b)
    again, _ = share_constants([_graph(1.0), _graph(3.0)])
    assert [g.SerializeToString(deterministic=True) for g in again] == \
           [g.SerializeToString(deterministic=True) for g in new]


def test_one_graph_or_nothing_in_common_is_left_alone():
    from tfquant.sharedconst import share_constants

    g = _graph(1.0)
    assert share_constants([g])[1]["constants"] == 0
    other = _graph(1.0)
    for node in other.node:
        if node.name == "shared_weight":
            node.name = "another_weight"
    for node in other.node:
        node.input[:] = ["another_weight" if i == "shared_weight" else i for i in node.input]
    new, report = share_constants([g, other])
    assert report["constants"] == 1  # own_bias: same name, same value in both
    assert all(any(n.name == "another_weight" and n.op == "Const" for n in gd.node) for gd in new[1:])


@pytest.fixture(scope="module")
def two_signature_int8(tmp_path_factory):
    """The tiny Mistral with prefill + decode converted twice: as tfquant saves it, and with nothing shared."""
    from tfquant import sharedconst
    from tfquant.assets import config_path
    from tfquant.convert import ConvertSavedModel
    from tfquant.models import prepare_from_config

    root = tmp_path_factory.mktemp("sharedconst")
    src = prepare_from_config(config_path("mistral-tiny.yaml"), str(root / "fp32"), overwrite=True, cache=True)
    report = ConvertSavedModel(src, str(root / "shared"), progress=False)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sharedconst, "MIN_BYTES", 2**62)
        ConvertSavedModel(src, str(root / "unshared"), progress=False)
    return str(root / "shared"), str(root / "unshared"), report


def _library(model_dir):
    import os

    from tensorflow.core.protobuf import saved_model_pb2

    sm = saved_model_pb2.SavedModel()
    with open(os.path.join(model_dir, "model", "saved_model.pb"), "rb") as fh:
        sm.ParseFromString(fh.read())
    return sm.meta_graphs[0].graph_def.library.function


def test_prefill_and_decode_store_their_common_consts_once(two_signature_int8):
    """The saved signatures hold no large Const twice, the model is smaller, and every output of both
    signatures equals the unshared model's bit for bit."""
    import os

    import tensorflow as tf

    from tfquant.fsutil import dir_size_bytes
    from tfquant.sharedconst import FUNCTION_NAME, MIN_BYTES

    shared, unshared, report = two_signature_int8
    assert report["shared_constants"]["constants"] > 0
    library = _library(shared)
    assert sum(f.signature.name.startswith(FUNCTION_NAME) for f in library) == 1
    assert not any(f.signature.name.startswith(FUNCTION_NAME) for f in _library(unshared))
    held = {}
    for f in library:
        if not f.signature.name.startswith("__inference_pruned"):  # the signatures' graphs (not TF's save/restore)
            continue
        for node in f.node_def:
            if node.op == "Const" and node.attr["value"].tensor.ByteSize() >= MIN_BYTES:
                held.setdefault(node.attr["value"].SerializeToString(deterministic=True), set()).add(f.signature.name)
    assert all(len(fns) == 1 for fns in held.values())
    saved = dir_size_bytes(os.path.join(unshared, "model")) - dir_size_bytes(os.path.join(shared, "model"))
    assert saved > 0.5 * report["shared_constants"]["bytes"], saved

    ids = tf.constant(np.arange(3, 19, dtype=np.int32)[None])
    feed = {"input_ids": ids, "attention_mask": tf.ones_like(ids)}
    outs = []
    for folder in (shared, unshared):
        sigs = tf.saved_model.load(os.path.join(folder, "model")).signatures
        prefill = sigs["serving_default"](**feed)
        step = sigs["decode"](input_ids=ids[:, :1], attention_mask=tf.ones((1, 17), tf.int32),
                              past_key_values=prefill["past_key_values"])
        outs.append([t.numpy() for t in (prefill["logits"], prefill["past_key_values"], step["logits"],
                                         step["past_key_values"])])
    for a, b in zip(*outs):
        assert np.array_equal(a, b)
