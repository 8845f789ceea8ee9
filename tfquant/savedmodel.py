"""SavedModel in, SavedModel out, with weights kept as variables throughout.

Freezing a GPT-J-6B into a GraphDef makes a ~24 GB protobuf, far past protobuf's 2 GB cap,
so tfquant never freezes.  ``extract`` inlines the serving function into one flat GraphDef
whose weights are ``Placeholder(resource) -> ReadVariableOp`` nodes, and remembers which
variable each placeholder stands for.  ``save`` imports a rewritten GraphDef, re-binds those
placeholders to variables (the original ones, or new int8 ones a pass created) and writes a
SavedModel with the same signature.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Dict, List

from .errors import UserError
from .models import INPUT_NAMES, OUTPUT_KEY, SIGNATURE_KEY


@dataclass
class ExtractedModel:
    """The serving graph of a SavedModel, flattened, with its variables still outside it."""

    graph_def: object                      # tf GraphDef, functions inlined
    inputs: Dict[str, str]                 # signature input name -> placeholder tensor name
    outputs: Dict[str, str]                # signature output key -> tensor name
    input_specs: Dict[str, object]         # signature input name -> tf.TensorSpec
    # placeholder node -> tf.Variable (weights) or eager tf.Tensor (captured constants, e.g. rotary tables)
    captures: Dict[str, object] = field(default_factory=dict)
    loaded: object = None                  # keeps the loaded SavedModel (and its variables) alive

    def weight_value(self, graph, tensor: str):
        """The numpy value of a weight tensor: a Const, or a ReadVariableOp of a captured variable."""
        from .graph import const_value, parse_input

        node = graph.node(tensor)
        if node.op == "Const":
            return const_value(node)
        if node.op == "ReadVariableOp":
            placeholder = parse_input(graph.skip_identity(node.input[0]))[0]
            return self.captures[placeholder].numpy()
        if node.op in ("EnsureShape", "Identity"):
            return self.weight_value(graph, node.input[0])
        if node.op == "Mul":  # a weight times a constant (outlier-channel mask, SmoothQuant scale)
            return self.weight_value(graph, node.input[0]) * self.weight_value(graph, node.input[1])
        if node.op == "ConcatV2":  # weights of horizontally fused MatMuls (tfquant.fuse)
            import numpy as np

            n = node.attr["N"].i
            axis = int(self.weight_value(graph, node.input[n]))
            return np.concatenate([self.weight_value(graph, i) for i in node.input[:n]], axis=axis)
        raise ValueError(f"{tensor} is not a weight")


def _check_saved_model_dir(path: str) -> None:
    if not os.path.exists(path):
        raise UserError(f"model path not found: {path}")
    if not os.path.isdir(path) or not (
        os.path.isfile(os.path.join(path, "saved_model.pb")) or os.path.isfile(os.path.join(path, "saved_model.pbtxt"))
    ):
        raise UserError(f"{path} is not a TensorFlow SavedModel folder (no saved_model.pb)")


def load_serving_function(path: str):
    """Load the SavedModel and return (loaded, serving concrete function), checking the signature."""
    import tensorflow as tf

    _check_saved_model_dir(path)
    try:
        loaded = tf.saved_model.load(path)
    except Exception as exc:  # corrupt protobuf, missing variables, unknown ops ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot load SavedModel {path}: {first}") from None
    signatures = getattr(loaded, "signatures", {})
    if SIGNATURE_KEY not in signatures:
        raise UserError(f"SavedModel {path} has no '{SIGNATURE_KEY}' signature (found: {sorted(signatures) or 'none'})")
    fn = signatures[SIGNATURE_KEY]
    specs = fn.structured_input_signature[1]
    if "input_ids" not in specs:
        raise UserError(f"the '{SIGNATURE_KEY}' signature of {path} has no 'input_ids' input (inputs: {sorted(specs)})")
    return loaded, fn


def _variables_by_handle(loaded) -> Dict[int, object]:
    """id(handle tensor) -> variable, for every variable reachable from the loaded object."""
    import tensorflow as tf

    found = {}
    for obj in tf.train.TrackableView(loaded).descendants():
        if isinstance(obj, tf.Variable):
            found[id(obj.handle)] = obj
    return found


# Pass 1 inlines the serving function.  Pass 2 folds shape arithmetic and, through common
# subgraph elimination, merges the identical Tensordot/Reshape nodes that feed q, k, v and
# fc_in, so those four MatMuls read one tensor and can share one QuantizeV2.  The remapper
# is deliberately not run: it would fuse MatMul+BiasAdd into _FusedMatMul and hide the
# MatMuls from the quantizer.
_INLINE_PASS = ("function",)
_CLEANUP_PASS = ("constfold", "common_subgraph_elimination", "arithmetic", "dependency")


def _grappler(graph_def, graph, fetch_names, optimizers):
    from tensorflow.core.protobuf import config_pb2, meta_graph_pb2
    from tensorflow.python.grappler import tf_optimizer
    from tensorflow.python.training import saver

    meta_graph = saver.export_meta_graph(graph_def=graph_def, graph=graph)
    fetches = meta_graph_pb2.CollectionDef()
    fetches.node_list.value.extend(fetch_names)
    meta_graph.collection_def["train_op"].CopyFrom(fetches)  # grappler keeps these alive
    config = config_pb2.ConfigProto()
    rewrite = config.graph_options.rewrite_options
    rewrite.optimizers.extend(optimizers)
    rewrite.min_graph_nodes = -1
    return tf_optimizer.OptimizeGraph(config, meta_graph)


def _inline_functions(fn):
    """One flat GraphDef of the serving function; variables stay Placeholder -> ReadVariableOp."""
    import tensorflow as tf

    fetch_names = [t.name for t in fn.inputs + fn.outputs]
    flat = _grappler(fn.graph.as_graph_def(), fn.graph, fetch_names, _INLINE_PASS)
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(flat, name="")
    return _grappler(flat, graph, fetch_names, _CLEANUP_PASS)


def extract(path: str) -> ExtractedModel:
    loaded, fn = load_serving_function(path)
    graph = fn.graph
    handle_to_var = _variables_by_handle(loaded)
    captures = {}
    for external, internal in zip(fn.captured_inputs, graph.internal_captures):
        # A variable's handle, or a captured eager constant which is re-captured as it is.
        captures[internal.op.name] = handle_to_var.get(id(external), external)
    specs = fn.structured_input_signature[1]
    placeholder_by_input = {}
    for t in fn.inputs[: len(fn.inputs) - len(fn.captured_inputs)]:
        placeholder_by_input[t.op.name] = t.name
    inputs = {}
    for name, spec in specs.items():
        ph = spec.name or name
        if ph not in placeholder_by_input:
            raise UserError(f"SavedModel {path}: cannot find the placeholder of input '{name}'")
        inputs[name] = placeholder_by_input[ph]
    # fn.outputs follows the flattened (key-sorted) structured_outputs.
    keys = sorted(fn.structured_outputs)
    outputs = {k: t.name for k, t in zip(keys, fn.outputs)}
    graph_def = _inline_functions(fn)
    for node in graph_def.node:
        # Debug info names the traced function with a per-process counter
        # (__inference_serving_62571): drop it so the same model gives the same bytes.
        node.ClearField("experimental_debug_info")
    return ExtractedModel(graph_def, inputs, outputs, dict(specs), captures, loaded)


def build_function(graph_def, model: ExtractedModel, captures: Dict[str, object], output_tensors: Dict[str, str] = None):
    """A callable f(**inputs) -> {key: tensor} running ``graph_def`` with placeholders bound to ``captures``.

    ``output_tensors`` defaults to the signature outputs; calibration passes extra tensors.
    """
    import tensorflow as tf
    from tensorflow.python.eager import wrap_function

    input_names = sorted(model.inputs)
    outputs = output_tensors if output_tensors is not None else model.outputs
    keys = sorted(outputs)
    handles = {name: _capture_tensor(obj) for name, obj in captures.items()}
    pruned = wrap_function.function_from_graph_def(
        graph_def,
        [model.inputs[n] for n in input_names],
        [_with_index(outputs[k]) for k in keys],
        captures=handles,
    )

    def call(**feeds):
        args = [tf.convert_to_tensor(feeds[n], dtype=model.input_specs[n].dtype) for n in input_names]
        return dict(zip(keys, pruned(*args)))

    call.concrete = pruned
    return call


def _capture_tensor(obj):
    import tensorflow as tf

    return obj.handle if isinstance(obj, tf.Variable) else obj


def _with_index(name: str) -> str:
    return name if ":" in name else name + ":0"


def save(graph_def, model: ExtractedModel, captures: Dict[str, object], out_dir: str) -> None:
    """Write ``graph_def`` as a SavedModel with the original signature; only captured variables are saved."""
    import tensorflow as tf

    call = build_function(graph_def, model, captures)
    specs = [tf.TensorSpec(s.shape, s.dtype, name=n) for n, s in sorted(model.input_specs.items())]
    names = [n for n, _ in sorted(model.input_specs.items())]

    root = tf.Module()
    # Track only what the new graph reads: replaced fp32 weights are not written.
    root.weights = [captures[k] for k in sorted(captures) if isinstance(captures[k], tf.Variable)]
    root._graph_fn = call.concrete

    @tf.function(input_signature=specs)
    def serving(*args):
        return call(**dict(zip(names, args)))

    tf.saved_model.save(root, out_dir, signatures={SIGNATURE_KEY: serving.get_concrete_function()})


def used_placeholders(graph_def) -> List[str]:
    return [n.name for n in graph_def.node if n.op == "Placeholder"]
