"""GPT-2 and OPT as users export them (save_pretrained(saved_model=True)): every weight MatMul int8,
the tied embedding stored once in int8.  Tiny random models with the GPT-2 BPE vocabulary (50257),
so the embedding dominates the size as it does in the real small models."""
import os

import numpy as np
import pytest
from conftest import run_logits

VOCAB = 50257
D_MODEL = 64
FAMILIES = ("gpt2", "opt")
# The lm_head of each family, as it appears in the extracted graph.
LM_HEAD = {"gpt2": "StatefulPartitionedCall/MatMul",                  # BatchMatMulV2(h, ExpandDims(wte), adj_y)
           "opt": "StatefulPartitionedCall/embed_tokens/MatMul"}      # MatMul(h, embed_tokens, transpose_b)
# Weight MatMuls per family: GPT-2 c_attn, c_proj, c_fc, mlp c_proj; OPT q, k, v, out_proj, fc1, fc2; 2 layers + lm_head.
WEIGHT_MATMULS = {"gpt2": 2 * 4 + 1, "opt": 2 * 6 + 1}
MAX_SIZE_RATIO = {"gpt2": 0.35, "opt": 0.30}  # measured 0.27 and 0.25
INT8_KERNEL = "_MklQuantizedMatMulWithBiasAndDequantize"


def _export(kind: str, out: str) -> str:
    import tensorflow as tf
    from transformers import GPT2Config, OPTConfig, TFGPT2LMHeadModel, TFOPTForCausalLM
    from transformers.modeling_tf_utils import keras  # tf.keras fails once transformers set TF_USE_LEGACY_KERAS

    keras.utils.set_random_seed(0)

    if kind == "gpt2":
        model = TFGPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_positions=128, n_embd=D_MODEL, n_layer=2, n_head=4))
    else:
        model = TFOPTForCausalLM(OPTConfig(vocab_size=VOCAB, max_position_embeddings=128, hidden_size=D_MODEL,
                                           num_hidden_layers=2, ffn_dim=256, num_attention_heads=4,
                                           word_embed_proj_dim=D_MODEL))
    model(tf.constant([[1, 2, 3]]))
    model.save_pretrained(out, saved_model=True)
    return os.path.join(out, "saved_model", "1")


@pytest.fixture(scope="session")
def hf_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return {kind: _export(kind, str(root / kind)) for kind in FAMILIES}


def _convert(tmp_path_factory, src, name, **kwargs):
    from tfquant.convert import ConvertSavedModel

    out = str(tmp_path_factory.mktemp("conv") / name)
    return out, ConvertSavedModel(src, out, calib_samples=4, seq_len=32, progress=False, **kwargs)


@pytest.fixture(scope="session")
def converted(tmp_path_factory, hf_models):
    return {kind: _convert(tmp_path_factory, hf_models[kind], kind) for kind in FAMILIES}


@pytest.fixture(scope="session")
def vocab_batch():
    rs = np.random.RandomState(1)
    ids = rs.randint(0, VOCAB, size=(4, 24)).astype("int32")
    return ids, np.ones_like(ids)


def _graph(out):
    from tfquant.graph import Graph
    from tfquant.graphio import read_graph_def

    return Graph(read_graph_def(os.path.join(out, "converted_graph_def.pb")))


def _saved_variables(model_dir):
    """{name: (dtype name, shape)} of every variable the SavedModel stores."""
    import tensorflow as tf

    reader = tf.train.load_checkpoint(os.path.join(model_dir, "variables", "variables"))
    dtypes = reader.get_variable_to_dtype_map()
    return {k: (dtypes[k].name, tuple(s)) for k, s in reader.get_variable_to_shape_map().items()
            if "OBJECT_GRAPH" not in k}


@pytest.mark.parametrize("kind", FAMILIES)
def test_every_weight_matmul_is_int8(converted, kind):
    from tfquant.names import outlier_prefix
    from tfquant.quantizers.matmul import BATCH_MATMULS, weight_operand

    out, report = converted[kind]
    lowered = report["lowered"]
    assert LM_HEAD[kind] in lowered["ops"]
    assert lowered["count"] == WEIGHT_MATMULS[kind] and lowered["not_lowered"] == []
    # What stays float: attention's activation x activation BatchMatMuls (scores, context), 2 per layer.
    skipped = [s for s in report["skipped"] if s["op_type"] != "ConcatV2"]
    assert len(skipped) == 4 and all("activation x activation" in s["reason"] for s in skipped)
    graph = _graph(out)
    assert len(graph.by_op(INT8_KERNEL)) == WEIGHT_MATMULS[kind]
    float_by_weight = [n.name for n in graph.by_op("MatMul", *BATCH_MATMULS)
                       if weight_operand(graph, n) is not None and outlier_prefix("") not in n.name]
    assert float_by_weight == []


@pytest.mark.parametrize("kind", FAMILIES)
def test_logits_agree_with_fp32(hf_models, converted, vocab_batch, kind):
    ref = run_logits(hf_models[kind], vocab_batch)
    got = run_logits(os.path.join(converted[kind][0], "model"), vocab_batch)
    assert got.shape == ref.shape == vocab_batch[0].shape + (VOCAB,)
    assert float((ref.argmax(-1) == got.argmax(-1)).mean()) >= 0.9


@pytest.mark.parametrize("kind", FAMILIES)
def test_size_on_disk(converted, kind):
    from tfquant.fsutil import dir_size_bytes

    out, report = converted[kind]
    ratio = dir_size_bytes(os.path.join(out, "model")) / report["size_bytes"]["input"]
    assert ratio <= MAX_SIZE_RATIO[kind], ratio


@pytest.mark.parametrize("kind", FAMILIES)
def test_tied_table_stored_once_in_int8(converted, kind):
    out, report = converted[kind]
    tied = report["lowered"]["tied_embeddings"]
    assert len(tied) == 1 and tied[0]["gather"] in report["lowered"]["embeddings"]
    variables = _saved_variables(os.path.join(out, "model"))
    table_sized = [v for v in variables.values() if VOCAB in v[1] and len(v[1]) == 2]
    assert table_sized == [("qint8", (D_MODEL, VOCAB))]  # the lm_head's int8 weight, which the gather reads
    big_fp32 = [(k, v) for k, v in variables.items() if v[0] == "float32" and len(v[1]) == 2 and min(v[1]) > 1]
    assert big_fp32 == []  # no fp32 weight matrix is left (biases [1, N] aside)


@pytest.mark.parametrize("outliers", [{}, {"outlier_threshold": 1.2, "max_outlier_fraction": 0.25}],
                         ids=["default", "outlier_channels"])
def test_table_copied_into_lm_head_is_stored_once(tmp_path_factory, monkeypatch, outliers):
    """A tied checkpoint exported without ties (SmolLM2's GGUF -> TFMistralForCausalLM: lm_head holds a copy of
    the embedding): the gather reads the lm_head's int8 weight, so the table is not stored a second time.
    With outlier channels (SmolLM2's default), those rows are zero in the int8 weight and the gather adds
    the side path's fp32 rows back: exact there, the lm_head's int8 step elsewhere.  Only with full-range 8-bit weights: at
    7 bits, and with pair-safe 8-bit codes (the default), the table keeps its own 8-bit copy (sharing the coarser
    codes cost ~1 pt on SmolLM2); full-range 8-bit weights (VNNI/AMX only) share it."""
    from test_models import DIM, IDS, make_llama_weights, write_tiny_gguf
    from test_models import VOCAB as GGUF_VOCAB

    from tfquant import savedmodel
    from tfquant.gguf_import import prepare_from_gguf

    root = tmp_path_factory.mktemp("copied")
    write_tiny_gguf(root / "tied.gguf", make_llama_weights(seed=6, tied=True))
    src = prepare_from_gguf(str(root / "tied.gguf"), str(root / "fp32"))
    fp32_tables = [v for v in _saved_variables(src).values() if GGUF_VOCAB in v[1]]
    assert sorted(fp32_tables) == [("float32", (DIM, GGUF_VOCAB)), ("float32", (GGUF_VOCAB, DIM))]  # the copy
    saved = []
    real_save = savedmodel.save
    monkeypatch.setattr(savedmodel, "save", lambda parts, out: (saved.extend(parts), real_save(parts, out)))
    # 7-bit weights, and pair-safe 8-bit (the default): the table keeps its own 8-bit copy beside the lm_head's
    for name, bits in (("copied7", 7), ("copied_pair_safe", 8)):
        _, own = _convert(tmp_path_factory, src, name, weight_bits=bits, **outliers)
        assert own["lowered"]["tied_embeddings"] == [] and len(own["lowered"]["embeddings"]) == 1
    saved.clear()
    out, report = _convert(tmp_path_factory, src, "copied", weight_bits=8, weight_pairs="full", **outliers)
    tied = report["lowered"]["tied_embeddings"]
    assert len(tied) == 1
    head = [q for q in report["quantized"] if q["op"].endswith("lm_head/Tensordot/MatMul")]
    assert len(head) == 1 and bool(head[0].get("outlier_channels")) == bool(outliers)
    tables = [v for v in _saved_variables(os.path.join(out, "model")).values() if GGUF_VOCAB in v[1]]
    assert tables == [("qint8", (DIM, GGUF_VOCAB))]

    # The embedding rows the converted graph computes, against the fp32 table.
    ids = np.array([IDS, IDS[::-1]], np.int32)
    graph_def, model, captures = saved[0]
    rows = savedmodel.build_function(graph_def, model, captures, {"e": tied[0]["gather"]})(
        input_ids=ids, attention_mask=np.ones_like(ids))["e"].numpy()
    table = make_llama_weights(seed=6, tied=True)["token_embd.weight"][ids]
    step = np.abs(table).max(axis=-1, keepdims=True) / 127  # full-range 8-bit lm_head weights, per vocabulary row
    assert np.all(np.abs(rows - table) <= 0.5 * step + 1e-6)
    channels = head[0].get("outlier_channels") or []
    np.testing.assert_array_equal(rows[..., channels], table[..., channels])
    ref = run_logits(src, (ids, np.ones_like(ids)))
    got = run_logits(os.path.join(out, "model"), (ids, np.ones_like(ids)))
    # (random tiny weights leave logits nearly tied; the rows check above is the exact one)
    assert float((ref.argmax(-1) == got.argmax(-1)).mean()) >= (0.75 if not outliers else 0.5)


@pytest.mark.parametrize("kind", FAMILIES)
def test_conversion_is_deterministic(tmp_path_factory, hf_models, converted, kind):
    again, _ = _convert(tmp_path_factory, hf_models[kind], f"{kind}_again")
    with open(os.path.join(converted[kind][0], "converted_graph_def.pb"), "rb") as a, \
            open(os.path.join(again, "converted_graph_def.pb"), "rb") as b:
        assert a.read() == b.read()


def test_fp32_lm_head_keeps_its_table_fp32_once(tmp_path_factory, hf_models):
    """An lm_head kept in fp32 still reads the table: an int8 copy for the gather would only add size."""
    out, report = _convert(tmp_path_factory, hf_models["gpt2"], "gpt2_fp32_head", exclude=["^StatefulPartitionedCall/MatMul$"])
    gather = "StatefulPartitionedCall/transformer/wte/embedding_lookup"
    assert gather in [n["op"] for n in report["lowered"]["not_lowered"]]
    table_sized = [v for v in _saved_variables(os.path.join(out, "model")).values() if VOCAB in v[1]]
    assert table_sized == [("float32", (VOCAB, D_MODEL))]
    assert report["size_bytes"]["output"] < report["size_bytes"]["input"]


def _save_module_model(path):
    """A model built from the shapes a weight MatMul may take that GPT-2 and OPT do not show: a weight
    shared by two transposed MatMuls, a 2-D activation times an ExpandDims'd [1, K, N] weight (output
    [1, M, N]) and a tied lm_head as BatchMatMulV2(x, table, adj_y) without ExpandDims."""
    import tensorflow as tf

    class Tiny(tf.Module):
        def __init__(self):
            rs = np.random.RandomState(0)
            self.table = tf.Variable(rs.randn(VOCAB, 16).astype(np.float32))
            self.w_in = tf.Variable((rs.randn(32, 16) * 0.3).astype(np.float32))   # [out, in], used transposed
            self.w_out = tf.Variable((rs.randn(32, 16) * 0.3).astype(np.float32))

        @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32, "input_ids"),
                                      tf.TensorSpec([None, None], tf.int32, "attention_mask")])
        def serving(self, input_ids, attention_mask):
            h = tf.gather(self.table, input_ids)
            flat = tf.reshape(h, [-1, 16])
            w_t = tf.transpose(self.w_in)  # Grappler folds it into transpose_b of both MatMuls
            u = tf.nn.relu(tf.matmul(flat, w_t)) + tf.nn.relu(tf.matmul(flat * 2.0, w_t))
            # squeeze(axis=0) fails unless the rewritten op keeps BatchMatMulV2's [1, M, N] output
            v = tf.squeeze(tf.raw_ops.BatchMatMulV2(x=u, y=tf.expand_dims(self.w_out, 0)), axis=0)
            x = h + tf.reshape(v, tf.shape(h))
            return {"logits": tf.raw_ops.BatchMatMulV2(x=x, y=self.table, adj_y=True)}

    module = Tiny()
    tf.saved_model.save(module, path, signatures={"serving_default": module.serving})
    return path


def test_shared_transposed_and_broadcast_weights(tmp_path_factory, vocab_batch):
    src = _save_module_model(str(tmp_path_factory.mktemp("module") / "tiny"))
    out, report = _convert(tmp_path_factory, src, "module")
    assert report["lowered"]["count"] == 4 and len(report["lowered"]["tied_embeddings"]) == 1
    variables = _saved_variables(os.path.join(out, "model"))
    assert sorted(variables.values()) == [("qint8", (16, 32)), ("qint8", (16, VOCAB)), ("qint8", (32, 16))]
    ref, got = run_logits(src, vocab_batch), run_logits(os.path.join(out, "model"), vocab_batch)
    assert float((ref.argmax(-1) == got.argmax(-1)).mean()) >= 0.9


def test_weight_operand_rule():
    """Which (Batch)MatMul inputs count as weights, and how they are transposed."""
    from tensorflow.core.framework import graph_pb2

    from tfquant.graph import DType, Graph, make_const, make_node
    from tfquant.quantizers.matmul import weight_operand

    f32 = {"T": DType("float")}
    g = Graph(graph_pb2.GraphDef())
    g.add(make_node("Placeholder", "x", attrs={"dtype": DType("float")}))
    g.add(make_node("Placeholder", "handle", attrs={"dtype": DType("resource")}))
    g.add(make_node("ReadVariableOp", "w", ["handle"], {"dtype": DType("float")}))
    g.add(make_node("Identity", "w_id", ["w"], f32))
    g.add(make_const("perm", np.asarray([1, 0], np.int32)))
    g.add(make_const("axis0", np.int32(0)))
    g.add(make_node("Transpose", "w_t", ["w_id", "perm"], {"T": DType("float"), "Tperm": DType("int32")}))
    g.add(make_node("ExpandDims", "w_e", ["w_t", "axis0"], {"T": DType("float"), "Tdim": DType("int32")}))

    def op(kind, b, **flags):
        return make_node(kind, f"{kind}_{b}_{sorted(flags.items())}", ["x", b], {**f32, **flags})

    assert weight_operand(g, op("MatMul", "w_id", transpose_b=False)).transposed is False
    assert weight_operand(g, op("MatMul", "w_id", transpose_b=True)).transposed is True
    assert weight_operand(g, op("MatMul", "w_t", transpose_b=True)).transposed is False  # two transposes
    assert weight_operand(g, op("MatMul", "w_e", transpose_b=False)) is None  # ExpandDims: BatchMatMul only
    through_both = weight_operand(g, op("BatchMatMulV2", "w_e", adj_x=False, adj_y=False))
    assert (through_both.tensor, through_both.transposed, through_both.broadcast) == ("w", True, True)
    assert weight_operand(g, op("BatchMatMulV2", "x", adj_x=False, adj_y=True)) is None  # activation x activation


def test_batched_weight_is_not_one_matmul():
    """A BatchMatMul by a [B, K, N] weight (B > 1) multiplies each batch by its own matrix: left float."""
    from tensorflow.core.framework import graph_pb2

    from tfquant.graph import DType, Graph, const_value, make_const, make_node
    from tfquant.quantizers import ActivationQ, Plan, WeightQ
    from tfquant.rewrite import insert_qdq

    g = Graph(graph_pb2.GraphDef())
    g.add(make_node("Placeholder", "x", attrs={"dtype": DType("float")}))
    g.add(make_const("w", np.ones((2, 4, 4), np.float32)))
    g.add(make_node("BatchMatMulV2", "bmm", ["x", "w"], {"T": DType("float"), "adj_x": False, "adj_y": False}))
    plan = Plan("bmm", "BatchMatMulV2", activations=[ActivationQ(0, "x", "quint8", "MIN_FIRST", 0.0, 1.0)],
                weight=WeightQ(1, "w", per_channel=False))
    result = insert_qdq(g, [plan], lambda t: const_value(g.node(t)))
    assert result.quantized == [] and "not 2-D" in result.skipped[0]["reason"]
    assert list(g.node("bmm").input) == ["x", "w"] and g.node("bmm").op == "BatchMatMulV2"
