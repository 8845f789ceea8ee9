"""A small GraphDef editor: index, consumers, insert, rewire, prune, toposort.

TensorFlow's GraphDef is a flat list of NodeDefs whose inputs are strings
("node", "node:1", "^node" for a control edge).  The passes in tfquant only need
a handful of operations on it, so this module gives them names that read like
the algorithm ("insert a QuantizeV2, rewire the MatMul to its Dequantize")
instead of string surgery scattered over every pass.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Dict, Iterable, List, Optional

import numpy as np
from tensorflow.core.framework import attr_value_pb2, graph_pb2, node_def_pb2, types_pb2
from tensorflow.python.framework import tensor_util


def parse_input(inp: str):
    """'^a' -> ('a', -1); 'a:2' -> ('a', 2); 'a' -> ('a', 0)."""
    if inp.startswith("^"):
        return inp[1:], -1
    name, _, idx = inp.partition(":")
    return name, int(idx) if idx else 0


def tensor_name(node: str, index: int = 0) -> str:
    """The GraphDef spelling of output ``index`` of ``node`` (index 0 has no suffix)."""
    return node if index == 0 else f"{node}:{index}"


def is_float(node) -> bool:
    """Whether an op computes in float32 (its ``T`` attr): int32 shape arithmetic is never quantized."""
    return node.attr["T"].type == types_pb2.DT_FLOAT


def canonical(tensor: str) -> str:
    """'a:0' and 'a' are the same tensor; GraphDef spells it 'a'."""
    node, idx = parse_input(tensor)
    return tensor_name(node, idx)


class Graph:
    """A mutable view of a GraphDef keyed by node name (insertion order is kept)."""

    def __init__(self, graph_def: graph_pb2.GraphDef):
        self.nodes: Dict[str, node_def_pb2.NodeDef] = {}
        for n in graph_def.node:
            copy = node_def_pb2.NodeDef()
            copy.CopyFrom(n)
            self.nodes[n.name] = copy
        self.versions = graph_def.versions
        self.library = graph_def.library

    # ----- reading ---------------------------------------------------------------------------
    def node(self, name: str) -> node_def_pb2.NodeDef:
        return self.nodes[parse_input(name)[0]]

    def by_op(self, *ops: str) -> List[node_def_pb2.NodeDef]:
        return [n for n in self.nodes.values() if n.op in ops]

    def consumers(self) -> Dict[str, List[node_def_pb2.NodeDef]]:
        """Map from producer node name to the nodes that read it (data or control)."""
        out: Dict[str, List[node_def_pb2.NodeDef]] = defaultdict(list)
        for n in self.nodes.values():
            for inp in n.input:
                out[parse_input(inp)[0]].append(n)
        return out

    def op_histogram(self) -> Dict[str, int]:
        hist: Dict[str, int] = defaultdict(int)
        for n in self.nodes.values():
            hist[n.op] += 1
        return dict(sorted(hist.items(), key=lambda kv: (-kv[1], kv[0])))

    def skip_identity(self, tensor: str) -> str:
        """Follow Identity chains back to the real producer (weights arrive through several)."""
        name, idx = parse_input(tensor)
        while self.nodes[name].op == "Identity" and idx == 0:
            name, idx = parse_input(self.nodes[name].input[0])
        return tensor_name(name, idx)

    # ----- weights (variables stay Placeholder(resource) -> ReadVariableOp) -------------------
    def resource_handle(self, read: str) -> str:
        """The resource placeholder a ReadVariableOp (or ResourceGather) reads, through Identity chains."""
        return parse_input(self.skip_identity(self.node(read).input[0]))[0]

    def gathered_handles(self) -> set:
        """The resource placeholders of the fp32 tables that a ResourceGather reads (embeddings)."""
        return {self.resource_handle(n.name) for n in self.by_op("ResourceGather")
                if n.attr["dtype"].type == types_pb2.DT_FLOAT}

    def weight_reads(self, tensor: str) -> List[str]:
        """The ReadVariableOps a weight expression is computed from (through Identity, EnsureShape,
        Mul by a constant, the ConcatV2 of fused weights)."""
        node = self.node(tensor)
        if node.op == "ReadVariableOp":
            return [node.name]
        if node.op in ("Identity", "EnsureShape", "Mul", "ConcatV2"):
            return [r for i in node.input if not i.startswith("^") for r in self.weight_reads(i)]
        return []

    # ----- editing ---------------------------------------------------------------------------
    def add(self, node: node_def_pb2.NodeDef) -> node_def_pb2.NodeDef:
        if node.name in self.nodes:
            raise ValueError(f"node {node.name} already exists")
        self.nodes[node.name] = node
        return node

    def unique_name(self, base: str) -> str:
        name, i = base, 1
        while name in self.nodes:
            name = f"{base}_{i}"
            i += 1
        return name

    def rewire_input(self, node: node_def_pb2.NodeDef, index: int, new_tensor: str) -> None:
        node.input[index] = canonical(new_tensor)

    def readers(self, node: str) -> List[node_def_pb2.NodeDef]:
        """The nodes reading output 0 of ``node`` right now (take them before adding nodes that wrap it)."""
        return [n for n in self.nodes.values() if any(i in (node, node + ":0") for i in n.input)]

    def redirect(self, old: str, new_tensor: str, readers: Optional[Iterable[node_def_pb2.NodeDef]] = None,
                 move_control_edges: bool = False) -> None:
        """Make ``readers`` (default: every node) read ``new_tensor`` wherever they read output 0 of ``old``.

        ``move_control_edges``: also turn '^old' into '^<node of new_tensor>' (for when ``old`` goes away).
        """
        new_tensor = canonical(new_tensor)
        for n in self.nodes.values() if readers is None else readers:
            for i, inp in enumerate(n.input):
                if inp in (old, old + ":0"):
                    n.input[i] = new_tensor
                elif move_control_edges and inp == "^" + old:
                    n.input[i] = "^" + parse_input(new_tensor)[0]

    def remove(self, names: Iterable[str]) -> None:
        for name in names:
            self.nodes.pop(name, None)

    def drop_control_inputs_from(self, producers: Iterable[str]) -> None:
        """Remove '^producer' edges everywhere (GPT-J's NoOps keep every weight read alive)."""
        gone = {f"^{p}" for p in producers}
        for n in self.nodes.values():
            keep = [i for i in n.input if i not in gone]
            if len(keep) != len(n.input):
                del n.input[:]
                n.input.extend(keep)

    def prune(self, outputs: Iterable[str], keep: Iterable[str] = ()) -> int:
        """Remove every node not needed (through data or control edges) by ``outputs``/``keep``."""
        live = set()
        stack = [parse_input(o)[0] for o in outputs] + list(keep)
        while stack:
            name = stack.pop()
            if name in live or name not in self.nodes:
                continue
            live.add(name)
            stack.extend(parse_input(i)[0] for i in self.nodes[name].input)
        dead = [n for n in self.nodes if n not in live]
        self.remove(dead)
        return len(dead)

    def topological_order(self) -> List[str]:
        """Node names, producers first; ties keep the current order (deterministic)."""
        import heapq

        order = list(self.nodes)
        position = {name: i for i, name in enumerate(order)}
        indegree = {name: 0 for name in order}
        users = defaultdict(list)
        for name in order:
            for inp in self.nodes[name].input:
                src = parse_input(inp)[0]
                if src in self.nodes:
                    indegree[name] += 1
                    users[src].append(name)
        ready = [position[n] for n in order if indegree[n] == 0]
        heapq.heapify(ready)
        result = []
        while ready:
            name = order[heapq.heappop(ready)]
            result.append(name)
            for user in users[name]:
                indegree[user] -= 1
                if indegree[user] == 0:
                    heapq.heappush(ready, position[user])
        if len(result) != len(order):
            raise ValueError("graph has a cycle")
        return result

    def toposort(self) -> None:
        """Order nodes so producers come first (``topological_order``)."""
        self.nodes = {name: self.nodes[name] for name in self.topological_order()}

    def to_graph_def(self) -> graph_pb2.GraphDef:
        gd = graph_pb2.GraphDef()
        gd.versions.CopyFrom(self.versions)
        gd.library.CopyFrom(self.library)
        gd.node.extend(self.nodes.values())
        return gd


# ----- NodeDef builders ----------------------------------------------------------------------
def make_node(op: str, name: str, inputs: Iterable[str] = (), attrs: Optional[dict] = None,
              device: str = "") -> node_def_pb2.NodeDef:
    node = node_def_pb2.NodeDef(op=op, name=name, device=device)
    node.input.extend(canonical(i) if not i.startswith("^") else i for i in inputs)
    for key, value in (attrs or {}).items():
        node.attr[key].CopyFrom(to_attr(value))
    return node


def to_attr(value) -> attr_value_pb2.AttrValue:
    if isinstance(value, attr_value_pb2.AttrValue):
        return value
    if isinstance(value, bool):
        return attr_value_pb2.AttrValue(b=value)
    if isinstance(value, int):
        return attr_value_pb2.AttrValue(i=value)
    if isinstance(value, float):
        return attr_value_pb2.AttrValue(f=value)
    if isinstance(value, str):
        return attr_value_pb2.AttrValue(s=value.encode())
    if isinstance(value, DType):
        return attr_value_pb2.AttrValue(type=value.enum)
    raise TypeError(f"unsupported attr value {value!r}")


class DType:
    """A tiny wrapper so attrs can say DType('qint8') and stay readable."""

    def __init__(self, name: str):
        self.name = name
        self.enum = getattr(types_pb2, "DT_" + name.upper())


def make_const(name: str, value, dtype=None) -> node_def_pb2.NodeDef:
    arr = np.asarray(value, dtype=dtype)
    proto = tensor_util.make_tensor_proto(arr)
    node = node_def_pb2.NodeDef(op="Const", name=name)
    node.attr["dtype"].type = proto.dtype
    node.attr["value"].tensor.CopyFrom(proto)
    return node


def const_value(node: node_def_pb2.NodeDef) -> np.ndarray:
    return tensor_util.MakeNdarray(node.attr["value"].tensor)
