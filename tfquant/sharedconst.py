"""Constants that several signatures' graphs hold alike are written once, in a library function.

Each signature of a SavedModel is a function of its own, and a Const in one function's body is not
visible to another: prefill and decode graphs of one converted model carry the same outlier-row
weights, per-channel scales and int32 biases (SmolLM2-135M int8: 11.6 MB in each graph, 6% of the
model).  Variables would be shared, but oneDNN caches the packed form of a Const MatMul operand and
not of a variable read (measured in ``rewrite.split_outliers``: 5% slower at 1x128).

So each such Const becomes an output of one function, ``tfquant_shared_constants_<hash>``, that
every graph calls (``PartitionedCall``, no inputs), and the Const's readers read that output instead.
TF inlines the call when it instantiates a signature, so the graph that runs has the Consts again
(measured on SmolLM2: 1x128 and decode step as fast as without sharing), while the SavedModel stores
each value once.  Values are compared byte for byte, so this is exact.
"""
from __future__ import annotations

import hashlib
from typing import Dict, List

from tensorflow.core.framework import function_pb2, graph_pb2

from .graph import parse_input

FUNCTION_NAME = "tfquant_shared_constants"  # + a hash of the values: TF keeps one function per name per process
CALL_NODE = "tfquant_shared_constants_call"
# Below this a Const costs about as much as the function output standing in for it.
MIN_BYTES = 128


def shared_consts(graph_defs: List[graph_pb2.GraphDef]) -> Dict[str, object]:
    """The Consts of at least MIN_BYTES that two or more graphs hold with identical values: name -> node
    (the first graph's), sorted by name."""
    seen: Dict[str, list] = {}  # name -> [node, serialized value, graphs holding it]
    differs = set()
    for gd in graph_defs:
        for node in gd.node:
            if node.op != "Const" or node.attr["value"].tensor.ByteSize() < MIN_BYTES:
                continue
            value = node.attr["value"].SerializeToString(deterministic=True)
            if node.name not in seen:
                seen[node.name] = [node, value, 1]
            elif seen[node.name][1] == value:
                seen[node.name][2] += 1
            else:
                differs.add(node.name)
    return {name: seen[name][0] for name in sorted(seen) if seen[name][2] > 1 and name not in differs}


def share_constants(graph_defs: List[graph_pb2.GraphDef]) -> tuple:
    """(new GraphDefs, report): the shared Consts moved into one library function all graphs call."""
    nodes = shared_consts(graph_defs)
    names = list(nodes)
    if not names:
        return list(graph_defs), {"constants": 0, "bytes": 0}
    index = {name: i for i, name in enumerate(names)}
    fdef = _function(names, nodes)
    call_attr_name = fdef.signature.name
    out = []
    for gd in graph_defs:
        new = graph_pb2.GraphDef()
        new.CopyFrom(gd)
        held = {n.name for n in new.node if n.name in index and n.op == "Const"}
        if held:
            kept = [n for n in new.node if n.name not in held]
            del new.node[:]
            new.node.extend(kept)
            for node in new.node:
                for i, inp in enumerate(node.input):
                    name, port = parse_input(inp)
                    if name in held:  # a Const's one output, or a control edge on it
                        node.input[i] = "^" + CALL_NODE if port == -1 else f"{CALL_NODE}:{index[name]}"
            call = new.node.add(op="PartitionedCall", name=CALL_NODE)
            call.attr["Tin"].list.SetInParent()
            call.attr["Tout"].list.type.extend(nodes[name].attr["dtype"].type for name in names)
            call.attr["f"].func.name = call_attr_name
            for key in ("config", "config_proto", "executor_type"):
                call.attr[key].s = b""
            new.library.function.add().CopyFrom(fdef)
        out.append(new)
    total = sum(nodes[name].attr["value"].tensor.ByteSize() for name in names)
    return out, {"constants": len(names), "bytes": int(total), "function": call_attr_name}


def _function(names: List[str], nodes: dict) -> function_pb2.FunctionDef:
    fdef = function_pb2.FunctionDef()
    for i, name in enumerate(names):
        const = nodes[name]
        arg = fdef.signature.output_arg.add(name=f"c{i}", type=const.attr["dtype"].type)
        body = fdef.node_def.add(op="Const", name=f"c{i}_value")
        for key in ("dtype", "value"):
            body.attr[key].CopyFrom(const.attr[key])
        fdef.ret[arg.name] = f"{body.name}:output:0"
    digest = hashlib.sha256(fdef.SerializeToString(deterministic=True)).hexdigest()[:16]
    fdef.signature.name = f"{FUNCTION_NAME}_{digest}"
    return fdef
