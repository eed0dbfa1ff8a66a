"""ONNX export of a lowered graph: a step graph, a sequence graph (``Scan`` around the same step
body) and a QONNX step graph.

Every op of ``hwmap.ops`` becomes standard ONNX nodes (``NODES``: its primitives as nodes) that
reproduce the integer reference bit for bit: codes travel as float64 tensors holding exact
integers (every sum stays below 2^52), the fixed-point requantization is Mul by the integer
multiplier, Add 2^(S−1), Mul 2^−S, Floor, Clip.
Integer tensors enter and leave in QCDQ form: weights and lookup tables are int8/int16
initializers read through ``DequantizeLinear``; the float input goes through ``QuantizeLinear``
with its real scale; states and per-site codes leave through ``QuantizeLinear`` (zero point,
integer type) and come back through ``DequantizeLinear``.  In the QONNX file each such pair is a
single ``Quant`` node (domain ``qonnx.custom_op.general``).

Opset 21 (int16 Q/DQ); IR version 10; the batch axis is dynamic everywhere.
"""

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


TABLE_LIMIT = 2**18  # the most elements a table (below) may hold
DOUBLE, FLOAT, INT64 = TensorProto.DOUBLE, TensorProto.FLOAT, TensorProto.INT64
DTYPES = {DOUBLE: np.dtype(np.float64), FLOAT: np.dtype(np.float32), INT64: np.dtype(np.int64)}


class Val(Symbolic):
    """A tensor of the graph being written, one of: a node's output (``name``); a constant,
    folded at export (``value``); a table (``value``, ``table``: its axis 0 runs over the codes
    of the emitter's index instead of over the batch); a pending product ``x · c`` (``scaled``)
    or float64 view of a float32 tensor (``f32``), written when a node first reads it.  ``bound``
    (integer values of |v| ≤ bound) is known for codes."""

    def __init__(self, e, name=None, dtype=np.float64, value=None, table=False, **extra):
        self.e, self.name, self.value, self.table = e, name, value, table
        self.dtype = np.dtype(dtype if value is None else value.dtype)
        self.scaled, self.f32 = extra.get("scaled"), extra.get("f32")
        self.bound = extra.get("bound")

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
    into a table over the codes and read with one ``GatherND`` where a node needs it.
    ``name_ops`` names every op's output after the op (an Identity)."""

    def __init__(self, consts: dict, prefix="", qonnx=False, table=False, name_ops=True):
        self.consts, self.prefix, self.qonnx, self.table = consts, prefix, qonnx, table
        self.name_ops = name_ops
        self.nodes: list = []
        self.inits: dict[str, onnx.TensorProto] = {}
        self.env: dict[str, Val] = {}
        self.folded: dict[str, Val] = {}  # the graph's constants as Vals (initializers once)
        self.index = None  # (int64 index (B, 1), codes' row roll) of the tables
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

    def unit_scale(self, np_type, zp: int) -> list[str]:
        """Scale 1 and the zero point: the parameters of a Q/DQ pair over stored codes."""
        return [self.init("c/one_f32", np.float32(1)), self.zero_point(np_type, zp)]

    def from_code(self, code: str, zp: int, np_type, qdq: bool, hint: str) -> Val:
        info = np.iinfo(np_type)
        bound = max(abs(info.min - zp), abs(info.max - zp))
        if not qdq:
            return Val(self, self.node("Cast", [code], hint, to=DOUBLE), bound=bound)
        if self.qonnx:  # a Quant node over the float codes (scale 1, the zero point, the width)
            f = self.node("Cast", [code], hint, to=FLOAT)
            v = self.quant(f, zp, np_type, hint, dequant=True)
        else:
            v = self.node("DequantizeLinear", [code, *self.unit_scale(np_type, zp)], hint)
        return Val(self, f32=Val(self, v, np.float32, bound=bound), bound=bound)

    def to_code(self, value: Val, zp: int, np_type, onnx_type, qdq: bool, out: str) -> None:
        if not qdq:
            shifted = self.lift(value + float(zp) if zp else value)
            self.nodes.append(helper.make_node("Cast", [shifted], [out], to=onnx_type))
            return
        f = self.lift(self.f32(value))
        if self.qonnx:
            q = self.quant(f, zp, np_type, out, dequant=False)
            self.nodes.append(helper.make_node("Cast", [q], [out], to=onnx_type))
        else:
            q_inputs = [f, *self.unit_scale(np_type, zp)]
            self.nodes.append(helper.make_node("QuantizeLinear", q_inputs, [out]))

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
            if v.table:
                table = np.roll(v.value, self.index[1], axis=0)
                data = self.init(self.fresh("table"), table)
                v.name = self.node("GatherND", [data, self.index[0]])
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
        tables = [v for v in vals if v.table]
        if tables and not _table_fits(prim, args, tables[0].value.ndim):
            return None
        value = np.asarray(FOLD[prim](*(a.value if isinstance(a, Val) else a for a in args)))
        if tables and value.size > TABLE_LIMIT:
            return None
        return Val(self, value=value, table=bool(tables))

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
        code = self.node("QuantizeLinear", [x, s, z])
        if not (self.table and self.index is None and hi - lo < 256):
            return self.from_code(code, zp, np_type, True, hint)
        # the table's index: the stored code clipped, as int64; row i holds code lo + i
        qlo, qhi = lo + zp, hi + zp
        bounds = [self.scalar(q, np_type) for q in (qlo, qhi)]
        index = self.node("Cast", [self.node("Clip", [code, *bounds])], to=INT64)
        roll = qlo  # GatherND reads negative indices from the end: rows rolled by the lowest code
        if not qlo <= 0 <= qhi + 1:
            index, roll = self.node("Sub", [index, self.init(f"c/i64/{qlo}", np.int64(qlo))]), 0
        self.index = (index, roll)
        return Val(self, value=np.arange(lo, hi + 1, dtype=np.float64)[:, None], table=True)

    def halves(self, v: Val) -> tuple[Val, Val]:
        if not v.node:
            a, g = np.split(v.value, 2, axis=-1)
            return Val(self, value=a, table=v.table), Val(self, value=g, table=v.table)
        a, g = self.tmp(self.hint), self.tmp(self.hint)
        self.nodes.append(helper.make_node("Split", [self.lift(v)], [a, g], axis=-1, num_outputs=2))
        return Val(self, a, v.dtype), Val(self, g, v.dtype)

    def set(self, value: Val, out: str) -> None:
        self.env[out] = value

    def output(self, value: Val, name: str) -> None:
        """Writes ``value`` as the tensor ``name`` (a graph output)."""
        self.nodes.append(helper.make_node("Identity", [self.lift(value)], [name]))

    def op(self, op) -> None:
        self.hint = op.out
        self.set(op.eval(self), op.out)
        if self.name_ops:
            self.output(self.env[op.out], self.prefix + op.out)

    def graph(self, name: str, inputs: list, outputs: list) -> onnx.GraphProto:
        return helper.make_graph(self.nodes, name, inputs, outputs, list(self.inits.values()))


def _table_fits(prim: str, args, ndim: int) -> bool:
    """Whether ``prim`` keeps a table's axis 0 the codes' axis: constants broadcast over it as
    over the batch (of lower rank, or of size 1 there); matmul by a matrix; gather from a
    1-d table; never a concatenation with a constant."""
    consts = [a.value for a in args if isinstance(a, Val) and not a.table]
    if prim == "matmul":
        return args[0].table and consts[0].ndim == 2
    if prim == "gather":
        return not args[0].table and consts[0].ndim == 1
    if prim == "concat_last":
        return not consts
    return all(c.ndim < ndim or (c.ndim == ndim and c.shape[0] == 1) for c in consts)


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

FOLD = {  # the same primitives over numpy arrays in the ONNX graph's dtypes (float64, float32)
    "add": np.add,
    "sub": np.subtract,
    "mul": np.multiply,
    "div": np.divide,
    "neg": np.negative,
    **{p: getattr(np, p) for p in ("exp", "sqrt", "abs", "sign", "floor", "clip", "matmul")},
    "sum_last": lambda v: v.sum(-1),
    "sum_keep": lambda v: v.sum(-1, keepdims=True),
    "shr": lambda v, shift: np.floor(v * 2.0**-shift),
    "float": lambda v: v,
    "codes": lambda v: v,
    "gather": lambda t, i: t[i.astype(np.int64)],
    "positive": lambda v: (v > 0).astype(np.float64),
    "unsqueeze_last": lambda v: v[..., None],
    "drop_last": lambda v: v[..., :-1],
    "concat_last": lambda a, b: np.concatenate([a, b], -1),
    "slice_last": lambda v, a, c: v[..., a:c],
    "f32": lambda v: v.astype(np.float32),
    "rint": np.rint,
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
    c = b.value if isinstance(b, Val) and not b.node and not b.table else None
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


RULES = {"f32": _f32, "rint": _rint, "clip": _clip, "mul": _mul, "div": _div}


# ------------------------------------------------------------------------------------- graphs


def _state_type(s: State):
    return code_type(s.lo + s.zp, s.hi + s.zp)


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
    e = Emitter(graph.consts, qonnx=qonnx, table=graph.d_input == 1 and not qonnx, name_ops=False)
    inputs = []
    for s in graph.states:
        np_type, onnx_type, qdq = _state_type(s)
        inputs.append(_value(f"state:{s.name}", onnx_type, ["batch", *s.shape]))
        e.set(e.from_code(f"state:{s.name}", s.zp, np_type, qdq, s.name), s.name)
    inputs.append(_value("x", TensorProto.FLOAT, ["batch", graph.d_input]))
    for op in graph.step:
        e.op(op)
    state_out = []
    for s in graph.states:
        np_type, onnx_type, qdq = _state_type(s)
        e.to_code(e.get(s.next), s.zp, np_type, onnx_type, qdq, f"next:{s.name}")
        state_out.append(_value(f"next:{s.name}", onnx_type, ["batch", *s.shape]))
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
        np_type, onnx_type, _ = _state_type(s)
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
        np_type, _, qdq = _state_type(s)
        outer.set(outer.from_code(f"final:{s.name}", s.zp, np_type, qdq, s.next), s.next)
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
