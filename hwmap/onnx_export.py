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


class Emitter:
    """Writes nodes for lowered ops; every op-level tensor is a float64 ONNX value of that name."""

    def __init__(self, consts: dict, prefix: str = "", qonnx: bool = False):
        self.consts, self.prefix, self.qonnx = consts, prefix, qonnx
        self.nodes: list = []
        self.inits: dict[str, onnx.TensorProto] = {}
        self.weights: dict[str, str] = {}
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

    def scalar(self, value: float) -> str:
        return self.init(f"c/{value!r}", np.float64(value))

    # ---- the integer boundary: codes of an integer type ↔ exact float64 values

    def zero_point(self, np_type, zp: int) -> str:
        z = np.asarray(zp, dtype=np_type)
        return self.init(f"c/zp_{z.dtype.name}_{zp}", z)

    def unit_scale(self, np_type, zp: int) -> list[str]:
        """Scale 1 and the zero point: the parameters of a Q/DQ pair over stored codes."""
        return [self.init("c/one_f32", np.float32(1)), self.zero_point(np_type, zp)]

    def from_code(self, code: str, zp: int, np_type, qdq: bool, hint: str) -> str:
        if not qdq:
            return self.node("Cast", [code], hint, to=TensorProto.DOUBLE)
        if self.qonnx:  # a Quant node over the float codes (scale 1, the zero point, the width)
            f = self.node("Cast", [code], hint, to=TensorProto.FLOAT)
            v = self.quant(f, zp, np_type, hint, dequant=True)
        else:
            v = self.node("DequantizeLinear", [code, *self.unit_scale(np_type, zp)], hint)
        return self.node("Cast", [v], hint, to=TensorProto.DOUBLE)

    def to_code(self, value: str, zp: int, np_type, onnx_type, qdq: bool, out: str) -> None:
        if not qdq:
            shifted = self.node("Add", [value, self.scalar(float(zp))], out) if zp else value
            self.nodes.append(helper.make_node("Cast", [shifted], [out], to=onnx_type))
            return
        f = self.node("Cast", [value], out, to=TensorProto.FLOAT)
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

    def weight(self, name: str) -> str:
        """A constant as float64: integer constants through Q/DQ, the rest as float64 (once)."""
        if name in self.weights:
            return self.weights[name]
        value = self.consts[name]
        if value.dtype.kind in "iu" and value.size > 1 and np.abs(value).max() < 2**15:
            np_type, _, _ = code_type(int(value.min()), int(value.max()))
            stored = self.init(f"{name}:code", value.astype(np_type))
            self.weights[name] = self.from_code(stored, 0, np_type, True, name)
        else:
            self.weights[name] = self.init(name, value.astype(np.float64))
        return self.weights[name]

    # ---- the ops' backend: tensors are Val, primitives add nodes named after the op (hint)

    def lift(self, v) -> str:
        """A tensor name, a Val, or a number (a float64 scalar initializer)."""
        if isinstance(v, str):
            return v
        return v.name if isinstance(v, Val) else self.scalar(float(v))

    def node(self, op: str, inputs: list, hint: str | None = None, domain=None, **attrs) -> str:
        out = self.tmp(hint or self.hint)
        names = [self.lift(i) for i in inputs]
        self.nodes.append(helper.make_node(op, names, [out], domain=domain, **attrs))
        return out

    def apply(self, op: str, *inputs, **attrs) -> "Val":
        return Val(self, self.node(op, list(inputs), **attrs))

    def __getattr__(self, prim: str):
        if prim in NODES:
            return lambda *args: NODES[prim](self, *args)
        raise AttributeError(prim)

    def get(self, name: str) -> "Val":
        return Val(self, self.weight(name) if name in self.consts else self.prefix + name)

    def quantize(self, src: str, scale: str, zp: int, lo: int, hi: int) -> "Val":
        np_type, _, _ = code_type(min(lo + zp, 0), max(hi + zp, 0))
        s = self.init(scale, self.consts[scale].astype(np.float32))
        z = self.zero_point(np_type, zp)
        x, hint = self.get(src), self.hint
        if self.qonnx:  # Quant at scale 1 on x / scale: the same rounding as QuantizeLinear
            code = self.quant(self.node("Div", [x, s]), zp, np_type, hint, dequant=False)
            v = self.node("Sub", [code, self.init(f"c/f{zp}", np.float32(zp))])
            return self.apply("Cast", v, to=TensorProto.DOUBLE)
        code = self.node("QuantizeLinear", [x, s, z])
        return Val(self, self.from_code(code, zp, np_type, True, hint))

    def halves(self, v: "Val") -> tuple["Val", "Val"]:
        a, g = self.tmp(self.hint), self.tmp(self.hint)
        self.nodes.append(helper.make_node("Split", [v.name], [a, g], axis=-1, num_outputs=2))
        return Val(self, a), Val(self, g)

    def set(self, value: str, out: str) -> None:
        self.nodes.append(helper.make_node("Identity", [value], [self.prefix + out]))

    def op(self, op) -> None:
        self.hint = op.out
        self.set(op.eval(self).name, op.out)

    def graph(self, name: str, inputs: list, outputs: list) -> onnx.GraphProto:
        return helper.make_graph(self.nodes, name, inputs, outputs, list(self.inits.values()))


INT64, DOUBLE = TensorProto.INT64, TensorProto.DOUBLE


def _node(op: str):
    return lambda e, *inputs: e.apply(op, *inputs)


def _last(e: Emitter, name: str = "axis_last", value: int = -1) -> str:
    return e.init(f"c/{name}", np.int64([value]))


NODES = {  # the ops' primitives (see hwmap.ops) as ONNX nodes over float64 tensors
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
    "arange": lambda e, n: Val(e, e.init(f"c/arange{n}", np.arange(n, dtype=np.float64))),
    "positive": lambda e, v: e.apply("Cast", e.apply("Greater", v, 0.0), to=DOUBLE),
    "unsqueeze_last": lambda e, v: e.apply("Unsqueeze", v, _last(e)),
    "drop_last": lambda e, v: e.apply("Slice", v, _last(e, "zero_i64", 0), _last(e), _last(e)),
    "concat_last": lambda e, a, b: e.apply("Concat", a, b, axis=-1),
    "slice_last": lambda e, v, a, c: e.apply(
        "Slice", v, _last(e, f"i{a}", a), _last(e, f"i{c}", c), _last(e)
    ),
    "f32": lambda e, v: e.apply("Cast", v, to=TensorProto.FLOAT),
    "rint": lambda e, v: e.apply("Cast", e.apply("Round", v), to=DOUBLE),  # half to even
}


class Val(Symbolic):
    """A float64 tensor of the ONNX graph being written."""

    def __init__(self, e: Emitter, name: str):
        self.e, self.name = e, name

    def apply(self, prim: str, *args) -> "Val":
        return NODES[prim](self.e, *args)


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
        e.nodes.append(helper.make_node("Cast", [e.get(op.out).name], [name], to=TensorProto.INT32))
        outputs.append(_value(name, TensorProto.INT32, ["batch", *env[op.out].shape[1:]]))
    return outputs


def _body(graph: Graph, qonnx: bool, codes: bool) -> tuple[Emitter, list, list, list]:
    """The step: (emitter, inputs, state outputs, site outputs (none unless ``codes``)), before
    the head."""
    e = Emitter(graph.consts, qonnx=qonnx)
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
        e.to_code(e.get(s.next).name, s.zp, np_type, onnx_type, qdq, f"next:{s.name}")
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
    outer = Emitter(graph.consts, prefix="seq/")  # one namespace with the body
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
    outer.nodes.append(helper.make_node("Identity", [outer.get("logits").name], ["logits"]))
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
