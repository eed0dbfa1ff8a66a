"""ONNX export of a lowered graph: a step graph, a sequence graph (``Scan`` around the same step
body) and a QONNX step graph.

Every op of ``hwmap.ops`` becomes standard ONNX nodes (``NODES``: its primitives as nodes) that
reproduce the integer reference bit for bit: codes travel as float64 tensors holding exact
integers (every sum stays below 2^52), or float32 where the op computes in float32; the
fixed-point requantization is Mul by the integer multiplier, Add 2^(S−1), Mul 2^−S, Floor, Clip.
At batch 1 onnxruntime spends about as long per node as on its arithmetic, so the emitter writes
few nodes (``Emitter``): constants are folded at export (an integer weight times its multiplier
is one float64 initializer), an input of one scalar per sample becomes a table over its codes,
float32 stays float32 between casts, and some ops are written fused (``FUSED``, ``_s4d``); every
rewrite is exact (the conditions are checked at export, else the op's own nodes are written).
Integers at the boundary: the float input goes through ``QuantizeLinear`` with its real scale;
states (and per-site codes) leave through ``QuantizeLinear`` (zero point, integer type) and come
back through ``DequantizeLinear`` (int32 states through Cast).  In the QONNX file each such pair
is a single ``Quant`` node (domain ``qonnx.custom_op.general``).

Opset 21 (int16 Q/DQ); IR version 10; the batch axis is dynamic everywhere.
"""

import dataclasses
from functools import reduce
from operator import add
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from . import intref
from .graph import Graph, State, atomic_path
from .ops import Symbolic

OPSET = 21
QONNX_DOMAIN = "qonnx.custom_op.general"
INT_TYPES = (np.int8, np.uint8, np.int16, np.uint16, np.int32)  # Q/DQ takes up to 16 bits


def code_type(lo: int, hi: int):
    """The narrowest integer type holding stored codes in [lo, hi]: (numpy type, ONNX type,
    Q/DQ-able)."""
    for np_type in INT_TYPES:
        info = np.iinfo(np_type)
        if info.min <= lo and hi <= info.max:
            return np_type, helper.np_dtype_to_tensor_dtype(np.dtype(np_type)), info.bits <= 16
    raise ValueError(f"codes in [{lo}, {hi}] need more than 32 bits")


EXACT_TYPES = {  # Q/DQ types by their whole range: saturating to it is clipping codes to it
    (-8, 7): TensorProto.INT4,
    (0, 15): TensorProto.UINT4,
    (-128, 127): TensorProto.INT8,
    (0, 255): TensorProto.UINT8,
    (-(2**15), 2**15 - 1): TensorProto.INT16,
    (0, 2**16 - 1): TensorProto.UINT16,
}
TABLE_LIMIT = 2**18  # the most elements a table (below) may hold
DOUBLE, FLOAT, INT64 = TensorProto.DOUBLE, TensorProto.FLOAT, TensorProto.INT64
DTYPES = {DOUBLE: np.dtype(np.float64), FLOAT: np.dtype(np.float32), INT64: np.dtype(np.int64)}


class Val(Symbolic):
    """A tensor of the graph being written, one of: a node's output (``name``); a constant,
    folded at export (``value``); a table (``value``; its axis ``table`` runs over the codes of
    the emitter's index where the batch axis would be); or a node written when a node first
    reads it: a product ``x · c`` (``scaled``), the float64 view of a float32 tensor (``f32``),
    a node ``make`` writes.  Known where it applies: ``bound`` (integer values, |v| ≤ bound),
    ``stacked`` ((stack, k): this is stack[k]), ``gemm`` ((x, B, C): this is x·B + C, exact),
    ``negated`` (a node holding −this), ``code`` ((tensor, numpy type, lo, hi): an integer
    tensor whose values clipped to [lo, hi] are these)."""

    def __init__(
        self,
        e,
        name=None,
        dtype=np.float64,
        value=None,
        table=None,
        *,
        scaled=None,
        f32=None,
        make=None,
        bound=None,
        stacked=None,
        gemm=None,
        negated=None,
        code=None,
    ):
        self.e, self.name, self.value, self.table = e, name, value, table
        self.dtype = np.dtype(dtype if value is None else value.dtype)
        self.scaled, self.f32, self.make, self.bound = scaled, f32, make, bound
        self.stacked, self.gemm, self.negated, self.code = stacked, gemm, negated, code

    @property
    def node(self) -> bool:
        return self.value is None

    def apply(self, prim: str, *args) -> "Val":
        return self.e.prim(prim, *args)


def _is_pow2(c: np.ndarray) -> bool:
    a = np.abs(c.astype(np.float64))
    return bool(np.all(np.frexp(a)[0] == 0.5) and a.min() >= 2.0**-100 and a.max() <= 2.0**50)


class Emitter:
    """Writes nodes for lowered ops (``op``); the ops' tensors are ``Val``s, float64 unless the
    op casts to float32.  Constants are folded at export with numpy, each tensor in the dtype
    onnxruntime would hold it in.  With ``table`` (an input of one scalar per sample, quantized
    to at most 256 codes), everything computed from those codes and constants alone is folded
    into a table over the codes and read with one ``Gather`` where a node needs it.
    ``name_ops`` names every op's output after the op (an Identity); ``shapes`` (per-sample
    shapes of the ops' outputs) and ``formats`` (the graph's) let ``ops`` fuse ops."""

    def __init__(self, consts: dict, prefix="", qonnx=False, table=False, name_ops=True, **graph):
        self.consts, self.prefix, self.qonnx, self.table = consts, prefix, qonnx, table
        self.name_ops = name_ops
        self.shapes, self.formats = graph.get("shapes", {}), graph.get("formats", {})
        self.nodes: list = []
        self.outputs: set[str] = set()  # the graph outputs written
        self.inits: dict[str, onnx.TensorProto] = {}
        self.env: dict[str, Val] = {}
        self.folded: dict[str, Val] = {}  # the graph's constants as Vals (initializers once)
        self.memo: dict = {}  # nodes written once for several readers
        self.index = None  # (int64 index (B,), codes' row roll) of the tables
        self.n = 0
        self.hint = ""  # the output of the op being written: its nodes are named after it

    def tmp(self, hint: str) -> str:
        self.n += 1
        return f"{self.prefix}{hint}/{self.n}"

    def init(self, name: str, value) -> str:
        name = self.prefix + name
        if name not in self.inits:
            self.inits[name] = numpy_helper.from_array(np.asarray(value), name)
        return name

    def scalar(self, value: float, dtype=np.float64) -> str:
        return self.init(f"c/{np.dtype(dtype).name}/{value!r}", np.asarray(value, dtype))

    def const(self, value) -> Val:
        return Val(self, value=np.asarray(value))

    # ---- the integer boundary: codes of an integer type ↔ exact float64 values

    def zero_point(self, np_type, zp: int) -> str:
        z = np.asarray(zp, dtype=np_type)
        return self.init(f"c/zp_{z.dtype.name}_{zp}", z)

    def typed_zero(self, onnx_type: int, zp: int) -> str:
        """A zero point of an ONNX integer type (also the 4-bit ones numpy has no type for)."""
        name = f"{self.prefix}c/zp_t{onnx_type}_{zp}"
        if name not in self.inits:
            self.inits[name] = helper.make_tensor(name, onnx_type, [], [zp])
        return name

    def unit_scale(self, np_type, zp: int) -> list[str]:
        """Scale 1 and the zero point: the parameters of a Q/DQ pair over stored codes."""
        return [self.init("c/one_f32", np.float32(1)), self.zero_point(np_type, zp)]

    def from_code(self, code: str, zp: int, np_type, hint: str) -> Val:
        """Stored codes of a Q/DQ type → the centered codes, float32 (its float64 view on use)."""
        info = np.iinfo(np_type)
        bound = max(abs(info.min - zp), abs(info.max - zp))
        if self.qonnx:  # a Quant node over the float codes (scale 1, the zero point, the width)
            f = self.node("Cast", [code], hint, to=FLOAT)
            v = self.quant(f, zp, np_type, hint, dequant=True)
        else:
            v = self.node("DequantizeLinear", [code, *self.unit_scale(np_type, zp)], hint)
        return Val(self, f32=Val(self, v, np.float32, bound=bound), bound=bound)

    def to_code(self, value: Val, zp: int, np_type, onnx_type, out: str) -> None:
        """Centered codes → stored codes of a Q/DQ type, the tensor ``out``."""
        if value.stacked is not None and not self.qonnx:  # one QuantizeLinear for the stack
            stack, k = value.stacked
            key = ("QuantizeLinear", stack.f32.name, zp)
            if key not in self.memo:
                self.memo[key] = self.node(
                    "QuantizeLinear", [stack.f32, *self.unit_scale(np_type, zp)]
                )
            take = [self.memo[key], self.scalar(k, np.int32)]  # int32: see _s4d
            self.nodes.append(helper.make_node("Gather", take, [out], axis=0))
            return
        f = self.lift(self.f32(value))
        if self.qonnx:
            q = self.quant(f, zp, np_type, out, dequant=False)
            self.nodes.append(helper.make_node("Cast", [q], [out], to=onnx_type))
        else:
            q_inputs = [f, *self.unit_scale(np_type, zp)]
            self.nodes.append(helper.make_node("QuantizeLinear", q_inputs, [out]))

    def from_state(self, name: str, s: State) -> Val:
        """The centered codes of state ``s`` from its tensor ``name`` (``state_type``)."""
        np_type, _, qdq = state_type(s)
        if qdq:
            return self.from_code(name, s.zp, np_type, s.name)
        v = Val(self, name, bound=max(abs(s.lo), abs(s.hi)))  # float64: the stored codes
        return v - float(s.zp) if s.zp else v

    def to_state(self, value: Val, s: State, out: str) -> None:
        """The stored codes of state ``s`` as the tensor ``out`` (``state_type``)."""
        np_type, onnx_type, qdq = state_type(s)
        if qdq:
            self.to_code(value, s.zp, np_type, onnx_type, out)
        else:
            self.output(value + float(s.zp) if s.zp else value, out)

    def quant(self, f: str, zp: int, np_type, hint: str, dequant: bool) -> str:
        """QONNX ``Quant``: the stored integer grid of ``np_type`` at scale 1 around ``zp``."""
        info = np.iinfo(np_type)
        if not dequant:
            f = self.node("Add", [f, self.init(f"c/f{zp}", np.float32(zp))], hint)
        one, zero = self.init("c/one_f32", np.float32(1)), self.init("c/zero_f32", np.float32(0))
        bits = self.init(f"c/bits{info.bits}", np.float32(info.bits))
        attrs = {"signed": int(info.min < 0), "narrow": 0, "rounding_mode": "ROUND"}
        q = self.node("Quant", [f, one, zero, bits], hint, domain=QONNX_DOMAIN, **attrs)
        return self.node("Sub", [q, self.init(f"c/f{zp}", np.float32(zp))], hint) if dequant else q

    # ---- the ops' backend: primitives fold, or add nodes named after the op (hint)

    def lift(self, v) -> str:
        """The tensor name of a Val (writing what it still needs), a name, or a number (a
        float64 scalar initializer)."""
        if isinstance(v, str):
            return v
        if not isinstance(v, Val):
            return self.scalar(float(v))
        if v.name is None:
            if v.make is not None:
                v.name = v.make()
            elif v.table is not None:
                table = np.roll(v.value, self.index[1], axis=v.table)
                data = self.init(self.fresh("table"), table)
                v.name = self.node("Gather", [data, self.index[0]], axis=v.table)
            elif v.value is not None:
                v.name = self.init(self.fresh("const"), v.value)
            elif v.f32 is not None:
                v.name = self.node("Cast", [v.f32], to=DOUBLE)
            else:
                x, c = v.scaled
                v.name = self.node("Mul", [x, self.const(c)])
        return v.name

    def fresh(self, kind: str) -> str:
        self.n += 1
        return f"{self.hint}/{kind}{self.n}"

    def node(self, op: str, inputs: list, hint: str | None = None, domain=None, **attrs) -> str:
        out = self.tmp(hint or self.hint)
        names = [self.lift(i) for i in inputs]
        self.nodes.append(helper.make_node(op, names, [out], domain=domain, **attrs))
        return out

    def apply(self, op: str, *inputs, **attrs) -> Val:
        if op == "Cast":
            dtype = DTYPES[attrs["to"]]
        else:
            dtype = next((i.dtype for i in inputs if isinstance(i, Val)), np.float64)
        return Val(self, self.node(op, list(inputs), **attrs), dtype)

    def __getattr__(self, prim: str):
        if prim in NODES:
            return lambda *args: self.prim(prim, *args)
        raise AttributeError(prim)

    def prim(self, prim: str, *args) -> Val:
        """A primitive on Vals and numbers: folded when no argument is a node, else rewritten
        (``RULES``) or written as ONNX nodes (``NODES``)."""
        folded = self.fold(prim, args)
        if folded is not None:
            return folded
        if prim in RULES:
            ruled = RULES[prim](self, *args)
            if ruled is not None:
                return ruled
        return NODES[prim](self, *args)

    def fold(self, prim: str, args) -> Val | None:
        vals = [a for a in args if isinstance(a, Val)]
        if any(v.node for v in vals) or prim not in FOLD:
            return None
        axis = _table_axis(prim, args)
        if axis is False:
            return None
        value = np.asarray(FOLD[prim](*(a.value if isinstance(a, Val) else a for a in args)))
        if axis is not None and value.size > TABLE_LIMIT:
            return None
        return Val(self, value=value, table=axis)

    def get(self, name: str) -> Val:
        if name in self.env:
            return self.env[name]
        if name in self.consts:
            if name not in self.folded:
                self.folded[name] = self.const(np.asarray(self.consts[name]).astype(np.float64))
            return self.folded[name]
        return Val(self, self.prefix + name, np.float32 if name == "x" else np.float64)

    def quantize(self, src: str, scale: str, zp: int, lo: int, hi: int) -> Val:
        np_type, onnx_type, _ = code_type(min(lo + zp, 0), max(hi + zp, 0))
        s = self.init(scale, self.consts[scale].astype(np.float32))
        z = self.zero_point(np_type, zp)
        x, hint = self.lift(self.get(src)), self.hint
        if self.qonnx:  # Quant at scale 1 on x / scale: the same rounding as QuantizeLinear
            code = self.quant(self.node("Div", [x, s]), zp, np_type, hint, dequant=False)
            v = self.node("Sub", [code, self.init(f"c/f{zp}", np.float32(zp))])
            return self.apply("Cast", v, to=DOUBLE)
        if not (self.table and self.index is None and hi - lo < 256):
            return self.from_code(self.node("QuantizeLinear", [x, s, z]), zp, np_type, hint)
        # the table's index: the stored code clipped, as int64; row i holds code lo + i
        qlo, qhi = lo + zp, hi + zp
        exact = EXACT_TYPES.get((qlo, qhi))
        if exact is not None:  # QuantizeLinear to a type of just that range clips
            code = self.node("QuantizeLinear", [x, s, self.typed_zero(exact, zp)])
            index = self.node("Cast", [code], to=INT64)
        else:
            code = self.node("QuantizeLinear", [x, s, z])
            bounds = [self.scalar(q, np_type) for q in (qlo, qhi)]
            index = self.node("Cast", [self.node("Clip", [code, *bounds])], to=INT64)
        index = self.node("Reshape", [index, self.init("c/flat", np.int64([-1]))])
        roll = qlo  # Gather reads negative indices from the end: rows rolled by the lowest code
        if not qlo <= 0 <= qhi + 1:
            index, roll = self.node("Sub", [index, self.scalar(qlo, np.int64)]), 0
        self.index = (index, roll)
        return Val(self, value=np.arange(lo, hi + 1, dtype=np.float64)[:, None], table=0)

    def halves(self, v: Val, axis: int = -1) -> tuple[Val, Val]:
        """The two halves of the last axis (or ``axis``); of a Gemm not yet written, one Gemm
        per half, the second negated (the second half is then the negation of a node, which
        GLU's sigmoid takes the negation of)."""
        if not v.node:
            a, g = np.split(v.value, 2, axis=axis)
            return Val(self, value=a, table=v.table), Val(self, value=g, table=v.table)
        if v.name is None and v.gemm is not None and axis == -1:
            x, b, c = v.gemm
            n = b.shape[1] // 2  # exact as the Gemm is; two cost less than one and a Split
            a = Val(self, self.node("Gemm", [x, self.const(b[:, :n]), self.const(c[:n])]))
            ng = Val(self, self.node("Gemm", [x, self.const(-b[:, n:]), self.const(-c[n:])]))
            return a, Val(self, make=lambda: self.node("Neg", [ng]), negated=ng)
        a, g = self.tmp(self.hint), self.tmp(self.hint)
        split = helper.make_node("Split", [self.lift(v)], [a, g], axis=axis, num_outputs=2)
        self.nodes.append(split)
        return Val(self, a, v.dtype), Val(self, g, v.dtype)

    def set(self, value: Val, out: str) -> None:
        self.env[out] = value

    def output(self, value: Val, name: str) -> None:
        """Writes ``value`` as the tensor ``name`` (a graph output): the node that wrote it
        renames its output when no node has read it yet, else an Identity."""
        src = self.lift(value)
        writer = next((n for n in reversed(self.nodes) if src in n.output), None)
        read = any(src in n.input for n in self.nodes) or src in self.outputs
        if isinstance(value, Val) and writer is not None and not read:
            writer.output[list(writer.output).index(src)] = value.name = name
        else:
            self.nodes.append(helper.make_node("Identity", [src], [name]))
        self.outputs.add(name)

    def op(self, op) -> None:
        self.hint = op.out
        fused = FUSED[op.kind](self, op) if op.kind in FUSED else None
        self.set(op.eval(self) if fused is None else fused, op.out)
        if self.name_ops:
            self.output(self.env[op.out], self.prefix + op.out)

    def ops(self, ops: list) -> None:
        """``op`` of each, two S4D state updates over the same inputs (and the readout of both
        that follows) written as one over a stacked axis."""
        i = 0
        while i < len(ops):
            n = _s4d(self, ops[i : i + 3])
            if not n:
                self.op(ops[i])
            i += n or 1

    def graph(self, name: str, inputs: list, outputs: list) -> onnx.GraphProto:
        return helper.make_graph(self.nodes, name, inputs, outputs, list(self.inits.values()))


def _table_axis(prim: str, args):
    """The codes' axis of the result of ``prim`` on constants and tables (None: no table; False:
    the codes' axis would not stay one axis of the result).  Constants broadcast over it as over
    the batch (of size 1 there, or of lower rank); matmul is by a matrix; gather reads a 1-d
    table; a concatenation takes no constants."""
    arrays = [a for a in args if isinstance(a, Val)]
    tables = [a for a in arrays if a.table is not None]
    if not tables:
        return None
    consts = [a.value for a in arrays if a.table is None]
    rank = max(a.value.ndim for a in arrays)
    axes = {rank - t.value.ndim + t.table for t in tables}
    if len(axes) > 1:
        return False
    (axis,) = axes
    if prim == "matmul":
        return (
            axis if args[0].table is not None and consts[0].ndim == 2 and axis < rank - 1 else False
        )
    if prim == "gather":
        return axis if args[0].table is None and consts[0].ndim == 1 else False
    if prim in ("concat_last", "sum_last", "sum_keep", "unsqueeze_last", "drop_last", "slice_last"):
        return axis if not consts and axis < rank - 1 else False
    for c in consts:
        at = c.ndim - (rank - axis)
        if 0 <= at and c.shape[at] != 1:
            return False
    return axis


def _node(op: str):
    return lambda e, *inputs: e.apply(op, *inputs)


def _last(e: Emitter, name: str = "axis_last", value: int = -1) -> str:
    return e.init(f"c/{name}", np.int64([value]))


NODES = {  # the ops' primitives (see hwmap.ops) as ONNX nodes
    **{
        p: _node(p.capitalize())
        for p in ("add", "sub", "mul", "div", "neg", "exp", "sqrt", "abs", "sign", "floor")
    },
    "matmul": _node("MatMul"),
    "clip": lambda e, v, lo, hi: e.apply("Clip", v, float(lo), float(hi)),
    "sum_last": lambda e, v: e.apply("ReduceSum", v, _last(e), keepdims=0),
    "sum_keep": lambda e, v: e.apply("ReduceSum", v, _last(e), keepdims=1),
    "shr": lambda e, v, shift: e.floor(v * 2.0**-shift),
    "float": lambda e, v: v,
    "codes": lambda e, v: v,
    "gather": lambda e, t, i: e.apply("Gather", t, e.apply("Cast", i, to=INT64), axis=0),
    "arange": lambda e, n: e.const(np.arange(n, dtype=np.float64)),
    "positive": lambda e, v: e.apply("Cast", e.apply("Greater", v, 0.0), to=DOUBLE),
    "unsqueeze_last": lambda e, v: e.apply("Unsqueeze", v, _last(e)),
    "drop_last": lambda e, v: e.apply("Slice", v, _last(e, "zero_i64", 0), _last(e), _last(e)),
    "concat_last": lambda e, a, b: e.apply("Concat", a, b, axis=-1),
    "slice_last": lambda e, v, a, c: e.apply(
        "Slice", v, _last(e, f"i{a}", a), _last(e, f"i{c}", c), _last(e)
    ),
    "f32": lambda e, v: e.apply("Cast", v, to=FLOAT),
    "rint": lambda e, v: e.apply("Cast", e.apply("Round", v), to=DOUBLE),  # half to even
}

FOLD = {  # the integer reference's primitives over numpy arrays, in the ONNX graph's dtypes
    **{p: f for p, f in intref.NUMPY.items() if p not in ("arange", "halves")},  # (not folded)
    "add": np.add,
    "sub": np.subtract,
    "mul": np.multiply,
    "div": np.divide,
    "neg": np.negative,
    "shr": lambda v, shift: np.floor(v * 2.0**-shift),  # codes are float64 here
    "float": lambda v: v,
    "codes": lambda v: v,
    "gather": lambda t, i: t[i.astype(np.int64)],
    "positive": lambda v: (v > 0).astype(np.float64),
}


def _f32(e: Emitter, v: Val) -> Val | None:
    """float32 of a float64 view of a float32 tensor: that tensor."""
    return v.f32 if v.f32 is not None else None


def _rint(e: Emitter, v: Val) -> Val | None:
    """Round of float32 stays float32 (exact integers), its float64 view written on use."""
    if v.dtype == np.float32:
        return Val(e, f32=Val(e, e.node("Round", [v]), np.float32))
    return None


def _clip(e: Emitter, v: Val, lo, hi) -> Val | None:
    """Clip of the float64 view of float32 integers to float32-exact bounds: in float32."""
    if v.f32 is None or np.float32(lo) != lo or np.float32(hi) != hi:
        return None
    bounds = [e.scalar(float(b), np.float32) for b in (lo, hi)]
    bound = max(abs(lo), abs(hi))
    clipped = Val(e, e.node("Clip", [v.f32, *bounds]), np.float32, bound=bound)
    return Val(e, f32=clipped, bound=bound)


def _mul(e: Emitter, a, b) -> Val | None:
    """x · c (c a constant) is written on use; c₁ · (x · c₂) of float32 integers x, c₂ powers
    of two, is (c₁·c₂) · x where c₁·c₂ is exact (x·c₂ is exact: both round c₁·c₂·x once);
    x · 1 is x."""
    if isinstance(a, Val) and not a.node and not (isinstance(b, Val) and not b.node):
        a, b = b, a  # the constant second
    c = b.value if isinstance(b, Val) and not b.node and b.table is None else None
    if c is None or not isinstance(a, Val):
        return None
    if c.ndim == 0 and c == 1:
        return a
    if a.scaled is not None and a.dtype == c.dtype == np.float32:
        x, c2 = a.scaled
        c12 = c * c2
        if _is_pow2(c2) and np.array_equal(c12.astype(np.float64), c.astype(np.float64) * c2):
            return e.prim("mul", x, e.const(c12))
    if a.bound is not None and a.dtype == c.dtype == np.float32 and a.bound <= 2**24:
        return Val(e, dtype=np.float32, scaled=(a, c))
    return None


def _div(e: Emitter, a, b) -> Val | None:
    """1 / v as Reciprocal: onnxruntime would fuse Div(1, v) into a following Mul (a · (1/v) →
    a / v), which rounds differently."""
    if isinstance(a, (int, float)) and a == 1 and isinstance(b, Val) and b.node:
        return e.apply("Reciprocal", b)
    return None


def _neg(e: Emitter, v) -> Val | None:
    return v.negated if isinstance(v, Val) else None


RULES = {"f32": _f32, "rint": _rint, "clip": _clip, "mul": _mul, "div": _div, "neg": _neg}


# ---- ops written as fewer nodes than their primitives (the same arithmetic, tested bit-exact)


def _lut(e: Emitter, op) -> Val | None:
    """One table, codes in reach of Gather's negative indices: Gather by the code itself, the
    table's rows rolled by the offset; codes held by an 8-bit tensor before their clip
    (``Val.code``): Gather by that tensor from a table over its type's every code, the clip's."""
    src, table = e.get(op.src), np.asarray(e.consts[op.table], np.float64)
    if not src.node or op.channels != 1:
        return None
    if src.code is not None and op.offset <= src.code[2] and src.code[3] < op.offset + len(table):
        q, np_type, lo, hi = src.code
        codes = np.arange(np.iinfo(np_type).min, np.iinfo(np_type).max + 1)
        every = np.empty(len(codes))
        every[codes % len(codes)] = table[np.clip(codes, lo, hi) - op.offset]  # c < 0 from the end
        index = e.node("Cast", [q], to=INT64)
        return Val(e, e.node("Gather", [e.init(f"{op.table}:{np_type.__name__}", every), index]))
    if not op.offset <= 0 <= op.offset + len(table):
        return None
    index = e.node("Cast", [src.f32 if src.f32 is not None else src], to=INT64)
    rolled = e.init(f"{op.table}:rolled", np.roll(table, op.offset))
    return Val(e, e.node("Gather", [rolled, index], axis=0))


def _dyadic(v: np.ndarray) -> int | None:
    """The smallest k with v · 2^k integer everywhere (None past 2^60)."""
    for k in range(61):
        if np.all(np.ldexp(v, k) == np.round(np.ldexp(v, k))):
            return k
    return None


def _real(e: Emitter, op) -> Val | None:
    """Integer codes @ an integer matrix × dyadic scales + a constant: every product and partial
    sum is a multiple of 2^−k below 2^(53−k), so exact in any order: one Gemm of the matrix
    times its scales."""
    if len(op.terms) != 2 or [t.kind for t in op.terms] != ["matmul", "const"]:
        return None
    mm, const = op.terms
    fmt = e.formats.get(mm.inputs[0])
    w = np.asarray(e.consts.get(mm.inputs[1], 0.5))  # 0.5: not an integer matrix
    x = e.get(mm.inputs[0])
    if fmt is None or not x.node or len(e.shapes.get(mm.inputs[0], ())) != 1 or w.ndim != 2:
        return None
    scale = np.asarray(e.consts[mm.weight], np.float64)
    c = e.get(const.inputs[0]).value * e.get(const.weight).value  # the folded constant term
    k = _dyadic(np.concatenate([scale.ravel(), np.ravel(c)]))
    total = fmt.bound * np.abs(w).sum(0) * np.abs(scale) + np.abs(c)
    if k is None or np.any(np.ldexp(total, k) >= 2.0**53) or c.ndim > 1:
        return None
    b, c = w * scale, np.broadcast_to(c, w.shape[1:])
    return Val(e, make=lambda: e.node("Gemm", [x, e.const(b), e.const(c)]), gemm=(x, b, c))


FUSED = {"lut": _lut, "real": _real}


def _divides_exactly(s: np.ndarray, terms: list) -> bool:
    """Whether Σ fᵢ·(xᵢ·gᵢ) / s equals Σ (fᵢ/s)·(xᵢ·gᵢ) bit for bit: s powers of two; a folded
    term (a table) exactly 1/s of itself; for a term of integer codes xᵢ, gᵢ powers of two and
    the nonzero |fᵢ·gᵢ/s| ≥ 2^−100, so that no product of a nonzero code is subnormal.  Scaling
    by a power of two then commutes with every rounding: products and sums stay normal, or a sum
    that underflows is exact (and so is its scaled twin)."""
    if not _is_pow2(s):
        return False
    for x, f, g in terms:
        if x.table is not None:
            p = (f.value * (x.value * g.value)).astype(np.float32)
            if not np.array_equal((f.value / s) * (x.value * g.value) * s, p):
                return False
        elif (
            x.bound is None or not _is_pow2(g.value) or not np.array_equal(f.value / s * s, f.value)
        ):
            return False
        else:
            fg = np.abs(f.value.astype(np.float64) * g.value / s)
            if fg[fg > 0].min(initial=1.0) < 2.0**-100 or fg.max() * x.bound > 2.0**100:
                return False
    return True


def _stack(a, b, rank: int) -> np.ndarray:
    """Two constants broadcast to one shape and stacked on a leading axis, shaped (2, 1, …) to
    broadcast over the batch of tensors of ``rank`` per-sample axes."""
    v = np.stack(np.broadcast_arrays(np.asarray(a), np.asarray(b)))
    return v.reshape(2, 1, *[1] * (rank - v.ndim + 1), *v.shape[1:])


def _s4d(e: Emitter, ops: list) -> int:
    """Two ``Float32Update`` ops over the same inputs (an S4D state's real and imaginary parts)
    as one over a leading axis of 2 (the first op's constants, then the second's); a
    ``Float32Readout`` of both that follows reads the stacked state (one product for both), its
    halving sum over a power-of-two number of modes one pairing MatMul per halving (``_paired``),
    its rounding one QuantizeLinear (``_requantized``).  The stack's parts are taken by Gathers
    with int32 indices: onnxruntime costs a Split more than two Gathers, and it fuses Gathers
    with int64 indices into a Split and Squeezes.
    Returns how many ops it wrote (0: none)."""
    from .ops import Float32Readout, Float32Update

    if len(ops) < 2 or not all(type(op) is Float32Update for op in ops[:2]) or not e.shapes:
        return 0
    a, b = ops[:2]
    inputs = [t.inputs for t in a.terms]
    if [t.inputs for t in b.terms] != inputs or (a.lo, a.hi) != (b.lo, b.hi):
        return 0
    if any(t.kind != "mul" or len(t.inputs) != 1 for t in a.terms):
        return 0
    shape = e.shapes[a.out]
    stack = lambda na, nb: e.f32(e.const(_stack(e.get(na).value, e.get(nb).value, len(shape))))  # noqa: E731
    e.hint = f"{a.out}+{b.out}"
    parts = zip(inputs, a.factors, b.factors, a.scales, b.scales, strict=True)
    terms = [(e.f32(e.get(x)), stack(fa, fb), stack(ga, gb)) for (x,), fa, fb, ga, gb in parts]
    scale = stack(a.out_scale, b.out_scale)
    if _divides_exactly(scale.value, terms):  # ÷ scale folded into every product
        v = reduce(add, [(f / scale) * (x * g) for x, f, g in terms])
    else:
        v = reduce(add, [f * (x * g) for x, f, g in terms]) / scale
    int8 = np.iinfo(np.int8)
    if (a.lo, a.hi) == (int8.min, int8.max) and not e.qonnx:
        # QuantizeLinear at scale 1 rounds half to even and saturates to [lo, hi]: the codes
        # of both next states, and back through DequantizeLinear those the readout reads
        q = e.node("QuantizeLinear", [v, *e.unit_scale(np.int8, 0)])
        codes = e.node("DequantizeLinear", [q, *e.unit_scale(np.int8, 0)])
        e.memo[("QuantizeLinear", codes, 0)] = q
        x = Val(e, f32=Val(e, codes, np.float32, bound=128), bound=128)
    else:
        x = e.codes(e.clip(e.rint(v), a.lo, a.hi))  # (2, B, …), a float64 view of float32 codes
    for k, op in enumerate((a, b)):
        take = lambda k=k: e.node("Gather", [x.f32, e.scalar(k, np.int32)], axis=0)  # noqa: E731
        part = Val(e, dtype=np.float32, make=take, bound=x.bound)
        e.set(Val(e, f32=part, bound=x.bound, stacked=(x, k)), op.out)
    r = ops[2] if len(ops) > 2 else None
    if not (
        type(r) is Float32Readout
        and [t.inputs[0] for t in r.terms[:-1]] == [a.out, b.out]
        and r.modes & (r.modes - 1) == 0
        and shape[-1] == r.modes
    ):
        return 2
    e.hint = r.out
    f, g = stack(r.factors[0], r.factors[1]), stack(r.scales[0], r.scales[1])
    p = f * (e.f32(x) * g)
    t = reduce(add, (e.apply("Gather", p, e.scalar(k, np.int32), axis=0) for k in (0, 1)))
    finite = 2 * r.modes * x.bound * np.abs(f.value * g.value.astype(np.float64)).max() < 2.0**127
    for m in (r.modes >> k for k in range(r.modes.bit_length() - 1)):  # second half onto first
        t = _paired(e, t, m) if finite and m <= PAIRING_LIMIT else reduce(add, e.halves(t))
    t = e.apply("Reshape", t, e.init(f"c/shape{shape[:-1]}", np.int64([-1, *shape[:-1]])))
    last = dataclasses.replace(r, terms=r.terms[-1:], factors=r.factors[-1:], scales=r.scales[-1:])
    (skip,) = last.products(e)  # the last term's product (D·u)
    v = t + skip
    e.set(_requantized(e, r, v) or r.rounded(e, v), r.out)
    return 3


PAIRING_LIMIT = 64  # the most modes a pairing MatMul halves (its cost grows as their square)


def _paired(e: Emitter, t: Val, m: int) -> Val:
    """t[…, :m/2] + t[…, m/2:] of finite float32 t as one MatMul by a 0/1 matrix with two ones
    per column: each output sums a, b and exact zeros in some order, so it is the one rounding
    of a + b the Add makes (only a zero's sign may differ, which no code can tell)."""
    h = m // 2
    pairs = np.zeros((m, h), np.float32)
    pairs[np.arange(h), np.arange(h)] = pairs[np.arange(h, m), np.arange(h)] = 1
    return e.apply("MatMul", t, e.init(f"c/pairs{m}", pairs))


def _requantized(e: Emitter, op, v: Val) -> Val | None:
    """``op.rounded(v)`` of float32 v, rint(v / scale) clipped to [lo, hi], as one
    QuantizeLinear to the 8-bit type holding [lo, hi] where the scale is per tensor (it divides,
    rounds half to even and saturates to the type): the codes are its output clipped to
    [lo, hi], read through DequantizeLinear (and a Clip, unless [lo, hi] is the whole type) or
    by a ``Lut`` over every code of the type."""
    scale = np.asarray(e.consts[op.out_scale], np.float32)
    np_type, _, _ = code_type(min(op.lo, 0), max(op.hi, 0))
    if np.iinfo(np_type).bits != 8 or scale.ndim or v.dtype != np.float32 or e.qonnx:
        return None
    q = e.node(
        "QuantizeLinear", [v, e.init(f"{op.out_scale}:f32", scale), e.zero_point(np_type, 0)]
    )
    whole = (op.lo, op.hi) == (np.iinfo(np_type).min, np.iinfo(np_type).max)

    def codes() -> str:
        c = e.node("DequantizeLinear", [q, *e.unit_scale(np_type, 0)])
        return (
            c if whole else e.node("Clip", [c, *(e.scalar(b, np.float32) for b in (op.lo, op.hi))])
        )

    bound = max(-op.lo, op.hi)
    f32 = Val(e, dtype=np.float32, make=codes, bound=bound)
    return Val(e, f32=f32, bound=bound, code=(q, np_type, op.lo, op.hi))


# ------------------------------------------------------------------------------------- graphs


def state_type(s: State):
    """A state's type at the graph's boundary, (numpy type, ONNX type, Q/DQ-able): the narrowest
    integer type of its stored codes up to 16 bits (through Q/DQ); float64 holding the integer
    codes exactly for wider ones (analog states, pooling sums), which needs no Cast either way."""
    np_type, onnx_type, qdq = code_type(s.lo + s.zp, s.hi + s.zp)
    return (np_type, onnx_type, True) if qdq else (np.float64, DOUBLE, False)


_value = helper.make_tensor_value_info  # (name, element type, shape)


def _site_outputs(e: Emitter, graph: Graph) -> list[onnx.ValueInfoProto]:
    """Every traced site's centered codes as int32 outputs ``code:<site>`` (B, …)."""
    x = np.zeros((1, graph.d_input), dtype=np.float32)
    env, _ = intref.step(graph, x, intref.init_state(graph, 1))  # per-sample shapes
    outputs = []
    for op in intref.site_ops(graph):
        name = f"code:{op.site}"
        code = e.lift(e.get(op.out))
        e.nodes.append(helper.make_node("Cast", [code], [name], to=TensorProto.INT32))
        outputs.append(_value(name, TensorProto.INT32, ["batch", *env[op.out].shape[1:]]))
    return outputs


def _body(graph: Graph, qonnx: bool, codes: bool) -> tuple[Emitter, list, list, list]:
    """The step: (emitter, inputs, state outputs, site outputs (none unless ``codes``)), before
    the head."""
    x = np.zeros((1, graph.d_input), dtype=np.float32)
    env, _ = intref.step(graph, x, intref.init_state(graph, 1))  # per-sample shapes
    intref.head(graph, env)
    shapes = {op.out: env[op.out].shape[1:] for op in graph.step + graph.head}
    table = graph.d_input == 1 and not qonnx
    e = Emitter(
        graph.consts, qonnx=qonnx, table=table, name_ops=False, shapes=shapes, formats=graph.formats
    )
    inputs = []
    for s in graph.states:
        inputs.append(_value(f"state:{s.name}", state_type(s)[1], ["batch", *s.shape]))
        e.set(e.from_state(f"state:{s.name}", s), s.name)
    inputs.append(_value("x", TensorProto.FLOAT, ["batch", graph.d_input]))
    e.ops(graph.step)
    state_out = []
    for s in graph.states:
        e.to_state(e.get(s.next), s, f"next:{s.name}")
        state_out.append(_value(f"next:{s.name}", state_type(s)[1], ["batch", *s.shape]))
    return e, inputs, state_out, _site_outputs(e, graph) if codes else []


def _model(g: onnx.GraphProto, qonnx: bool = False) -> onnx.ModelProto:
    opsets = [helper.make_opsetid("", OPSET)]
    if qonnx:
        opsets.append(helper.make_opsetid(QONNX_DOMAIN, 1))
    return helper.make_model(g, opset_imports=opsets, producer_name="qssm", ir_version=10)


def step_model(graph: Graph, qonnx: bool = False, codes: bool = True) -> onnx.ModelProto:
    """(x_t, states) → (next states, logits, per-site codes) for streaming; without ``codes``
    the deployable graph: the same nodes less the verification-only ``code:*`` outputs."""
    e, inputs, state_out, sites = _body(graph, qonnx, codes)
    for op in graph.head:
        e.op(op)
    e.output(e.get("logits"), "logits")
    outputs = [*state_out, _value("logits", TensorProto.DOUBLE, ["batch", graph.n_classes]), *sites]
    return _model(e.graph("qssm_step", inputs, outputs), qonnx)


def _sequence_of(v: onnx.ValueInfoProto) -> onnx.ValueInfoProto:
    """``code:<site>`` (B, …) → ``codes:<site>`` (B, L, …)."""
    dims = [d.dim_value for d in v.type.tensor_type.shape.dim[1:]]
    return _value("codes:" + v.name[len("code:") :], TensorProto.INT32, ["batch", "time", *dims])


def sequence_model(graph: Graph, codes: bool = True) -> onnx.ModelProto:
    """x (B, L, d_input) → (logits, per-site codes (B, L, …)): a ``Scan`` over the step body;
    without ``codes`` the deployable graph, logits only."""
    e, inputs, state_out, sites = _body(graph, qonnx=False, codes=codes)
    body = e.graph("qssm_step_body", inputs, state_out + sites)
    outer = Emitter(graph.consts, prefix="seq/", name_ops=False)  # one namespace with the body
    batch = outer.node("Shape", ["x"], "batch", start=0, end=1)
    init_states = []
    for s in graph.states:
        np_type = state_type(s)[0]
        per_sample = outer.init(f"shape/{s.name}", np.int64(s.shape))
        shape = outer.node("Concat", [batch, per_sample], s.name, axis=0)
        zero = numpy_helper.from_array(np.asarray([s.zp], dtype=np_type))
        init_states.append(outer.node("ConstantOfShape", [shape], s.name, value=zero))
    seq_codes = [_sequence_of(v) for v in sites]
    scan_out = [f"final:{s.name}" for s in graph.states] + [v.name for v in seq_codes]
    scan = {"num_scan_inputs": 1, "scan_input_axes": [1]}
    if sites:
        scan["scan_output_axes"] = [1] * len(sites)
    outer.nodes.append(helper.make_node("Scan", [*init_states, "x"], scan_out, body=body, **scan))
    for s in graph.states:
        outer.set(outer.from_state(f"final:{s.name}", s), s.next)
    for op in graph.head:
        outer.op(op)
    outer.output(outer.get("logits"), "logits")
    outputs = [_value("logits", TensorProto.DOUBLE, ["batch", graph.n_classes]), *seq_codes]
    x = _value("x", TensorProto.FLOAT, ["batch", "time", graph.d_input])
    return _model(outer.graph("qssm_sequence", [x], outputs))


def describe(model: onnx.ModelProto, doc: str, props: dict[str, str]) -> onnx.ModelProto:
    """``model`` with ``doc`` as its doc_string and ``props`` as metadata_props (what made it,
    how inputs are preprocessed); the graph is untouched."""
    model.doc_string = doc
    helper.set_model_props(model, props)
    return model


def save_onnx(model: onnx.ModelProto, path: Path, check: bool = True) -> None:
    if check:
        onnx.checker.check_model(model, full_check=True)
    with atomic_path(path) as tmp:
        onnx.save(model, tmp)
