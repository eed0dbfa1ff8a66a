"""Standard-form step graphs: real values between ops, real scales on the quantizers.

The bit-exact graphs of ``hwmap.onnx_export`` carry integer codes and unit-scale Q/DQ nodes.
The graphs here carry what the fake-quant model computes: float32 tensors in real units, every
quantization site a quantizer with its real scale, zero point and bit width — in the QONNX file a
``Quant`` node (domain ``qonnx.custom_op.general``), in the QDQ file a QuantizeLinear /
DequantizeLinear pair with a float scale.  Weights are float initializers read through a
quantizer with their real scale (QONNX) or integer initializers read through DequantizeLinear
(QDQ).  They are written from the same lowered graph: a code tensor t of scale s(t) travels as
its real value code · s(t), and each op's integer multipliers become real weights
(M · s_out / 2^S / Π s(inputs)).  They are not bit-exact: they round in float32, ties to even.

What has no uniform grid stays a float constant: polar-quantized Ā, B̄, C (the factors of the
S4D state update) and the products of per-element multipliers.  Q/DQ takes one scale per tensor
or per axis, so a per-element scale (the S4D state's) is applied by Div / Mul around a unit-scale
Q/DQ pair.  Analog (unquantized) states are plain float32.
"""

from functools import reduce
from operator import mul

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from . import ops
from .graph import Graph
from .onnx_export import OPSET, QONNX_DOMAIN, code_type

FLOAT = TensorProto.FLOAT
FORMS = ("qonnx", "qdq")


def scales(graph: Graph) -> dict[str, np.ndarray]:
    """The scale of every code tensor (float tensors: 1): site formats, a state's next value's,
    the source's through unsqueeze and the delay line, an exact accumulator's first term's."""
    s: dict[str, np.ndarray] = {"x": np.float64(1)}
    fmts = graph.formats
    state_of = {st.next: st.name for st in graph.states}
    for _ in range(2):  # a second pass for states read before their next value is written
        for op in [*graph.step, *graph.head]:
            if op.out in fmts:
                s[op.out] = np.asarray(fmts[op.out].scale, dtype=np.float64)
            elif isinstance(op, (ops.Unsqueeze, ops.Shift)) and op.src in s:
                src = s[op.src]
                s[op.out] = src[..., None] if src.ndim else src
            elif isinstance(op, ops.Affine) and op.lo is None:
                for t in op.terms:
                    if all(i in s or i in graph.consts for i in t.inputs):
                        s[op.out] = _scale_of(s, t.inputs)
                        break
            elif isinstance(op, (ops.Real, ops.Sigmoid, ops.Glu, ops.Gelu, ops.LayerNorm)):
                s[op.out] = np.float64(1)
            if op.out in state_of and op.out in s:
                s[state_of[op.out]] = s[op.out]
    return s


def _scale_of(s: dict, inputs) -> np.ndarray:
    """The product of the scales of a term's tensor inputs (constants hold codes: 1)."""
    return reduce(mul, (s[i] for i in inputs if i in s), np.float64(1))


def _bits(lo: int, hi: int) -> tuple[int, bool]:
    """(bit width, signed) of the narrowest integer grid holding stored codes in [lo, hi]."""
    signed = lo < 0
    bits = 1
    while (-(2 ** (bits - 1)) > lo or hi > 2 ** (bits - 1) - 1) if signed else hi > 2**bits - 1:
        bits += 1
    return bits, signed


def _full(bits: int, signed: bool) -> tuple[int, int]:
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)


class Emitter:
    """Writes float32 nodes for the real-valued ops; ``form`` picks the quantizer nodes."""

    def __init__(self, graph: Graph, form: str):
        self.graph, self.form = graph, form
        self.s = scales(graph)
        self.nodes: list = []
        self.inits: dict[str, onnx.TensorProto] = {}
        self.n = 0
        self.hint = ""

    def const(self, name: str, value, dtype=np.float32) -> str:
        if name not in self.inits:
            self.inits[name] = numpy_helper.from_array(np.asarray(value, dtype=dtype), name)
        return name

    def node(self, op: str, inputs: list, domain=None, **attrs) -> str:
        self.n += 1
        out = f"{self.hint}/{self.n}"
        self.nodes.append(helper.make_node(op, inputs, [out], domain=domain, **attrs))
        return out

    def scalar(self, value: float) -> str:
        return self.const(f"c/{float(value)!r}", value)

    # ---- quantizers

    def quantize(self, v: str, scale, zp: int, lo: int, hi: int, name: str) -> str:
        """The real value of ``v`` on the grid: (clip(round(v / scale) + zp) − zp) · scale, with
        stored codes in [lo + zp, hi + zp]."""
        bits, signed = _bits(lo + zp, hi + zp)
        scale = np.asarray(scale, dtype=np.float32)
        if self.form == "qonnx":
            s, z = self.const(f"{name}.scale", scale), self.scalar(float(zp))
            b = self.const(f"c/bits{bits}", np.float32(bits))
            attrs = {"signed": int(signed), "narrow": 0, "rounding_mode": "ROUND"}
            q = self.node("Quant", [v, s, z, b], domain=QONNX_DOMAIN, **attrs)
            full = _full(bits, signed)
        else:
            q, full = self._qdq(v, scale, zp, lo, hi, name)
        if (lo + zp, hi + zp) != full:  # a grid narrower than what the quantizer saturates to
            lo_r = self.const(f"{name}.lo", lo * scale)
            q = self.node(
                "Max", [self.node("Min", [q, self.const(f"{name}.hi", hi * scale)]), lo_r]
            )
        return q

    def _qdq(self, v: str, scale: np.ndarray, zp: int, lo: int, hi: int, name: str):
        """(the Q/DQ pair's output, the stored range its integer type saturates to)."""
        np_type, _, _ = code_type(min(lo + zp, 0), max(hi + zp, 0))
        full = (int(np.iinfo(np_type).min), int(np.iinfo(np_type).max))
        z = self.const(f"c/zp_{np.dtype(np_type).name}_{zp}", zp, np_type)
        if scale.size == 1:
            s = self.const(f"{name}.scale", scale.reshape(()))
            q = self.node("QuantizeLinear", [v, s, z])
            return self.node("DequantizeLinear", [q, s, z]), full
        # Q/DQ takes one scale per tensor or per axis: a per-element scale divides, then
        # multiplies around a unit-scale pair
        s = self.const(f"{name}.scale", scale)
        one = self.const("c/one", np.float32(1))
        code = self.node("QuantizeLinear", [self.node("Div", [v, s]), one, z])
        return self.node("Mul", [self.node("DequantizeLinear", [code, one, z]), s]), full

    def weight(self, name: str, codes: np.ndarray, scale: np.ndarray) -> str:
        """Integer weight codes at a real scale (broadcast to the codes' shape) as the real
        weight: a float initializer through ``Quant`` or integer codes through
        DequantizeLinear (per tensor or per last axis; otherwise the float weight)."""
        scale = np.broadcast_to(scale, codes.shape).astype(np.float32)
        bits, signed = _bits(min(int(codes.min()), 0), max(int(codes.max()), 0))
        if self.form == "qonnx":
            real = self.const(f"{name}.real", codes * scale)
            return self.quantize(real, scale, 0, *_full(bits, signed), name)
        per_axis = scale.ndim == 2 and np.all(scale == scale[:1])
        if scale.ndim and not per_axis and np.ptp(scale) > 0:
            return self.const(f"{name}.real", codes * scale)
        np_type, _, _ = code_type(int(codes.min()), int(codes.max()))
        stored = self.const(f"{name}.code", codes, np_type)
        zero = self.const(f"{name}.zp", np.zeros(scale.shape[-1:] if per_axis else ()), np_type)
        s = self.const(f"{name}.scale", scale[0] if per_axis else scale.reshape(-1)[0])
        return self.node("DequantizeLinear", [stored, s, zero], axis=-1)

    # ---- tensors

    def real(self, name: str) -> str:
        """The real value of a tensor; a constant as a float initializer of its codes."""
        if name in self.graph.consts:
            return self.const(name, self.graph.consts[name])
        return name

    def term(self, t: ops.Term, g) -> str:
        """Σ-term ``t`` in real units, times the real factor ``g`` of one code unit of it."""
        tensors = [i for i in t.inputs if i not in self.graph.consts]
        consts = [self.graph.consts[i] for i in t.inputs if i in self.graph.consts]
        g = np.asarray(g, dtype=np.float64)
        if t.kind in ("matmul", "dot"):
            (x,), (w,), w_name = tensors, consts, t.inputs[1]
            sx = np.asarray(self.s[x])
            if t.kind == "matmul":  # W (K, O): g per output, 1/s(x) per input
                scale = g.reshape(1, -1) / sx.reshape(-1, 1)
                return self.node("MatMul", [x, self.weight(w_name, w, scale)])
            scale = (g[..., None] if g.ndim else g) / sx  # Σ over the last axis of x · W
            prod = self.node("Mul", [x, self.weight(w_name, w, scale)])
            return self.node("ReduceSum", [prod, self.const("c/last", [-1], np.int64)], keepdims=0)
        k = reduce(mul, consts, np.float64(1)) * g / _scale_of(self.s, tensors)
        factor = self.const(f"{t.weight}.real", k)
        return reduce(lambda a, b: self.node("Mul", [a, b]), tensors, factor)

    def sum(self, parts: list[str]) -> str:
        return reduce(lambda a, b: self.node("Add", [a, b]), parts)

    def op(self, op: ops.Op) -> None:
        self.hint = op.out
        v = self.value(op)
        self.nodes.append(helper.make_node("Identity", [v], [op.out]))

    def site(self, op, v: str) -> str:
        """``v`` through the quantizer of op's output format (none for an analog one)."""
        f = self.graph.formats[op.out]
        return v if f.analog else self.quantize(v, f.scale, f.zp, f.lo, f.hi, op.out)

    def value(self, op: ops.Op) -> str:  # noqa: C901 (one case per op kind)
        c = self.graph.consts
        if isinstance(op, ops.Quantize):
            return self.site(op, op.src)
        if isinstance(op, ops.Float32Update):  # the terms' real products, as fake-quant
            parts = [
                self.node(
                    "Mul",
                    [t.inputs[0], self.const(f"{op.out}.f{i}", c[f] * c[s] / self.s[t.inputs[0]])],
                )
                for i, (t, f, s) in enumerate(zip(op.terms, op.factors, op.scales, strict=True))
            ]
            if isinstance(op, ops.Float32Readout):
                *modes, skip = parts
                axis = self.const("c/last", [-1], np.int64)
                parts = [self.node("ReduceSum", [self.sum(modes), axis], keepdims=0), skip]
            return self.site(op, self.sum(parts))
        if isinstance(op, ops.Affine):
            unit = 2.0**-op.shift * self.s[op.out]  # an accumulator: shift 0, scale s(out)
            r = self.sum([self.term(t, c[t.weight] * unit) for t in op.terms])
            return r if op.lo is None else self.site(op, r)
        if isinstance(op, ops.Real):
            return self.sum([self.term(t, c[t.weight]) for t in op.terms])
        if isinstance(op, ops.Sigmoid):
            return self.node("Sigmoid", [op.src])
        if isinstance(op, ops.Glu):
            a, g = f"{op.out}/a", f"{op.out}/g"
            self.nodes.append(helper.make_node("Split", [op.src], [a, g], axis=-1, num_outputs=2))
            return self.node("Mul", [a, self.node("Sigmoid", [g])])
        if isinstance(op, ops.Gelu):
            erf = self.node("Erf", [self.node("Mul", [op.src, self.scalar(ops.SQRT1_2)])])
            half = self.node("Mul", [op.src, self.scalar(0.5)])
            return self.node("Mul", [half, self.node("Add", [erf, self.scalar(1.0)])])
        if isinstance(op, ops.Round):
            return self.site(op, op.src)
        if isinstance(op, ops.Mean):  # sum / count in real units, requantized
            ratio = c[op.ratio] * self.s[op.count] * self.s[op.out] / self.s[op.src]
            v = self.node("Div", [op.src, op.count])
            return self.site(op, self.node("Mul", [v, self.const(f"{op.out}.ratio", ratio)]))
        if isinstance(op, ops.Lut):  # the table of output values, indexed by the input code
            code = self.node(
                "Round",
                [self.node("Div", [op.src, self.const(f"{op.out}.in_scale", self.s[op.src])])],
            )
            index = (code, self.scalar(op.offset), self.scalar(op.channels))
            flat = self.node("Mul", [self.node("Sub", index[:2]), index[2]])
            lanes = self.const(f"c/arange{op.channels}", np.arange(op.channels))
            i = self.node("Cast", [self.node("Add", [flat, lanes])], to=TensorProto.INT64)
            out_scale = np.asarray(self.s[op.out]).reshape(1, -1)  # one per channel, or one
            table = self.const(op.table, (c[op.table].reshape(-1, op.channels) * out_scale).ravel())
            return self.node("Gather", [table, i], axis=0)
        if isinstance(op, ops.LayerNorm):  # scale-free but for eps
            H = self.scalar(op.H)
            axis = self.const("c/last", [-1], np.int64)
            s1 = self.node("ReduceSum", [op.src, axis], keepdims=1)
            s2 = self.node("ReduceSum", [self.node("Mul", [op.src, op.src]), axis], keepdims=1)
            var = self.node("Sub", [self.node("Mul", [H, s2]), self.node("Mul", [s1, s1])])
            eps = self.const(f"{op.out}.eps", c[op.eps] * self.s[op.src] ** 2)
            den = self.node("Sqrt", [self.node("Add", [var, eps])])
            num = self.node("Sub", [self.node("Mul", [H, op.src]), s1])
            v = self.node("Mul", [self.node("Div", [num, den]), self.real(op.gamma)])
            return self.node("Add", [v, self.real(op.beta)])
        if isinstance(op, ops.Shift):
            new = self.node("Unsqueeze", [op.src, self.const("c/last", [-1], np.int64)])
            last = self.const("c/last", [-1], np.int64)
            old = self.node(
                "Slice", [op.buffer, self.const("c/zero_i64", [0], np.int64), last, last]
            )
            return self.node("Concat", [new, old], axis=-1)
        if isinstance(op, ops.Heaviside):
            return self.node("Cast", [self.node("Greater", [op.src, self.scalar(0.0)])], to=FLOAT)
        if isinstance(op, ops.Unsqueeze):
            return self.node("Unsqueeze", [op.src, self.const("c/last", [-1], np.int64)])
        raise ValueError(f"{op.out}: op {op.kind} has no standard form")


def step_model(graph: Graph, form: str) -> onnx.ModelProto:
    """(x_t, state:* in real units) → (next:* in real units, logits): the standard-form step."""
    if form not in FORMS:
        raise ValueError(f"form {form!r}: use one of {', '.join(FORMS)}")
    e = Emitter(graph, form)
    value = helper.make_tensor_value_info
    inputs = [value(s.name, FLOAT, ["batch", *s.shape]) for s in graph.states]
    inputs.append(value("x", FLOAT, ["batch", graph.d_input]))
    for op in [*graph.step, *graph.head]:
        e.op(op)
    outputs = [value(s.next, FLOAT, ["batch", *s.shape]) for s in graph.states]
    outputs.append(value("logits", FLOAT, ["batch", graph.n_classes]))
    g = helper.make_graph(e.nodes, f"qssm_step_{form}", inputs, outputs, list(e.inits.values()))
    opsets = [helper.make_opsetid("", OPSET)]
    if form == "qonnx":
        opsets.append(helper.make_opsetid(QONNX_DOMAIN, 1))
    return helper.make_model(g, opset_imports=opsets, producer_name="qssm", ir_version=10)


def stream(run, graph: Graph, x: np.ndarray) -> np.ndarray:
    """Sequences x (B, L, d_input) through a standard-form step graph, ``run(feeds) → {name:
    value}`` for one step, from zero states → logits after the last step."""
    state = {s.name: np.zeros((len(x), *s.shape), np.float32) for s in graph.states}
    for t in range(x.shape[1]):
        out = run({"x": np.ascontiguousarray(x[:, t], np.float32), **state})
        state = {s.name: out[s.next] for s in graph.states}
    return out["logits"].astype(np.float64)


def onnxruntime_run(model: onnx.ModelProto):
    """One step of ``model`` in onnxruntime (one thread).  Graph optimizations are off: its QDQ
    propagation moves quantizers across the delay line's Concat with the wrong integer type."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), options, ["CPUExecutionProvider"])
    names = [o.name for o in model.graph.output]
    return lambda feeds: dict(zip(names, sess.run(names, feeds), strict=True))


def qonnx_run(model: onnx.ModelProto, batch: int):
    """One step of ``model`` in qonnx's executor (``qonnx.core.onnx_exec``), at a fixed batch
    (the executor needs every shape)."""
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.transformation.infer_shapes import InferShapes

    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    for v in [*fixed.graph.input, *fixed.graph.output]:
        v.type.tensor_type.shape.dim[0].dim_value = batch
    wrapper = ModelWrapper(fixed).transform(InferShapes())
    return lambda feeds: execute_onnx(wrapper, feeds)


def agreement(logits: np.ndarray, reference: np.ndarray) -> dict:
    """Prediction agreement and the largest logit difference against ``reference``."""
    same = float((logits.argmax(-1) == reference.argmax(-1)).mean())
    return {"prediction_agreement": same, "max_logit_diff": float(np.abs(logits - reference).max())}


def measure(run, graph: Graph, x: np.ndarray, references: dict[str, np.ndarray]) -> dict:
    """A standard-form step graph streamed over x, against each reference's logits."""
    logits = stream(run, graph, x)
    return {"sequences": len(x)} | {f"vs_{k}": agreement(logits, r) for k, r in references.items()}
