"""Shape sharing (tfquant/shapes.py + cse.py): symbolic shapes, and rewrites that keep outputs bit-identical.

Known answers on constructed graphs (a Tensordot as Keras writes it, broadcasting, unknown dims that must
not be merged), then the real exports: every signature of tiny GPT-J, GPT-2 and Mistral with a KV cache,
shared and merged, must give exactly the outputs of the graph as extracted, with fewer nodes.
"""
import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from test_cache_export import FAMILIES, exports  # noqa: E402,F401  (the module fixture)

from tfquant.cse import share_and_merge  # noqa: E402
from tfquant.graph import Graph  # noqa: E402
from tfquant.shapes import ShapeInference, add, as_int, const, div_exact, mul, sym  # noqa: E402


def test_polynomials():
    b, t = sym("b"), sym("t")
    bt = mul(b, t)
    assert mul(t, b) == bt and add(bt, const(0)) == bt
    assert div_exact(mul(bt, const(576)), const(576)) == bt
    assert div_exact(mul(bt, const(576)), mul(t, const(576))) == b
    assert div_exact(add(bt, const(1)), t) is None          # not a multiple of t
    assert div_exact(mul(b, const(6)), const(4)) is None    # 6b / 4 is not an integer polynomial
    assert as_int(add(const(2), const(3))) == 5 and as_int(bt) is None


def _graph_of(fn, *specs):
    concrete = tf.function(fn).get_concrete_function(*specs)
    return concrete, concrete.graph.as_graph_def()


def _run(graph_def, feeds, fetch):
    def imported():
        tf.compat.v1.import_graph_def(graph_def, name="")

    wrapped = tf.compat.v1.wrap_function(imported, [])
    f = wrapped.prune([wrapped.graph.get_tensor_by_name(k + ":0") for k in feeds],
                      [wrapped.graph.get_tensor_by_name(t) for t in fetch])
    return [o.numpy() for o in f(*[tf.constant(v) for v in feeds.values()])]


def two_dense_layers(x):
    """Two Keras-style Tensordots on [batch, time, 8] plus a rotary-like table built from the length."""
    w1 = tf.constant(np.random.RandomState(0).randn(8, 8).astype(np.float32))
    w2 = tf.constant(np.random.RandomState(1).randn(8, 4).astype(np.float32))
    h = tf.nn.relu(tf.tensordot(x, w1, axes=[[2], [0]]))
    y = tf.tensordot(h * 2.0, w2, axes=[[2], [0]])
    length = tf.shape(h)[1]
    table1 = tf.cos(tf.cast(tf.range(length), tf.float32))
    table2 = tf.cos(tf.cast(tf.range(tf.shape(y)[1]), tf.float32))  # the same values, another chain
    return tf.identity(y + table1[None, :, None] + table2[None, :, None], name="out")


def test_tensordot_dims_are_tracked_and_shared():
    _, gd = _graph_of(two_dense_layers, tf.TensorSpec([None, None, 8], tf.float32, name="x"))
    graph = Graph(gd)
    inference = ShapeInference(graph)
    out = inference.fact("out").shape
    bx, tx = inference.fact("x").shape[:2]
    assert out == (bx, tx, const(4)) and bx != tx
    ops_before = graph.op_histogram()
    report = share_and_merge(graph, {}, protected=["out", "x"])
    graph.prune(["out"], keep=["x"])
    after = graph.op_histogram()
    assert report["shape_tensors_shared"] > 0 and report["nodes_merged"] > 0
    assert after.get("Shape", 0) < ops_before["Shape"] and after.get("Range", 0) == 1 and after.get("Cos", 0) == 1
    for shape in [(1, 5, 8), (3, 2, 8)]:
        x = np.random.RandomState(2).randn(*shape).astype(np.float32)
        before, = _run(gd, {"x": x}, ["out:0"])
        now, = _run(graph.to_graph_def(), {"x": x}, ["out:0"])
        assert np.array_equal(before, now)


def test_unknown_dims_of_different_inputs_stay_apart():
    def fn(a, b):
        return tf.identity(tf.cast(tf.shape(a)[0] + tf.shape(b)[0], tf.float32) + tf.reduce_sum(a) + tf.reduce_sum(b),
                           name="out")

    _, gd = _graph_of(fn, tf.TensorSpec([None], tf.float32, name="a"), tf.TensorSpec([None], tf.float32, name="b"))
    graph = Graph(gd)
    share_and_merge(graph, {}, protected=["out", "a", "b"])
    graph.prune(["out"], keep=["a", "b"])
    assert graph.op_histogram()["Shape"] == 2  # Shape(a) and Shape(b) may differ at run time
    a, b = np.ones(3, np.float32), np.ones(5, np.float32)
    assert _run(graph.to_graph_def(), {"a": a, "b": b}, ["out:0"])[0] == 16.0


def test_broadcast_rules():
    def fn(x, y, z):
        return tf.identity(x + y, name="xy"), tf.identity(x + z, name="xz")

    _, gd = _graph_of(fn, tf.TensorSpec([None, 4], tf.float32, name="x"), tf.TensorSpec([1, 4], tf.float32, name="y"),
                      tf.TensorSpec([None, 1], tf.float32, name="z"))
    inference = ShapeInference(Graph(gd))
    x0 = inference.fact("x").shape[0]
    assert inference.fact("xy").shape == (x0, const(4))
    xz = inference.fact("xz").shape
    assert xz[1] == const(4) and xz[0] not in (x0, inference.fact("z").shape[0])  # either could be 1: fresh


def test_range_between_symbolic_bounds_and_concat_dims():
    """range(past, past + q) has q elements (a decode step's positions); a ConcatV2 knows an axis from any part
    that states it (the past sliced from a cache with unknown heads, beside the new keys with 3)."""
    def fn(past, new):
        start = tf.shape(past)[1]
        positions = tf.range(start, start + tf.shape(new)[1])
        keys = tf.concat([past, tf.reshape(new, [tf.shape(new)[0], 3, tf.shape(new)[1], 2])], axis=2)
        return tf.identity(positions, name="positions"), tf.identity(keys, name="keys")

    _, gd = _graph_of(fn, tf.TensorSpec([None, None, None, None], tf.float32, name="past"),
                      tf.TensorSpec([None, None, 6], tf.float32, name="new"))
    inference = ShapeInference(Graph(gd))
    past, new = inference.fact("past").shape, inference.fact("new").shape
    assert inference.fact("positions").shape == (new[1],)
    keys = inference.fact("keys").shape
    assert keys[1] == const(3) and keys[3] == const(2) and keys[2] == add(past[2], new[1])


def _each_signature_rewritten(path, rewrite):
    """Every signature of the export at ``path`` extracted, rewritten by ``rewrite(graph, captures, protected)``
    and pruned; yields (signature, rewrite's answer, nodes before, nodes after) once the outputs were checked
    equal bit for bit to the extracted graph's (prefill on 2 x 6 ids, decode one token after them)."""
    from tfquant import savedmodel
    from tfquant.feeds import make_feeds

    loaded = tf.saved_model.load(path)
    prefill = loaded.signatures["serving_default"]
    ids = np.random.RandomState(3).randint(0, 200, (2, 6)).astype(np.int32)
    pf = make_feeds(prefill.structured_input_signature[1], ids)
    past = prefill(**{k: tf.constant(v) for k, v in pf.items()})["past_key_values"].numpy()
    for signature in ("serving_default", "decode"):
        model = savedmodel.extract(path, signature)
        graph, captures = Graph(model.graph_def), dict(model.captures)
        outputs, inputs = list(model.outputs.values()), [n.split(":")[0] for n in model.inputs.values()]
        answer = rewrite(graph, captures, [o.split(":")[0] for o in outputs] + inputs)
        graph.prune(outputs, keep=inputs)
        specs = loaded.signatures[signature].structured_input_signature[1]
        feeds = pf if signature == "serving_default" else make_feeds(specs, ids[:, -1:], past)
        feeds = {k: tf.constant(v) for k, v in feeds.items()}
        before = savedmodel.build_function(model.graph_def, model, model.captures)(**feeds)
        after = savedmodel.build_function(graph.to_graph_def(), model,
                                          {k: v for k, v in captures.items() if k in graph.nodes})(**feeds)
        for key in before:
            assert np.array_equal(before[key].numpy(), after[key].numpy()), (signature, key)
        yield signature, answer, len(model.graph_def.node), graph


@pytest.mark.parametrize("family", FAMILIES)
def test_exports_stay_bit_identical(exports, family):  # noqa: F811
    def rewrite(graph, captures, protected):
        return share_and_merge(graph, captures, protected=protected)

    for signature, _, before, graph in _each_signature_rewritten(exports[family][0], rewrite):
        print(family, signature, before, "->", len(graph.nodes))
        assert len(graph.nodes) < 0.9 * before, (signature, len(graph.nodes))  # 2 layers only


def test_grouped_query_attention_reads_the_kv_heads_once(exports):  # noqa: F811
    """Tiny Mistral (4 query heads, 2 kv heads): both attention products of both layers read K and V
    themselves, no Tile of the cache is left, and the outputs are bit-identical."""
    from tfquant.cse import resource_shapes
    from tfquant.simplify import simplify_repeat_kv

    def rewrite(graph, captures, protected):
        return simplify_repeat_kv(graph, resource_shapes(captures))

    for signature, rewritten, _, graph in _each_signature_rewritten(exports["mistral"][0], rewrite):
        assert rewritten == 4, signature   # 2 layers x (scores, weighted values)
        assert not graph.by_op("Tile"), signature
