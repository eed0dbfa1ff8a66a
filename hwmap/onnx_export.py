"""ONNX export of a lowered graph: a step graph, a sequence graph (``Scan`` around the same step
body) and a QONNX step graph.

Every op of ``hwmap.lower`` becomes standard ONNX nodes that reproduce the integer reference bit
for bit: codes travel as float64 tensors holding exact integers (every sum stays below 2^52), the
fixed-point requantization is Mul by the integer multiplier, Add 2^(S−1), Mul 2^−S, Floor, Clip.
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

from qssm.io import atomic_path

from . import intref

OPSET = 21
QONNX_DOMAIN = "qonnx.custom_op.general"
INT_TYPES = [  # (numpy type, ONNX type, Q/DQ-able)
    (np.int8, TensorProto.INT8, True),
    (np.uint8, TensorProto.UINT8, True),
    (np.int16, TensorProto.INT16, True),
    (np.uint16, TensorProto.UINT16, True),
    (np.int32, TensorProto.INT32, False),
]


def code_type(lo: int, hi: int):
    """The narrowest integer type holding stored codes in [lo, hi]."""
    for np_type, onnx_type, qdq in INT_TYPES:
        info = np.iinfo(np_type)
        if info.min <= lo and hi <= info.max:
            return np_type, onnx_type, qdq
    raise ValueError(f"codes in [{lo}, {hi}] need more than 32 bits")


class Emitter:
    """Writes nodes for lowered ops; every op-level tensor is a float64 ONNX value of that name."""

    def __init__(self, consts: dict, prefix: str = "", qonnx: bool = False):
        self.consts, self.prefix, self.qonnx = consts, prefix, qonnx
        self.nodes: list = []
        self.inits: dict[str, onnx.TensorProto] = {}
        self.weights: dict[str, str] = {}
        self.n = 0

    def tmp(self, hint: str) -> str:
        self.n += 1
        return f"{self.prefix}{hint}/{self.n}"

    def node(self, op: str, inputs: list[str], hint: str, domain=None, **attrs) -> str:
        out = self.tmp(hint)
        self.nodes.append(helper.make_node(op, inputs, [out], domain=domain, **attrs))
        return out

    def init(self, name: str, value) -> str:
        name = self.prefix + name
        if name not in self.inits:
            self.inits[name] = numpy_helper.from_array(np.asarray(value), name)
        return name

    def scalar(self, value: float) -> str:
        return self.init(f"c/{value!r}", np.float64(value))

    # ---- the integer boundary: codes of an integer type ↔ exact float64 values

    def from_code(self, code: str, zp: int, np_type, qdq: bool, hint: str) -> str:
        if not qdq:
            return self.node("Cast", [code], hint, to=TensorProto.DOUBLE)
        if self.qonnx:  # a Quant node over the float codes (scale 1, the zero point, the width)
            f = self.node("Cast", [code], hint, to=TensorProto.FLOAT)
            v = self.quant(f, zp, np_type, hint, dequant=True)
            return self.node("Cast", [v], hint, to=TensorProto.DOUBLE)
        one = self.init("c/one_f32", np.float32(1))
        z = self.init(f"c/zp_{np.dtype(np_type).name}_{zp}", np.asarray(zp, dtype=np_type))
        f = self.node("DequantizeLinear", [code, one, z], hint)
        return self.node("Cast", [f], hint, to=TensorProto.DOUBLE)

    def to_code(self, value: str, zp: int, np_type, onnx_type, qdq: bool, out: str) -> None:
        if not qdq:
            shifted = self.node("Add", [value, self.scalar(float(zp))], out) if zp else value
            self.nodes.append(helper.make_node("Cast", [shifted], [out], to=onnx_type))
            return
        f = self.node("Cast", [value], out, to=TensorProto.FLOAT)
        if self.qonnx:
            q = self.quant(f, zp, np_type, out, dequant=False)
            self.nodes.append(helper.make_node("Cast", [q], [out], to=onnx_type))
            return
        one = self.init("c/one_f32", np.float32(1))
        z = self.init(f"c/zp_{np.dtype(np_type).name}_{zp}", np.asarray(zp, dtype=np_type))
        self.nodes.append(helper.make_node("QuantizeLinear", [f, one, z], [out]))

    def quant(self, f: str, zp: int, np_type, hint: str, dequant: bool) -> str:
        """QONNX ``Quant``: the stored integer grid of ``np_type`` at scale 1 around ``zp``."""
        info = np.iinfo(np_type)
        bits = info.bits
        shifted = (
            f if dequant else self.node("Add", [f, self.init(f"c/f{zp}", np.float32(zp))], hint)
        )
        q = self.node(
            "Quant",
            [
                shifted,
                self.init("c/one_f32", np.float32(1)),
                self.init("c/zero_f32", np.float32(0)),
                self.init(f"c/bits{bits}", np.float32(bits)),
            ],
            hint,
            domain=QONNX_DOMAIN,
            signed=int(info.min < 0),
            narrow=0,
            rounding_mode="ROUND",
        )
        return self.node("Sub", [q, self.init(f"c/f{zp}", np.float32(zp))], hint) if dequant else q

    def weight(self, name: str) -> str:
        """A constant as float64: integer constants through Q/DQ, the rest as float64 (once)."""
        if name not in self.weights:
            self.weights[name] = self._weight(name)
        return self.weights[name]

    def _weight(self, name: str) -> str:
        value = self.consts[name]
        if value.dtype.kind in "iu" and value.size > 1 and np.abs(value).max() < 2**15:
            np_type, _, _ = code_type(int(value.min()), int(value.max()))
            stored = self.init(f"{name}:code", value.astype(np_type))
            return self.from_code(stored, 0, np_type, True, name)
        return self.init(name, value.astype(np.float64))

    # ---- ops

    def get(self, name: str) -> str:
        return self.weight(name) if name in self.consts else self.prefix + name

    def term(self, kind: str, inputs: list[str], hint: str) -> str:
        args = [self.get(i) for i in inputs]
        if kind == "matmul":
            return self.node("MatMul", args, hint)
        if kind == "dot":
            prod = self.node("Mul", args, hint)
            return self.node(
                "ReduceSum", [prod, self.init("c/axis_last", np.int64([-1]))], hint, keepdims=0
            )
        if kind == "const" or len(args) == 1:
            return args[0]
        out = args[0]
        for a in args[1:]:
            out = self.node("Mul", [out, a], hint)
        return out

    def mul(self, a: str, b: str, hint: str) -> str:
        return self.node("Mul", [a, b], hint)

    def erf(self, z: str, hint: str) -> str:
        """``intref.erf``, op for op."""
        a = self.node("Abs", [z], hint)
        t = self.mul(self.scalar(intref.ERF_P), a, hint)
        t = self.node(
            "Div", [self.scalar(1.0), self.node("Add", [self.scalar(1.0), t], hint)], hint
        )
        poly = self.scalar(intref.ERF_A[4])
        for c in intref.ERF_A[3::-1]:
            poly = self.node("Add", [self.mul(poly, t, hint), self.scalar(c)], hint)
        e = self.node("Exp", [self.node("Neg", [self.mul(a, a, hint)], hint)], hint)
        tail = self.mul(self.mul(poly, t, hint), e, hint)
        one_minus = self.node("Sub", [self.scalar(1.0), tail], hint)
        return self.mul(self.node("Sign", [z], hint), one_minus, hint)

    def set(self, value: str, out: str) -> None:
        self.nodes.append(helper.make_node("Identity", [value], [self.prefix + out]))

    def clip(self, v: str, lo, hi, hint: str) -> str:
        return self.node("Clip", [v, self.scalar(float(lo)), self.scalar(float(hi))], hint)

    def op(self, op: dict) -> None:
        kind, out = op["op"], op["out"]
        if kind == "quantize":
            zp, (lo, hi) = op["zp"], (op["lo"] + op["zp"], op["hi"] + op["zp"])
            np_type, _, _ = code_type(min(lo, 0), max(hi, 0))
            scale = self.init(op["scale"], self.consts[op["scale"]].astype(np.float32))
            z = self.init(f"c/zp_{np.dtype(np_type).name}_{zp}", np.asarray(zp, dtype=np_type))
            if self.qonnx:  # Quant at scale 1 on x / scale: the same rounding as QuantizeLinear
                d = self.node("Div", [self.get(op["in"]), scale], out)
                code = self.quant(d, zp, np_type, out, dequant=False)
                v = self.node("Sub", [code, self.init(f"c/f{zp}", np.float32(zp))], out)
                v = self.node("Cast", [v], out, to=TensorProto.DOUBLE)
            else:
                code = self.node("QuantizeLinear", [self.get(op["in"]), scale, z], out)
                v = self.from_code(code, zp, np_type, True, out)
            return self.set(self.clip(v, op["lo"], op["hi"], out), out)
        if kind in ("affine", "real"):
            acc = None
            for k, ins, m in op["terms"]:
                t = self.node("Mul", [self.term(k, ins, out), self.get(m)], out)
                acc = t if acc is None else self.node("Add", [acc, t], out)
            if kind == "affine" and op["shift"]:
                acc = self.node("Add", [acc, self.scalar(2.0 ** (op["shift"] - 1))], out)
                acc = self.node(
                    "Floor", [self.node("Mul", [acc, self.scalar(2.0 ** -op["shift"])], out)], out
                )
            if kind == "affine" and op["lo"] is not None:
                acc = self.clip(acc, op["lo"], op["hi"], out)
            return self.set(acc, out)
        if kind in ("sigmoid", "glu"):
            x = self.get(op["in"])
            if kind == "glu":  # a · sigmoid(g), the halves of the last axis
                a, g = self.tmp(out), self.tmp(out)
                self.nodes.append(helper.make_node("Split", [x], [a, g], axis=-1, num_outputs=2))
                x = g
            e = self.node("Exp", [self.node("Neg", [x], out)], out)
            s = self.node(
                "Div", [self.scalar(1.0), self.node("Add", [self.scalar(1.0), e], out)], out
            )
            return self.set(self.node("Mul", [a, s], out) if kind == "glu" else s, out)
        if kind == "round":
            v = self.node("Div", [self.get(op["in"]), self.get(op["scale"])], out)
            v = self.node("Floor", [self.node("Add", [v, self.scalar(0.5)], out)], out)
            return self.set(self.clip(v, op["lo"], op["hi"], out), out)
        if kind == "mean":
            v = self.node("Mul", [self.get(op["in"]), self.get(op["ratio"])], out)
            v = self.node("Div", [v, self.get(op["count"])], out)
            v = self.node("Floor", [self.node("Add", [v, self.scalar(0.5)], out)], out)
            return self.set(self.clip(v, op["lo"], op["hi"], out), out)
        if kind == "lut":
            C = op["channels"]  # index (code − offset)·C + c into the flat table
            idx = self.node("Sub", [self.get(op["in"]), self.scalar(float(op["offset"]))], out)
            idx = self.node("Mul", [idx, self.scalar(float(C))], out)
            channel = self.init(f"{out}.channels", np.arange(C, dtype=np.float64))
            idx = self.node("Add", [idx, channel], out)
            flat = self.weight(op["table"])
            idx = self.node("Cast", [idx], out, to=TensorProto.INT64)
            return self.set(self.node("Gather", [flat, idx], out, axis=0), out)
        if kind == "layernorm":
            x, H = self.get(op["in"]), float(op["H"])
            axes = self.init("c/axis_last", np.int64([-1]))
            s1 = self.node("ReduceSum", [x, axes], out, keepdims=1)
            s2 = self.node("ReduceSum", [self.node("Mul", [x, x], out), axes], out, keepdims=1)
            var = self.node(
                "Sub", [self.mul(self.scalar(H), s2, out), self.node("Mul", [s1, s1], out)], out
            )
            den = self.node("Sqrt", [self.node("Add", [var, self.get(op["eps"])], out)], out)
            num = self.node("Sub", [self.mul(self.scalar(H), x, out), s1], out)
            v = self.node("Mul", [self.node("Div", [num, den], out), self.get(op["gamma"])], out)
            return self.set(self.node("Add", [v, self.get(op["beta"])], out), out)
        if kind == "gelu":
            v = self.get(op["in"])
            e = self.erf(self.mul(v, self.scalar(intref.SQRT1_2), out), out)
            half = self.mul(self.scalar(0.5), v, out)
            return self.set(self.mul(half, self.node("Add", [self.scalar(1.0), e], out), out), out)
        if kind == "shift":
            buf = self.get(op["buffer"])
            new = self.node(
                "Unsqueeze", [self.get(op["in"]), self.init("c/axis_last", np.int64([-1]))], out
            )
            old = self.node(
                "Slice",
                [
                    buf,
                    self.init("c/zero_i64", np.int64([0])),
                    self.init("c/minus1_i64", np.int64([-1])),
                    self.init("c/axis_last", np.int64([-1])),
                ],
                out,
            )
            return self.set(self.node("Concat", [new, old], out, axis=-1), out)
        if kind == "heaviside":
            g = self.node("Greater", [self.get(op["in"]), self.scalar(0.0)], out)
            return self.set(self.node("Cast", [g], out, to=TensorProto.DOUBLE), out)
        if kind == "unsqueeze":
            axes = self.init("c/axis_last", np.int64([-1]))
            return self.set(self.node("Unsqueeze", [self.get(op["in"]), axes], out), out)
        raise ValueError(f"unknown op {kind!r}")


# ------------------------------------------------------------------------------------- graphs


def _state_type(s: dict):
    return code_type(s["lo"] + s["zp"], s["hi"] + s["zp"])


def _value(name: str, elem_type, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem_type, shape)


def _site_outputs(e: Emitter, graph: dict) -> list[onnx.ValueInfoProto]:
    """Every traced site's centered codes as int32 outputs ``code:<site>`` (B, …)."""
    x = np.zeros((1, graph["meta"]["d_input"]), dtype=np.float32)
    env, _ = intref.step(graph, x, intref.init_state(graph, 1))  # per-sample shapes
    outputs = []
    for op in intref.site_ops(graph):
        name = f"code:{op['site']}"
        e.nodes.append(helper.make_node("Cast", [e.get(op["out"])], [name], to=TensorProto.INT32))
        outputs.append(_value(name, TensorProto.INT32, ["batch", *env[op["out"]].shape[1:]]))
    return outputs


def _body(graph: dict, qonnx: bool) -> tuple[Emitter, list, list, list]:
    """The step: (emitter, inputs, state outputs, site outputs), before the head."""
    e = Emitter(dict(graph["consts"]), qonnx=qonnx)
    d_in = graph["meta"]["d_input"]
    inputs = []
    for s in graph["states"]:
        np_type, onnx_type, qdq = _state_type(s)
        inputs.append(_value(f"state:{s['name']}", onnx_type, ["batch", *s["shape"]]))
        e.set(e.from_code(f"state:{s['name']}", s["zp"], np_type, qdq, s["name"]), s["name"])
    inputs.append(_value("x", TensorProto.FLOAT, ["batch", d_in]))
    for op in graph["step"]:
        e.op(op)
    state_out = []
    for s in graph["states"]:
        np_type, onnx_type, qdq = _state_type(s)
        e.to_code(e.get(s["next"]), s["zp"], np_type, onnx_type, qdq, f"next:{s['name']}")
        state_out.append(_value(f"next:{s['name']}", onnx_type, ["batch", *s["shape"]]))
    return e, inputs, state_out, _site_outputs(e, graph)


def _model(g: onnx.GraphProto, qonnx: bool = False) -> onnx.ModelProto:
    opsets = [helper.make_opsetid("", OPSET)]
    if qonnx:
        opsets.append(helper.make_opsetid(QONNX_DOMAIN, 1))
    model = helper.make_model(g, opset_imports=opsets, producer_name="qssm")
    model.ir_version = 10
    return model


def step_model(graph: dict, qonnx: bool = False) -> onnx.ModelProto:
    """(x_t, states) → (next states, logits, per-site codes) for streaming."""
    e, inputs, state_out, sites = _body(graph, qonnx)
    for op in graph["head"]:
        e.op(op)
    n_classes = graph["meta"]["n_classes"]
    outputs = [*state_out, _value("logits", TensorProto.DOUBLE, ["batch", n_classes]), *sites]
    g = helper.make_graph(e.nodes, "qssm_step", inputs, outputs, list(e.inits.values()))
    return _model(g, qonnx)


def _sequence_of(v: onnx.ValueInfoProto) -> onnx.ValueInfoProto:
    """``code:<site>`` (B, …) → ``codes:<site>`` (B, L, …)."""
    dims = [d.dim_value for d in v.type.tensor_type.shape.dim[1:]]
    return _value("codes:" + v.name[len("code:") :], TensorProto.INT32, ["batch", "time", *dims])


def sequence_model(graph: dict) -> onnx.ModelProto:
    """x (B, L, d_input) → (logits, per-site codes (B, L, …)): a ``Scan`` over the step body."""
    e, inputs, state_out, sites = _body(graph, qonnx=False)
    body = helper.make_graph(
        e.nodes,
        "qssm_step_body",
        inputs,
        state_out + sites,
        list(e.inits.values()),
    )
    outer = Emitter(dict(graph["consts"]), prefix="seq/")  # one namespace with the body
    batch = outer.node("Shape", ["x"], "batch", start=0, end=1)
    init_states = []
    for s in graph["states"]:
        np_type, onnx_type, _ = _state_type(s)
        per_sample = outer.init(f"shape/{s['name']}", np.int64(s["shape"]))
        shape = outer.node("Concat", [batch, per_sample], s["name"], axis=0)
        zero = numpy_helper.from_array(np.asarray([s["zp"]], dtype=np_type))
        init_states.append(outer.node("ConstantOfShape", [shape], s["name"], value=zero))
    finals = [f"final:{s['name']}" for s in graph["states"]]
    seq_codes = [_sequence_of(v) for v in sites]
    outer.nodes.append(
        helper.make_node(
            "Scan",
            [*init_states, "x"],
            finals + [v.name for v in seq_codes],
            body=body,
            num_scan_inputs=1,
            scan_input_axes=[1],
            scan_output_axes=[1] * len(sites),
        )
    )
    for s in graph["states"]:
        np_type, _, qdq = _state_type(s)
        outer.set(
            outer.from_code(f"final:{s['name']}", s["zp"], np_type, qdq, s["next"]), s["next"]
        )
    for op in graph["head"]:
        outer.op(op)
    outer.nodes.append(helper.make_node("Identity", [outer.get("logits")], ["logits"]))
    d_in, n_classes = graph["meta"]["d_input"], graph["meta"]["n_classes"]
    outputs = [_value("logits", TensorProto.DOUBLE, ["batch", n_classes])]
    outputs += seq_codes
    g = helper.make_graph(
        outer.nodes,
        "qssm_sequence",
        [_value("x", TensorProto.FLOAT, ["batch", "time", d_in])],
        outputs,
        list(outer.inits.values()),
    )
    return _model(g)


def save_onnx(model: onnx.ModelProto, path: Path, check: bool = True) -> None:
    if check:
        onnx.checker.check_model(model, full_check=True)
    with atomic_path(path) as tmp:
        onnx.save(model, tmp)


def export(graph: dict, out: Path) -> dict[str, Path]:
    """Write step.onnx, sequence.onnx (QCDQ) and step_qonnx.onnx into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "step": out / "step.onnx",
        "sequence": out / "sequence.onnx",
        "qonnx": out / "step_qonnx.onnx",
    }
    save_onnx(step_model(graph), paths["step"])
    save_onnx(sequence_model(graph), paths["sequence"])
    save_onnx(step_model(graph, qonnx=True), paths["qonnx"], check=False)
    return paths
