"""Splice a TensorFlow Python function into a GraphDef being rewritten.

The passes edit NodeDefs by hand where the pattern is the algorithm (QDQ pairs, the int8 kernel).
A weight decoder (unpack nibbles, look up MX element codes, scale) is clearer as ordinary TF code
(``tfquant.formats.tfdecode``), so it is traced once in a scratch graph and its nodes copied in
under a prefix, with its placeholders replaced by the tensors the graph already has.
"""
from __future__ import annotations

from typing import Callable, Dict, Tuple

from .graph import Graph, parse_input, tensor_name


def splice(graph: Graph, fn: Callable, inputs: Dict[str, Tuple[str, object, tuple]], prefix: str) -> str:
    """Trace ``fn(tensors: dict) -> tf.Tensor`` and add its nodes to ``graph`` as ``prefix/...``.

    ``inputs``: name -> (tensor in ``graph``, tf.DType, static shape or None) for each tensor ``fn``
    reads.  Returns the name of the output tensor (``prefix/output``).  Tracing is deterministic, so
    the same call gives the same nodes.
    """
    import tensorflow as tf

    scratch = tf.Graph()
    with scratch.as_default():
        placeholders = {key: tf.compat.v1.placeholder(dtype, shape, name=f"input_{i}")
                        for i, (key, (_, dtype, shape)) in enumerate(sorted(inputs.items()))}
        tf.identity(fn(placeholders), name="output")
    traced = scratch.as_graph_def()
    if traced.library.function:
        # Function names (tf.cond branches...) carry a per-process counter: the graph would differ run to run.
        raise ValueError(f"{prefix}: a spliced function must be straight-line TF ops (no tf.cond / tf.while_loop)")
    bound = {placeholders[key].op.name: tensor for key, (tensor, _, _) in inputs.items()}

    def rename(inp: str) -> str:
        control = inp.startswith("^")
        name, index = parse_input(inp.lstrip("^"))
        if name in bound:
            if control:
                return "^" + parse_input(bound[name])[0]
            return bound[name] if index == 0 else tensor_name(parse_input(bound[name])[0], index)
        return ("^" if control else "") + tensor_name(f"{prefix}/{name}", index)

    for node in traced.node:
        if node.name in bound:
            continue
        copy = type(node)()
        copy.CopyFrom(node)
        copy.name = f"{prefix}/{node.name}"
        del copy.input[:]
        copy.input.extend(rename(i) for i in node.input)
        copy.ClearField("device")
        graph.add(copy)
    return f"{prefix}/output"
