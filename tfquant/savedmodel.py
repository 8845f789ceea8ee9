"""SavedModel in, SavedModel out, with weights kept as variables throughout.

Freezing a GPT-J-6B into a GraphDef makes a ~24 GB protobuf, far past protobuf's 2 GB cap,
so tfquant never freezes.  ``extract`` inlines the serving function into one flat GraphDef
whose weights are ``Placeholder(resource) -> ReadVariableOp`` nodes, and remembers which
variable each placeholder stands for.  ``save`` imports a rewritten GraphDef, re-binds those
placeholders to variables (the original ones, or new int8 ones a pass created) and writes a
SavedModel with the same signature.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from .errors import UserError
from .feeds import check_inputs

SIGNATURE_KEY = "serving_default"  # the signature tfquant reads unless told another (--signature)
LOGITS_KEY = "logits"              # the output scored and calibrated on; every other output is kept as it is


@dataclass
class ExtractedModel:
    """The serving graph of a SavedModel, flattened, with its variables still outside it."""

    graph_def: object                      # tf GraphDef, functions inlined
    inputs: Dict[str, str]                 # signature input name -> placeholder tensor name
    outputs: Dict[str, str]                # signature output key -> tensor name
    input_specs: Dict[str, object]         # signature input name -> tf.TensorSpec
    output_specs: Dict[str, object]        # signature output key -> tf.TensorSpec (restored on save)
    signature: str                         # the signature's name, kept in the converted model
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


def load(path: str):
    """``tf.saved_model.load`` of the SavedModel folder ``path``; a file TF cannot load is a UserError."""
    import tensorflow as tf

    try:
        return tf.saved_model.load(path)
    except Exception as exc:  # corrupt protobuf, missing variables, unknown ops ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot load SavedModel {path}: {first}") from None


def signature_names(loaded) -> List[str]:
    """Every signature of a loaded SavedModel, ``serving_default`` first, the rest by name."""
    names = sorted(getattr(loaded, "signatures", {}) or {})
    return sorted(names, key=lambda n: n != SIGNATURE_KEY)


def checked_signature(loaded, path: str, signature: str = SIGNATURE_KEY):
    """The signature's concrete function, with inputs tfquant can feed and a logits output."""
    signatures = getattr(loaded, "signatures", {})
    if signature not in signatures:
        raise UserError(f"SavedModel {path} has no '{signature}' signature (found: {', '.join(sorted(signatures)) or 'none'}; "
                        "choose one with --signature)")
    fn = signatures[signature]
    check_inputs(fn.structured_input_signature[1], f"the '{signature}' signature of {path}")
    if not isinstance(fn.structured_outputs, dict) or LOGITS_KEY not in fn.structured_outputs:
        outputs = sorted(fn.structured_outputs) if isinstance(fn.structured_outputs, dict) else fn.structured_outputs
        raise UserError(f"the '{signature}' signature of {path} has no '{LOGITS_KEY}' output (outputs: {outputs})")
    return fn


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


def extract(path: str, signature: str = SIGNATURE_KEY, loaded=None) -> ExtractedModel:
    """The signature ``signature`` of the SavedModel folder ``path`` as one flat GraphDef.

    ``loaded`` (the SavedModel already loaded) lets several signatures share one load, hence one set
    of variable objects: what lets their converted graphs share int8 weights.
    """
    loaded = load(path) if loaded is None else loaded
    fn = checked_signature(loaded, path, signature)
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
    return ExtractedModel(graph_def, inputs, outputs, dict(specs), dict(fn.structured_outputs), signature,
                          captures, loaded)


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


def _signature_function(graph_def, model: ExtractedModel, captures: Dict[str, object]):
    """A tf.function with the original signature's input specs that runs ``graph_def``."""
    import tensorflow as tf

    call = build_function(graph_def, model, captures)
    names = sorted(model.input_specs)
    specs = [tf.TensorSpec(model.input_specs[n].shape, model.input_specs[n].dtype, name=n) for n in names]

    @tf.function(input_signature=specs)
    def serving(*args):
        outputs = call(**dict(zip(names, args)))
        for key, tensor in outputs.items():
            # The imported graph may know less about a shape than the original signature stated
            # (past_key_values' [layers, 2, -1, heads, -1, head_dim]): state it again, no op added.
            tensor.set_shape(model.output_specs[key].shape)
        return outputs

    return call.concrete, serving.get_concrete_function()


def save(parts, out_dir: str) -> dict:
    """Write each (graph_def, model, captures) of ``parts`` as one signature of one SavedModel.

    Only the variables the new graphs read are saved, each once however many signatures read it
    (prefill and decode share their int8 weights); replaced fp32 weights are not written.  Consts the
    graphs hold alike are written once too (tfquant/sharedconst.py); returns what was shared.
    """
    import tensorflow as tf

    from .sharedconst import share_constants

    graph_defs, shared = share_constants([graph_def for graph_def, _, _ in parts])
    root = tf.Module()
    variables, seen, graph_fns, signatures = [], set(), [], {}
    for graph_def, (_, model, captures) in zip(graph_defs, parts):
        for name in sorted(captures):
            var = captures[name]
            if isinstance(var, tf.Variable) and id(var) not in seen:
                seen.add(id(var))
                variables.append(var)
        graph_fn, signatures[model.signature] = _signature_function(graph_def, model, captures)
        graph_fns.append(graph_fn)
    root.weights = variables
    root._graph_fns = graph_fns
    tf.saved_model.save(root, out_dir, signatures=signatures)
    return shared


def vocabulary_size(model: ExtractedModel) -> Tuple[Optional[int], str]:
    """(entries, where that was read): the logits' last dimension, else the rows of the embedding
    table that ``input_ids`` is gathered from; (None, reason) when neither is static."""
    last = model.output_specs[LOGITS_KEY].shape
    if last.rank and last[-1] is not None:
        return int(last[-1]), f"the '{LOGITS_KEY}' output's last dimension"
    from .graph import Graph, parse_input

    graph = Graph(model.graph_def)
    ids = parse_input(model.inputs["input_ids"])[0]
    readers = graph.consumers()
    frontier, seen = [ids], set()
    while frontier:  # follow input_ids through casts and reshapes to the gather that embeds it
        name = frontier.pop()
        for user in readers.get(name, []):
            if user.name in seen:
                continue
            seen.add(user.name)
            if user.op in ("ResourceGather", "GatherV2") and parse_input(user.input[1])[0] == name:
                table = parse_input(graph.skip_identity(user.input[0]))[0]
                value = model.captures.get(table)
                if value is not None and len(value.shape) == 2:
                    return int(value.shape[0]), f"the embedding table {table}"
            elif user.op in ("Identity", "Cast", "Reshape", "ExpandDims"):
                frontier.append(user.name)
    return None, "not found in the graph"
