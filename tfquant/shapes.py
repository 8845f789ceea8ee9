"""Share shape arithmetic: one computation per symbolic value, then merge what became identical.

A Keras/HF transformer graph computes its shapes again for every layer: each ``Dense`` on a
[batch, time, features] tensor is a ``Tensordot`` whose reshapes take ``Shape -> GatherV2 ->
Prod -> Pack`` (and ``ConcatV2`` back), every attention layer rebuilds its rotary tables from
``Range(kv_length)``, and the decode step slices the past length out of each layer's cache.
Grappler cannot merge these across layers: each chain reads another layer's tensor, so the
inputs differ although the values are the same ([B, T] is [B, T] in every layer).  On
SmolLM2's decode step that is thousands of small ops per token, and a decode step is bound by
the number of ops, not by the MACs.

This pass proves the equalities and uses them:

1. **Symbolic shapes**: every tensor gets a shape whose dimensions are integers or
   polynomials in symbols (``input_ids:0 * input_ids:1``); every small integer tensor (a
   shape, a length) gets its value in the same terms.  The signature's unknown input
   dimensions are the symbols; a dimension no rule can relate gets a fresh symbol of its own,
   so two tensors are only ever called equal when they are equal in every run.  The rules are
   the ops' own shape functions (broadcasting, MatMul, Reshape's -1, ConcatV2's sum, ...).
2. **Canonical shape tensors**: integer tensors computed by shape arithmetic whose values are
   the same polynomial are read from one of them (the first in topological order, so no
   cycle can form); tensors under a ``Switch`` are left alone (they may be dead).
3. **Common subexpressions**: pure ops with the same op, attributes and inputs are merged
   (constants by value, and captured constant tensors of equal value, e.g. each layer's
   rotary ``inv_freq``), repeatedly, so whole chains and the per-layer rotary tables fold
   into one.

Every rewrite replaces a tensor by one of equal value, so the outputs are bit-identical.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Dict, List, Optional, Tuple

import numpy as np
from tensorflow.core.framework import types_pb2

from .graph import Graph, const_value, parse_input, tensor_name

# ----- polynomials over symbols: {monomial (sorted tuple of symbols): integer coefficient} -----
Poly = Tuple[Tuple[Tuple[str, ...], int], ...]


def const(c: int) -> Poly:
    return (((), int(c)),) if c else ()


def sym(name: str) -> Poly:
    return (((name,), 1),)


def _norm(terms: Dict[tuple, int]) -> Poly:
    return tuple(sorted((m, c) for m, c in terms.items() if c))


def add(a: Poly, b: Poly) -> Poly:
    out = defaultdict(int, dict(a))
    for m, c in b:
        out[m] += c
    return _norm(out)


def neg(a: Poly) -> Poly:
    return tuple((m, -c) for m, c in a)


def mul(a: Poly, b: Poly) -> Poly:
    out = defaultdict(int)
    for ma, ca in a:
        for mb, cb in b:
            out[tuple(sorted(ma + mb))] += ca * cb
    return _norm(out)


def as_int(a: Poly) -> Optional[int]:
    """The integer a polynomial is, if it has no symbols."""
    if not a:
        return 0
    if len(a) == 1 and a[0][0] == ():
        return a[0][1]
    return None


def div_exact(a: Poly, b: Poly) -> Optional[Poly]:
    """a / b when b is one term that divides every term of a, else None."""
    if len(b) != 1:
        return None
    (mb, cb), out = b[0], {}
    for m, c in a:
        rest = list(m)
        for s in mb:
            if s not in rest:
                return None
            rest.remove(s)
        if c % cb:
            return None
        out[tuple(rest)] = c // cb
    return _norm(out)


# ----- facts: a tensor's shape (None: unknown rank) and, for small int tensors, its value -----
class Fact:
    __slots__ = ("shape", "value", "scalar")

    def __init__(self, shape: Optional[tuple], value: Optional[tuple] = None):
        self.shape = shape                     # tuple of Poly, or None
        self.value = value                     # tuple of Poly (flattened, rank <= 1), or None
        self.scalar = shape == ()


INT_TYPES = (types_pb2.DT_INT32, types_pb2.DT_INT64)
MAX_VALUE = 16  # integer tensors up to this many elements carry their value
UNARY = {"Neg", "Rsqrt", "Sqrt", "Square", "Exp", "Log", "Sigmoid", "Tanh", "Relu", "Relu6", "Elu", "Selu",
         "Softmax", "LogSoftmax", "Abs", "Sin", "Cos", "Erf", "Floor", "Ceil", "Round", "Reciprocal", "Sign",
         "LogicalNot", "IsFinite", "ZerosLike", "OnesLike", "_MklSwish", "Softplus", "Cast", "Identity",
         "StopGradient", "Snapshot", "_MklSoftmax", "Dequantize", "CheckNumerics", "Erfc", "Tan", "Rint"}
BINARY = {"AddV2", "Add", "Sub", "Mul", "RealDiv", "Div", "Maximum", "Minimum", "Pow", "SquaredDifference",
          "Less", "Greater", "LessEqual", "GreaterEqual", "Equal", "NotEqual", "LogicalAnd", "LogicalOr",
          "FloorDiv", "FloorMod", "DivNoNan", "_MklAdd", "_MklAddV2", "_MklMul", "_MklSub",
          "_MklSquaredDifference", "_MklMaximum"}
# integer ops whose output is shape arithmetic (the ones step 2 may replace by an equal tensor)
SHAPE_ARITHMETIC = {"Shape", "StridedSlice", "GatherV2", "Pack", "ConcatV2", "Prod", "Sum", "Cast", "AddV2",
                    "Add", "Sub", "Mul", "FloorDiv", "Identity", "Maximum", "Minimum", "ExpandDims", "Reshape",
                    "Squeeze", "Size"}
# ops step 3 may merge: no state, no randomness, no side effects
PURE = UNARY | BINARY | SHAPE_ARITHMETIC | {
    "Const", "Range", "Fill", "BroadcastTo", "Tile", "Transpose", "MatMul", "BatchMatMulV2", "Einsum",
    "SelectV2", "Select", "Mean", "Max", "Min", "All", "Any", "OneHot", "Unpack", "SplitV", "Split", "Slice",
    "Rank", "ZerosLike", "ArgMax", "Cumsum", "BiasAdd", "MatrixBandPart", "_MklMatMul", "_MklBatchMatMulV2",
    "_MklEinsum", "_MklTranspose"}


def out_dtype(node):
    """The dtype of output 0 of the ops these rules give values to."""
    key = {"Shape": "out_type", "Size": "out_type", "Cast": "DstT", "Const": "dtype", "Range": "Tidx",
           "GatherV2": "Tparams"}.get(node.op, "T")
    return node.attr[key].type if key in node.attr else None


class ShapeInference:
    """Facts for every tensor of a graph, computed once in topological order."""

    def __init__(self, graph: Graph, resource_shapes: Optional[Dict[str, tuple]] = None):
        self.graph = graph
        self.resource_shapes = resource_shapes or {}   # resource placeholder -> the variable's static shape
        self.facts: Dict[str, Fact] = {}
        self.tainted: set = set()          # nodes under a Switch (their outputs may be dead)
        self.order: List[str] = graph.topological_order()
        for name in self.order:
            node = graph.nodes[name]
            ins = [i for i in node.input if not i.startswith("^")]
            # a node reading a possibly dead tensor, through data or control edges, may be dead itself
            if node.op == "Switch" or any(parse_input(i)[0] in self.tainted for i in node.input):
                if node.op != "Merge":
                    self.tainted.add(name)
            try:
                outs = self._infer(node, [self.fact(i) for i in ins])
            except Exception:  # a rule that cannot read this node knows nothing: the safe direction (no rewrite)
                outs = {}
            for idx, fact in outs.items():
                self.facts[tensor_name(name, idx)] = fact

    def fact(self, tensor: str) -> Optional[Fact]:
        return self.facts.get(tensor_name(*parse_input(tensor)))

    # --- helpers -----------------------------------------------------------------------------
    def _fresh(self, node, idx: int, rank: Optional[int]) -> Optional[tuple]:
        return None if rank is None else tuple(sym(f"{node.name}:{idx}:{d}") for d in range(rank))

    @staticmethod
    def _ints(fact: Optional[Fact]) -> Optional[list]:
        """A fact's value as Python ints, when it has one and no symbols."""
        if fact is None or fact.value is None:
            return None
        out = [as_int(v) for v in fact.value]
        return None if any(v is None for v in out) else out

    def _with_value(self, node, shape, value) -> Fact:
        keep = value is not None and out_dtype(node) in INT_TYPES and len(value) <= MAX_VALUE
        return Fact(shape, tuple(value) if keep else None)

    def _broadcast(self, node, shapes) -> Optional[tuple]:
        if any(s is None for s in shapes):
            return None
        rank = max(len(s) for s in shapes)
        padded = [(const(1),) * (rank - len(s)) + tuple(s) for s in shapes]
        out = []
        for d in range(rank):
            dims = [p[d] for p in padded]
            real = [x for x in dims if as_int(x) != 1]
            if not real:
                out.append(const(1))
            elif all(x == real[0] for x in real):
                out.append(real[0])
            else:
                static = [x for x in real if as_int(x) is not None]
                # a static size other than 1 is the output's (a symbolic one must equal it or be 1)
                out.append(static[0] if static and all(x == static[0] for x in static)
                           else sym(f"{node.name}:0:{d}"))
        return tuple(out)

    # --- the rules -----------------------------------------------------------------------------
    def _infer(self, node, ins: List[Optional[Fact]]) -> Dict[int, Fact]:
        op = node.op
        if op == "Placeholder":
            shape = node.attr["shape"].shape
            if shape.unknown_rank:
                return {0: Fact(None)}
            dims = tuple(const(d.size) if d.size >= 0 else sym(f"{node.name}:{i}") for i, d in enumerate(shape.dim))
            return {0: Fact(dims)}
        if op == "Const":
            value = const_value(node)
            small_int = value.dtype.kind in "iu" and value.size <= MAX_VALUE
            flat = [const(int(v)) for v in np.ravel(value)] if small_int else None
            return {0: self._with_value(node, tuple(const(d) for d in value.shape), flat)}
        x = ins[0] if ins else None
        if op in ("Shape", "Size"):
            if x is None or x.shape is None:
                return {}
            if op == "Size":
                total = const(1)
                for d in x.shape:
                    total = mul(total, d)
                return {0: self._with_value(node, (), [total])}
            return {0: self._with_value(node, (const(len(x.shape)),), list(x.shape))}
        if op in UNARY:
            if x is None:
                return {}
            int_out = op in ("Identity", "StopGradient", "Snapshot") or (
                op == "Cast" and node.attr["DstT"].type in INT_TYPES)
            return {0: self._with_value(node, x.shape, x.value if int_out else None)}
        if op in BINARY:
            return {0: self._binary(node, ins)}
        handler = getattr(self, "_op_" + op.lstrip("_"), None)
        if handler is None:
            return {}
        return handler(node, ins)

    def _binary(self, node, ins) -> Fact:
        a, b = ins[0], ins[1]
        shape = self._broadcast(node, [a.shape if a else None, b.shape if b else None])
        value = None
        if a and b and a.value is not None and b.value is not None and shape is not None and len(shape) <= 1:
            n = max(len(a.value), len(b.value))
            if len(a.value) in (1, n) and len(b.value) in (1, n):
                va = a.value * n if len(a.value) == 1 else a.value
                vb = b.value * n if len(b.value) == 1 else b.value
                fn = {"AddV2": add, "Add": add, "Sub": lambda p, q: add(p, neg(q)), "Mul": mul,
                      "FloorDiv": lambda p, q: div_exact(p, q) if as_int(q) and as_int(q) > 0 else None,
                      "Maximum": lambda p, q: const(max(as_int(p), as_int(q)))
                      if as_int(p) is not None and as_int(q) is not None else None,
                      "Minimum": lambda p, q: const(min(as_int(p), as_int(q)))
                      if as_int(p) is not None and as_int(q) is not None else None}.get(node.op)
                if fn is not None:
                    value = [fn(p, q) for p, q in zip(va, vb)]
                    value = None if any(v is None for v in value) else value
        return self._with_value(node, shape, value)

    def _op_StridedSlice(self, node, ins):
        x, b, e, s = ins[:4]
        strides = self._ints(s)
        if x is None or x.shape is None or b is None or e is None or b.value is None or e.value is None \
                or strides is None:
            return {}
        begin_p, end_p = b.value, e.value   # polynomials: a symbolic end equal to the dim is a full slice
        begin, end = [as_int(v) for v in begin_p], [as_int(v) for v in end_p]
        attr = {k: node.attr[k].i for k in ("begin_mask", "end_mask", "ellipsis_mask", "new_axis_mask",
                                           "shrink_axis_mask")}
        specs, rank = [], len(x.shape)
        n_new = bin(attr["new_axis_mask"] & ~attr["ellipsis_mask"]).count("1")
        for i in range(len(begin)):
            if attr["ellipsis_mask"] >> i & 1:
                specs += [None] * (rank - (len(begin) - 1 - n_new))
            elif attr["new_axis_mask"] >> i & 1:
                specs.append("new")
            else:
                specs.append((begin[i], end[i], strides[i], attr["begin_mask"] >> i & 1, attr["end_mask"] >> i & 1,
                              attr["shrink_axis_mask"] >> i & 1, end_p[i]))
        specs += [None] * (rank - (len(specs) - specs.count("new")))
        if len(specs) - specs.count("new") != rank:
            return {}
        shape, picks, dims = [], [], iter(enumerate(x.shape))
        for spec in specs:
            if spec == "new":
                shape.append(const(1))
                continue
            axis, dim = next(dims)
            if spec is None:
                shape.append(dim)
                picks.append(slice(None))
                continue
            b_, e_, s_, bm, em, shrink, e_poly = spec
            n = as_int(dim)
            if shrink:
                if b_ is None or (n is None and b_ < 0):
                    return {}
                picks.append(b_)
                continue
            whole = (bm or b_ == 0) and (em or e_poly == dim) and s_ == 1
            sl = slice(None if bm else b_, None if em else e_, s_)
            if whole:
                shape.append(dim)
            elif n is not None and (bm or b_ is not None) and (em or e_ is not None):
                shape.append(const(len(range(n)[sl])))
            else:
                shape.append(sym(f"{node.name}:0:{axis}"))
            picks.append(sl)
        value = None
        if x.value is not None and rank == 1 and "new" not in specs and \
                all(isinstance(p, int) or (p.start is None or isinstance(p.start, int)) and
                    (p.stop is None or isinstance(p.stop, int)) for p in picks):
            v = list(x.value)
            value = [v[picks[0]]] if isinstance(picks[0], int) else v[picks[0]]
        return {0: self._with_value(node, tuple(shape), value)}

    def _op_GatherV2(self, node, ins):
        params, indices, axis = ins[:3]
        ax = self._ints(axis)
        if params is None or params.shape is None or indices is None or indices.shape is None or ax is None:
            return {}
        if node.attr["batch_dims"].i:
            return {}
        a = ax[0] % len(params.shape)
        shape = params.shape[:a] + indices.shape + params.shape[a + 1:]
        value, idx = None, self._ints(indices)
        if params.value is not None and len(params.shape) == 1 and idx is not None:
            value = [params.value[i] for i in idx]
        return {0: self._with_value(node, tuple(shape), value)}

    def _op_Pack(self, node, ins):
        if any(f is None or f.shape is None for f in ins) or len({f.shape for f in ins}) != 1:
            return {}
        axis = node.attr["axis"].i
        base = list(ins[0].shape)
        axis = axis % (len(base) + 1)
        shape = tuple(base[:axis] + [const(len(ins))] + base[axis:])
        value = [f.value[0] for f in ins] if all(f.scalar and f.value is not None for f in ins) else None
        return {0: self._with_value(node, shape, value)}

    def _op_ConcatV2(self, node, ins):
        parts, ax = ins[:-1], self._ints(ins[-1])
        if ax is None or any(f is None or f.shape is None for f in parts) or len({len(f.shape) for f in parts}) != 1:
            return {}
        rank = len(parts[0].shape)
        a = ax[0] % rank
        total = const(0)
        for f in parts:
            total = add(total, f.shape[a])
        # every other axis must agree for ConcatV2 to run, so a part that knows a dim as a number knows it for all
        # (a decode step's past, sliced from a cache placeholder with unknown heads, beside the new keys' reshape)
        shape = tuple(total if i == a else next((f.shape[i] for f in parts if as_int(f.shape[i]) is not None),
                                                 parts[0].shape[i]) for i in range(rank))
        value = None
        if rank == 1 and all(f.value is not None for f in parts):
            value = [v for f in parts for v in f.value]
        return {0: self._with_value(node, shape, value)}

    def _reduce(self, node, ins, combine):
        x, axes = ins[0], self._ints(ins[1])
        if x is None or x.shape is None or axes is None:
            return {}
        rank = len(x.shape)
        axes = {a % rank for a in axes} if rank else set()
        keep = node.attr["keep_dims"].b
        shape = tuple(const(1) if i in axes else d for i, d in enumerate(x.shape) if keep or i not in axes)
        value = None
        if combine is not None and x.value is not None and rank == 1 and axes == {0}:
            acc = x.value[0] if x.value else const(1 if combine is mul else 0)
            for v in x.value[1:]:
                acc = combine(acc, v)
            value = [acc]
        return {0: self._with_value(node, shape, value)}

    def _op_Prod(self, node, ins):
        return self._reduce(node, ins, mul)

    def _op_Sum(self, node, ins):
        return self._reduce(node, ins, add)

    def _op_Mean(self, node, ins):  # also Max, Min, All: the shape of a reduction, no value
        return self._reduce(node, ins, None)

    _op_Max = _op_Min = _op_All = _op_Mean

    def _op_Reshape(self, node, ins):
        x, target = ins[0], ins[1]
        if target is None or target.value is None:
            return {}
        dims = list(target.value)
        holes = [i for i, d in enumerate(dims) if as_int(d) == -1]
        if len(holes) > 1:
            return {}
        if holes:
            known = const(1)
            for i, d in enumerate(dims):
                if i != holes[0]:
                    known = mul(known, d)
            total = None
            if x is not None and x.shape is not None:
                total = const(1)
                for d in x.shape:
                    total = mul(total, d)
            hole = div_exact(total, known) if total is not None else None
            dims[holes[0]] = hole if hole is not None else sym(f"{node.name}:0:{holes[0]}")
        value = x.value if x is not None and x.value is not None and len(dims) <= 1 else None
        return {0: self._with_value(node, tuple(dims), value)}

    def _op_ExpandDims(self, node, ins):
        x, ax = ins[0], self._ints(ins[1])
        if x is None or x.shape is None or ax is None:
            return {}
        a = ax[0] % (len(x.shape) + 1)
        shape = x.shape[:a] + (const(1),) + x.shape[a:]
        return {0: self._with_value(node, shape, x.value if len(shape) <= 1 else None)}

    def _op_Squeeze(self, node, ins):
        x = ins[0]
        if x is None or x.shape is None:
            return {}
        axes = {a % len(x.shape) for a in node.attr["squeeze_dims"].list.i}
        if not axes:
            axes = {i for i, d in enumerate(x.shape) if as_int(d) == 1}
        shape = tuple(d for i, d in enumerate(x.shape) if i not in axes)
        return {0: self._with_value(node, shape, x.value if len(shape) <= 1 else None)}

    def _op_Transpose(self, node, ins):
        x, perm = ins[0], self._ints(ins[1])
        if x is None or x.shape is None or perm is None:
            return {}
        return {0: Fact(tuple(x.shape[p] for p in perm))}

    _op_MklTranspose = _op_Transpose

    def _op_MatMul(self, node, ins):
        a, b = ins[0], ins[1]
        if a is None or b is None or a.shape is None or b.shape is None:
            return {}
        m = a.shape[1] if node.attr["transpose_a"].b else a.shape[0]
        n = b.shape[0] if node.attr["transpose_b"].b else b.shape[1]
        return {0: Fact((m, n))}

    _op_MklMatMul = _op_MatMul
    _op_MklQuantizedMatMulWithBiasAndDequantize = _op_MatMul

    def _op_BatchMatMulV2(self, node, ins):
        x, y = ins[0], ins[1]
        if x is None or y is None or x.shape is None or y.shape is None:
            return {}
        batch = self._broadcast(node, [x.shape[:-2], y.shape[:-2]])
        m = x.shape[-1] if node.attr["adj_x"].b else x.shape[-2]
        n = y.shape[-2] if node.attr["adj_y"].b else y.shape[-1]
        return {0: Fact(tuple(batch) + (m, n))}

    _op_MklBatchMatMulV2 = _op_BatchMatMulV2

    def _op_Tile(self, node, ins):
        x, mult = ins[0], ins[1]
        if x is None or x.shape is None or mult is None or mult.value is None or len(mult.value) != len(x.shape):
            return {}
        return {0: Fact(tuple(mul(d, m) for d, m in zip(x.shape, mult.value)))}

    def _op_Range(self, node, ins):
        start, limit, delta = (self._ints(f) for f in ins[:3])
        if ins[1] is None or ins[1].value is None:
            return {0: Fact(self._fresh(node, 0, 1))}
        length = None
        if start == [0] and delta == [1]:
            length = ins[1].value[0]
        elif start is not None and delta is not None and (self._ints(ins[1]) is not None):
            length = const(len(range(start[0], self._ints(ins[1])[0], delta[0])))
        elif delta == [1] and ins[0] is not None and ins[0].value is not None:
            # range(past, past + q): limit - start, where that is a sum of dims (never negative, so never empty)
            diff = add(ins[1].value[0], neg(ins[0].value[0]))
            if all(c > 0 for _, c in diff):
                length = diff
        return {0: Fact((length,) if length is not None else self._fresh(node, 0, 1))}

    def _op_Einsum(self, node, ins):
        """Explicit equations without an ellipsis ("i,j->ij"): each output letter's size from an input."""
        eq = node.attr["equation"].s.decode()
        if "..." in eq or "->" not in eq:
            return {}
        lhs, out = eq.split("->")
        sizes = {}
        for spec, f in zip(lhs.split(","), ins):
            if f is None or f.shape is None or len(spec) != len(f.shape):
                return {}
            for letter, dim in zip(spec, f.shape):
                if as_int(dim) != 1 or letter not in sizes:
                    sizes[letter] = dim
        return {0: Fact(tuple(sizes[c] for c in out))}

    _op_MklEinsum = _op_Einsum

    def _op_Fill(self, node, ins):
        dims = ins[0]
        return {0: Fact(tuple(dims.value))} if dims is not None and dims.value is not None else {}

    def _op_BroadcastTo(self, node, ins):
        return self._op_Fill(node, ins[1:])

    def _op_SelectV2(self, node, ins):
        return {0: Fact(self._broadcast(node, [f.shape if f else None for f in ins[:3]]))}

    def _op_BiasAdd(self, node, ins):
        return {0: Fact(ins[0].shape)} if ins[0] is not None else {}

    def _op_Unpack(self, node, ins):
        x = ins[0]
        if x is None or x.shape is None:
            return {}
        a = node.attr["axis"].i % len(x.shape)
        shape = x.shape[:a] + x.shape[a + 1:]
        return {i: Fact(shape) for i in range(node.attr["num"].i)}

    def _op_SplitV(self, node, ins):
        x, sizes, ax = ins[0], self._ints(ins[1]), self._ints(ins[2])
        if x is None or x.shape is None or sizes is None or ax is None or -1 in sizes:
            return {}
        a = ax[0] % len(x.shape)
        return {i: Fact(x.shape[:a] + (const(s),) + x.shape[a + 1:]) for i, s in enumerate(sizes)}

    def _op_Split(self, node, ins):
        ax, x, n = self._ints(ins[0]), ins[1], node.attr["num_split"].i
        if x is None or x.shape is None or ax is None:
            return {}
        a = ax[0] % len(x.shape)
        piece = div_exact(x.shape[a], const(n))
        piece = piece if piece is not None else sym(f"{node.name}:0:{a}")  # (then every piece has that size)
        return {i: Fact(x.shape[:a] + (piece,) + x.shape[a + 1:]) for i in range(n)}

    def _op_MklQuantizeV2(self, node, ins):
        x = ins[0]
        return {0: Fact(x.shape if x else None), 1: Fact(()), 2: Fact(())}

    _op_QuantizeV2 = _op_MklQuantizeV2

    def _op_ReadVariableOp(self, node, ins):
        shape = self.resource_shapes.get(parse_input(self.graph.skip_identity(node.input[0]))[0])
        return {0: Fact(tuple(const(d) for d in shape))} if shape is not None else {}

    def _op_ResourceGather(self, node, ins):
        table = self.resource_shapes.get(parse_input(self.graph.skip_identity(node.input[0]))[0])
        indices = ins[1]
        if table is None or indices is None or indices.shape is None or node.attr["batch_dims"].i:
            return {}
        return {0: Fact(indices.shape + tuple(const(d) for d in table[1:]))}

    def _op_Switch(self, node, ins):
        x = ins[0]
        return {0: Fact(x.shape, x.value), 1: Fact(x.shape, x.value)} if x is not None else {}

    def _op_Merge(self, node, ins):
        shapes = {f.shape for f in ins if f is not None}
        if len(shapes) == 1 and len([f for f in ins if f is not None]) == len(ins):
            return {0: Fact(shapes.pop()), 1: Fact(())}
        return {}

