"""Integer lowering: a quantized run's model → an integer graph (``hwmap.graph``, its ops in
``hwmap.ops``), and the other places the hardware side needs the torch model (fake-quant codes,
hardware-aware QAT noise).

The scales of every tensor are known here, so each requantization gets its integer multipliers
and a shift chosen so that its fixed-point sum stays below 2^52 (exact in int64 and float64).  A
quantized S4D state update and its readout become ``Float32Update`` / ``Float32Readout`` (they
round as fake-quant does, in float32) and keep their fixed-point terms.  The layers a
switched-capacitor core runs (the hardware minGRU, S4D-Real) also get a hardware record naming
their analog parts' tensors and constants.  This is the only hwmap module that imports torch,
Brevitas or qssm's models.
"""

import math
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F

from qssm.models.backbone import MinGRUBlock, S4DBlock
from qssm.models.mgrade import MGradeLayer
from qssm.models.tags import Tap
from qssm.quant.layers import Quantized
from qssm.quant.mingru import QuantMinGRU
from qssm.quant.quantizers import PolarQuantizer, SiteQuantizer
from qssm.quant.wrap import quantizers

from . import graph, ops
from .graph import ANALOG_BITS, Format, Graph, MinGRUHw, S4DRealHw, State
from .ops import Term

PRECISION = 52  # fixed-point sums stay below 2^52: exact in int64 and float64
MULTIPLIER_SLACK_BITS = 4  # rounded multipliers move a sum by < 1/16 of an output step
FIXED_BITS = 16  # weights folded with per-element scales become 16-bit fixed point
INT32 = 2**31 - 1
# An analog S4D state: the finest of 2^24 … 2^21 steps over its worst-case range whose
# fixed-point sums fit (else 2^ANALOG_BITS).  Each step rounds the state by up to half a step,
# and a slow mode (Ā → 1) sums those roundings over ~1/(1 − Ā) steps into the readout: on 2^20
# steps a 2 × 32-channel × 32-mode S4D-Real read out 1 in 5,000 output codes one off
# fake-quant's, on 2^24 steps 1 in 90,000.  2^24 is the most the update's 52-bit sum holds with
# its multipliers' rounding below 1/8 step (slack Σ bounds / 2^(shift+1): real 2^24 / 2^28,
# complex twice that); the readout's slack grows with the state's steps, its modes and C's bits.
S4D_ANALOG_BITS = (24, 23, 22, 21)


class LoweringError(ValueError):
    """The model holds something the integer graph cannot express; names the module and the fix."""


def site_quantizer(module, site: str):
    """The quantizer of a quantized layer's site or of a block's activation tap (None: float)."""
    if isinstance(module, Quantized):
        return module._quantizer(site)
    tap = module.taps[site]
    return None if isinstance(tap, Tap) else tap


def site_q(module, site: str, shape: tuple[int, ...] | None, name: str) -> Format | None:
    """The format of a quantized activation site (None when the site is not quantized).
    ``shape``: the per-sample channel shape of a per-channel scale."""
    quantizer = site_quantizer(module, site)
    if quantizer is None:
        return None
    if isinstance(quantizer, PolarQuantizer):
        raise LoweringError(f"{name}: a polar quantizer on an activation cannot be lowered")
    scale, zp, qmin, qmax = quantizer.qparams()
    scale, zp = _np(scale), _np(zp)
    if scale.size == 1:
        scale = scale.reshape(())
    elif shape is None:  # a lookup table of a per-tensor input has one table for every channel
        raise LoweringError(
            f"{name}: a per-channel scale after a per-tensor input cannot be tabulated; make "
            f"role {quantizer.site.role} per_tensor"
        )
    elif scale.size == math.prod(shape):
        scale = scale.reshape(shape)
    elif scale.size == shape[0]:  # one scale per channel, shared along the other axes
        scale = np.broadcast_to(scale.reshape(-1, *[1] * (len(shape) - 1)), shape)
    else:
        raise LoweringError(f"{name}: {scale.size} scales do not fit its shape {shape}")
    z = int(round(float(zp.ravel()[0])))
    if zp.size > 1 and np.ptp(zp) > 0 or zp.ravel()[0] != z:
        raise LoweringError(
            f"{name}: per-channel or fractional zero points are not lowered; "
            "make the role symmetric or per_tensor"
        )
    return Format(scale, z, qmin - z, qmax - z)


def need(module, site: str, shape, name: str, why: str) -> Format:
    q = site_q(module, site, shape, name)
    if q is None:
        role = (module.sites()[site] if isinstance(module, Quantized) else module.taps[site]).role
        raise LoweringError(
            f"{name} is not quantized, but {why}; quantize role {role} in the recipe's "
            "quant section"
        )
    return q


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


class Builder:
    """Collects ops, constants, per-tensor bounds (largest |centered code|), states, formats and
    hardware records."""

    def __init__(self):
        self.ops: list[ops.Op] = []
        self.consts: dict[str, np.ndarray] = {}
        self.bounds: dict[str, float] = {}
        self.states: list[State] = []
        self.formats: dict[str, Format] = {}
        self.layers: list = []

    def tried(self, lowered):
        """``lowered()``, or None when it raises LoweringError — with whatever it added undone."""
        saved = {k: type(v)(v) for k, v in vars(self).items()}
        try:
            return lowered()
        except LoweringError:
            vars(self).update(saved)
            return None

    def const(self, name: str, value) -> str:
        value = np.asarray(value)
        assert name not in self.consts, name
        self.consts[name] = value
        self.bounds[name] = float(np.abs(value).max()) if value.size else 0.0
        return name

    def state(self, name: str, q: Format, shape: tuple[int, ...]) -> str:
        """A recurrent tensor; its next value is bound later with :meth:`bind`."""
        self.states.append(State(name, tuple(shape), q.zp, q.lo, q.hi))
        self.bounds[name] = q.bound
        return name

    def bind(self, name: str, nxt: str) -> None:
        next(s for s in self.states if s.name == name).next = nxt

    def emit(self, op: ops.Op, bound: float | None = None, q: Format | None = None) -> str:
        self.ops.append(op)
        if bound is not None:
            self.bounds[op.out] = bound
        if q is not None:
            self.formats[op.out] = Format(np.asarray(q.scale), q.zp, q.lo, q.hi, q.analog)
        return op.out

    def _term_bound(self, kind: str, inputs: list[str]) -> float:
        bound = math.prod(self.bounds[i] for i in inputs)
        if kind == "matmul":
            bound *= self.consts[inputs[1]].shape[0]
        elif kind == "dot":
            bound *= self.consts[inputs[1]].shape[-1]
        return bound

    def real_bound(self, terms: list) -> float:
        """The largest |Σ terms| of terms (kind, inputs, real scale of one unit)."""
        return sum(self._term_bound(k, i) * np.abs(s).max() for k, i, s in terms)

    def _terms(self, out: str, terms: list, weights: list, prefix: str = "M") -> tuple:
        """Terms (kind, inputs, …) as ``Term``s, weight t the constant ``{out}.{prefix}{t}``."""
        return tuple(
            Term(kind, tuple(inputs), self.const(f"{out}.{prefix}{t}", w))
            for t, ((kind, inputs, *_), w) in enumerate(zip(terms, weights, strict=True))
        )

    def affine(self, out: str, terms: list, q: Format, name: str, site=None) -> ops.Affine:
        """Requantize Σ terms (kind, inputs, real scale of one unit) into format ``q``."""
        ratios = [np.asarray(scale, dtype=np.float64) / q.scale for _, _, scale in terms]
        total = self.real_bound([(k, i, r) for (k, i, _), r in zip(terms, ratios, strict=True)])
        shift = PRECISION - math.ceil(math.log2(total + 2))
        # rounding the multipliers moves the sum by at most Σ bound/2^(shift+1) output steps
        slack = sum(self._term_bound(k, i) for k, i, _ in terms) / 2.0 ** (shift + 1)
        if slack > (1.0 if q.analog else 2.0**-MULTIPLIER_SLACK_BITS):  # analog: one step
            raise LoweringError(
                f"{name}: a 52-bit fixed-point sum cannot hold this requantization to "
                f"1/{2**MULTIPLIER_SLACK_BITS} of an output step (its inputs are too wide for "
                "its output scale); give the output more bits or narrow the inputs"
            )
        Ms = [np.rint(r * 2.0**shift).astype(np.int64) for r in ratios]
        out_terms = self._terms(out, terms, Ms)
        op = ops.Affine(out=out, terms=out_terms, shift=shift, lo=q.lo, hi=q.hi, site=site)
        self.emit(op, bound=q.bound, q=q)
        return op

    def accumulate(self, out: str, terms: list) -> str:
        """An exact integer sum of terms (multipliers 1, no shift, no clip)."""
        out_terms = self._terms(out, terms, [np.int64(1)] * len(terms))
        bound = sum(self._term_bound(k, i) for k, i in terms)
        if bound >= 2.0**PRECISION:
            raise LoweringError(f"{out}: an accumulator would exceed 2^{PRECISION}")
        return self.emit(ops.Affine(out=out, terms=out_terms, shift=0, lo=None, hi=None), bound)

    def real(self, out: str, terms: list) -> str:
        """Σ terms × float64 scale → a float64 tensor."""
        scales = [np.asarray(s, dtype=np.float64) for *_, s in terms]
        return self.emit(ops.Real(out=out, terms=self._terms(out, terms, scales, "s")))

    def round(self, out: str, src: str, q: Format, site=None) -> str:
        scale = self.const(f"{out}.scale", q.scale)
        op = ops.Round(out=out, src=src, scale=scale, lo=q.lo, hi=q.hi, site=site)
        return self.emit(op, bound=q.bound, q=q)


# ------------------------------------------------------------------------------------- pieces


def analog(top: float, bits: int = ANALOG_BITS) -> Format:
    """An unquantized state bounded by ``top``: fixed point with 2^bits steps over it (rounding
    may step past the bound by one)."""
    span = 2**bits + 2
    return Format(np.float64(top / 2**bits), 0, -span, span, analog=True)


def fixed(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Real weights (O, K) → 16-bit integers and a per-output scale (O, 1)."""
    top = np.abs(w).max(axis=-1, keepdims=True)
    scale = np.where(top > 0, top / (2 ** (FIXED_BITS - 1) - 1), 1.0)
    return np.rint(w / scale).astype(np.int64), scale


def codes_or_fixed(w: np.ndarray, rows: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Weights (O, K) as integer codes times the per-output scale ``rows`` (O, 1) when they are
    (the quantizer's own codes), else as 16-bit fixed point."""
    if rows is not None:
        codes = w / rows
        if np.abs(codes - np.rint(codes)).max() < 1e-3:
            return np.rint(codes).astype(np.int64), rows
    return fixed(w)


def linear_terms(b: Builder, lin, x: str, qx: Format, name: str) -> list:
    """Terms of W x + bias for a QuantLinear on codes ``x`` of format ``qx``."""
    if lin._quantizer("weight") is None:
        raise LoweringError(
            f"{name}.weight is not quantized; quantize role {lin.roles[0]} in the recipe"
        )
    with torch.no_grad():
        W = _np(lin.q("weight", lin.weight))  # (O, K)
        bias = _np(lin.q("bias", lin.bias))  # (O,)
    s_w = _np(lin._quantizer("weight").qparams()[0]).reshape(-1, 1)  # (O, 1) or (1, 1)
    if np.ndim(qx.scale) == 0:  # codes times a per-output scale
        codes, scale = np.rint(W / s_w).astype(np.int64), s_w * qx.scale
    else:  # a per-channel input scale is folded into 16-bit fixed-point weights
        codes, scale = fixed(W * qx.scale)
    terms = [("matmul", [x, b.const(f"{name}.W", codes.T)], scale.ravel())]
    if lin._quantizer("bias") is not None:
        s_b = _np(lin._quantizer("bias").qparams()[0]).ravel()[0]
        bias_codes = np.rint(bias / s_b).astype(np.int64)
        terms.append(("const", [b.const(f"{name}.b", bias_codes)], s_b))
    elif np.any(bias != 0):
        bias_codes, scale = fixed(bias[None])
        terms.append(("const", [b.const(f"{name}.b", bias_codes[0])], scale.ravel()[0]))
    return terms


def times(b: Builder, z: str, s_z, terms: list, name: str) -> list:
    """The terms of z ⊙ (Σ terms): contractions are first accumulated exactly."""
    out = []
    for t, (kind, inputs, scale) in enumerate(terms):
        if kind in ("matmul", "dot"):
            inputs = [b.accumulate(f"{name}.acc{t}", [(kind, inputs)])]
        out.append(("mul", [z, *inputs], s_z * scale))
    return out


def lut(b: Builder, module, site: str, fn, x: str, qx: Format, name: str) -> tuple[str, Format]:
    """codes → fn → the site's quantizer, tabulated over every input code (exactly the
    fake-quant arithmetic: the table is computed by the same float32 torch ops)."""
    channels = np.shape(qx.scale)
    q = need(module, site, channels or None, f"{name}.{site}", "it follows a lookup table")
    codes = np.arange(qx.lo, qx.hi + 1)
    if qx.hi - qx.lo > 2**16:
        raise LoweringError(f"{name}: a {qx.hi - qx.lo + 1}-entry lookup table is too large")
    x_real = torch.tensor(codes[:, None] * np.reshape(qx.scale, (1, -1)), dtype=torch.float32)
    with torch.no_grad():
        y = _np(site_quantizer(module, site)(fn(x_real[None]))[0])  # (K, C)
    table = np.rint(y / np.reshape(q.scale, (1, -1))).astype(np.int64)
    # flat, row k·C + c: entry c of code k (C = 1 for a per-tensor table)
    flat = b.const(f"{name}.{site}.table", table.reshape(-1))
    out, where = f"{name}.{site}", f"{name}:{site}"
    op = ops.Lut(out=out, src=x, table=flat, offset=int(qx.lo), channels=table.shape[1], site=where)
    return b.emit(op, bound=q.bound, q=q), q


# ------------------------------------------------------------------------------------- blocks


def float32(b: Builder, op: ops.Affine, kind, factors, scales, out_scale, **more) -> ops.Affine:
    """``op``, just emitted, as ``kind`` (``Float32Update``, ``Float32Readout``): evaluated in
    fake-quant's float32 arithmetic (``S4DScan``'s kernel, ``QuantS4D.step_loop``/``readout``) with
    these factors, input scales and output scale — the float32 values fake-quant computes with."""

    def const(name: str, v) -> str:
        f = np.asarray(v, dtype=np.float32)
        assert np.array_equal(f, np.asarray(v)), name  # float32 values, kept exactly
        return b.const(f"{op.out}.{name}", f)

    fields = {"factors": tuple(const(f"f{t}", v) for t, v in enumerate(factors))}
    fields["scales"] = tuple(const(f"g{t}", v) for t, v in enumerate(scales))
    assert b.ops[-1] is op
    b.ops[-1] = kind(**vars(op), **fields, out_scale=const("scale", out_scale), **more)
    return b.ops[-1]


def s4d_real_record(b: Builder, ssm, name: str, update: ops.Affine, y: ops.Affine) -> S4DRealHw:
    keep, write = update.terms
    readout, skip = y.terms
    deficit = None
    a_q = ssm._quantizer("A")
    if isinstance(a_q, PolarQuantizer):  # |Ā| on the retention-deficit grid
        deficit = b.const(f"{name}.deficit", _np(a_q.magnitude.qparams()[0]).ravel())
    (x,), (u,), (u_y,) = keep.inputs, write.inputs, skip.inputs
    retention = graph.Retention(x, update.out, keep.weight, u, write.weight, update.shift, deficit)
    mac = graph.Readout(
        y.out, *readout.inputs, readout.weight, u_y, skip.weight, y.shift, y.lo, y.hi
    )
    return S4DRealHw(name, retention, mac)


def s4d_block(b: Builder, block: S4DBlock, name: str, u: str, qu: Format) -> tuple[str, Format]:
    ssm, sname = block.ssm, f"{name}.ssm"
    H, n = ssm.C.shape[:2]
    with torch.no_grad():
        A, B_, C, D = (
            _np(t) if not t.is_complex() else t.detach().cdouble().numpy() for t in ssm.quantized()
        )
    lowered = partial(s4d_layer, b, ssm, sname, u, qu, (A, B_, C, D))
    qx = site_q(ssm, "state", (H, n), f"{sname}.state")
    if qx is not None:
        y, qy = lowered(qx)
    else:  # analog state: |x| ≤ max|u|·|B̄| / (1 − |Ā|), the finest fixed point that fits
        top = float((qu.bound * np.max(qu.scale) * np.abs(B_) / (1 - np.abs(A))).max())
        fits = (b.tried(partial(lowered, analog(top, bits))) for bits in S4D_ANALOG_BITS)
        y, qy = next(filter(None, fits), None) or lowered(analog(top))  # none fits: its error
    g, qg = lut(b, block, "gelu", F.gelu, y.out, qy, name)
    v = b.real(f"{name}.linear", linear_terms(b, block.linear, g, qg, f"{name}.linear"))
    glu = b.emit(ops.Glu(out=f"{name}.glu", src=v))
    r = b.real(f"{name}.residual", [("mul", [u], qu.scale), ("float", [glu], 1.0)])
    return act_round(b, block, "block", r, H, name, "the block output is a code")


def s4d_layer(b: Builder, ssm, sname: str, u: str, qu: Format, params, qx: Format):
    """The S4D layer (its state update and readout) with its state in format ``qx`` →
    (the output op, its format)."""
    A, B_, C, D = params
    H, n = ssm.C.shape[:2]
    if qx.zp != 0:
        raise LoweringError(
            f"{sname}.state: an asymmetric state cannot be lowered; make it symmetric"
        )
    sx, su = qx.scale, np.reshape(qu.scale, (-1, 1)) if np.ndim(qu.scale) else qu.scale
    u3 = b.emit(ops.Unsqueeze(out=f"{sname}.u", src=u), bound=qu.bound)
    parts = ["re", "im"] if not ssm.real else ["re"]
    x = {p: b.state(f"{sname}.x_{p}", qx, (H, n)) for p in parts}
    if ssm.real:  # per part: (input, factor, input scale) of each term of the update
        update = {"re": [(x["re"], A, sx), (u3, B_, su)]}
        readout = {"re": C}
    else:  # (Ā_re·x_re − Ā_im·x_im) + B̄_re·u and (Ā_im·x_re + Ā_re·x_im) + B̄_im·u
        update = {
            "re": [(x["re"], A.real, sx), (x["im"], -A.imag, sx), (u3, B_.real, su)],
            "im": [(x["re"], A.imag, sx), (x["im"], A.real, sx), (u3, B_.imag, su)],
        }
        readout = {"re": 2 * C.real, "im": -2 * C.imag}
    new = {}
    for p in parts:
        terms = [("mul", [i], f * s) for i, f, s in update[p]]
        new[p] = b.affine(f"{sname}.x_{p}'", terms, qx, f"{sname}.state")
        if not qx.analog:  # rounded as fake-quant's recurrence rounds it: bit for bit
            _, factors, scales = zip(*update[p], strict=True)
            new[p] = float32(b, new[p], ops.Float32Update, factors, scales, sx)
        b.bind(x[p], new[p].out)
    qy = need(ssm, "output", (H,), f"{sname}.output", "GELU is a lookup table over its codes")
    terms = []
    c_q = ssm._quantizer("C")
    # one state scale per channel (or per tensor): C stays codes times a per-row scale
    sx_row = sx if np.ndim(sx) == 0 else sx[:, :1] if np.all(sx == sx[:, :1]) else None
    for p in parts:  # C codes, or 16-bit fixed point where per-element state scales fold in
        rows = None
        if c_q is not None and not isinstance(c_q, PolarQuantizer) and sx_row is not None:
            rows = (2 if not ssm.real else 1) * _np(c_q.qparams()[0]).reshape(-1, 1) * sx_row
        w, s = codes_or_fixed(readout[p] * sx, rows)
        terms.append(("dot", [new[p].out, b.const(f"{sname}.C_{p}", w)], s.ravel()))
    su_y = np.ravel(qu.scale) if np.ndim(qu.scale) else qu.scale
    terms.append(("mul", [u], D * su_y))
    y = b.affine(f"{sname}.output", terms, qy, sname, site=f"{sname}:output")
    if not qx.analog and qy.zp == 0:  # read out as fake-quant reads it out: bit for bit
        factors, scales = [readout[p] for p in parts] + [D], [sx] * len(parts) + [su_y]
        y = float32(b, y, ops.Float32Readout, factors, scales, qy.scale, modes=n)
    if ssm.real:
        b.layers.append(s4d_real_record(b, ssm, sname, new["re"], y))
    return y, qy


def mingru_hw_record(
    b: Builder, name: str, gate: ops.Affine, cand_mac: list, h_new: ops.Affine, out: str
) -> MinGRUHw:
    def value(t: Term):  # a constant (the last input) times its multiplier, exact integers
        return b.consts[t.inputs[-1]] * b.consts[t.weight]

    mac, *offsets = gate.terms  # the MAC, then the bias and the hard sigmoid's ½
    offset = b.const(f"{gate.out}.offset", sum(value(t) for t in offsets))
    keep, share, cand, *bias = h_new.terms  # h, z·h, z·acc, z·bias
    (h,), (z, _), (_, acc) = keep.inputs, share.inputs, cand.inputs
    cand_offset = b.const(f"{h_new.out}.cand_offset", sum(value(t) for t in bias) + np.int64(0))
    weights = (keep.weight, share.weight, cand.weight, cand_offset)
    bank = graph.GatedBank(h, h_new.out, z, acc, *weights, h_new.shift)
    adc = graph.Adc(gate.out, *mac.inputs, mac.weight, offset, gate.shift, gate.lo, gate.hi)
    return MinGRUHw(name, adc, graph.Mac(acc, *cand_mac), bank, out)


def mingru(b: Builder, gru, name: str, x: str, qx: Format) -> tuple[str, Format]:
    H = gru.Wz.out_features
    qg = need(gru, "gate", (H,), f"{name}.gate", "the gate multiplies the state in codes")
    z_terms = linear_terms(b, gru.Wz, x, qx, f"{name}.Wz")
    if gru.hardware:  # hard sigmoid: clamp(v/4 + 1/2, 0, 1) is a requantization with a clip
        one = b.const(f"{name}.one", np.int64(1))
        terms = [(k, i, s / 4) for k, i, s in z_terms] + [("const", [one], 0.5)]
        top = math.floor(1 / float(np.max(qg.scale)))  # z = k·s ≤ 1 (QuantMinGRU._at_most_one)
        qz = Format(qg.scale, qg.zp, max(qg.lo, 0), min(qg.hi, top))
        gate = b.affine(f"{name}.gate", terms, qz, f"{name}.gate", site=f"{name}:gate")
        z = gate.out
    else:
        v = b.real(f"{name}.pre_gate", z_terms)
        s = b.emit(ops.Sigmoid(out=f"{name}.sigmoid", src=v))
        z = b.round(f"{name}.gate", s, qg, site=f"{name}:gate")
    c_terms = linear_terms(b, gru.Wh, x, qx, f"{name}.Wh")
    qc = site_q(gru, "cand", (H,), f"{name}.cand")
    if qc is not None:
        cand = b.affine(f"{name}.cand", c_terms, qc, f"{name}.cand", site=f"{name}:cand")
        c_terms = [("mul", [cand.out], qc.scale)]
    qh = site_q(gru, "state", (H,), f"{name}.state")
    if qh is None:  # analog state: |h| ≤ max |h̃| (a convex combination), fixed point over it
        qh = analog(b.real_bound(c_terms))
    h = b.state(f"{name}.h", qh, (H,))
    terms = [("mul", [h], qh.scale), ("mul", [z, h], -qg.scale * qh.scale)]
    h_new = b.affine(
        f"{name}.h'", terms + times(b, z, qg.scale, c_terms, name), qh, f"{name}.state"
    )
    b.bind(h, h_new.out)
    if gru.hardware:  # comparator: binary output
        one = Format(np.float64(1.0), 0, 0, 1)
        op = ops.Heaviside(out=f"{name}.out", src=h_new.out, site=f"{name}:comparator")
        out = b.emit(op, bound=1, q=one)
        if qc is None:  # the analog candidate: a MAC feeding the state bank
            b.layers.append(mingru_hw_record(b, name, gate, c_terms[0][1], h_new, out))
        return out, one
    qo = need(gru, "output", (H,), f"{name}.output", "the output is a code")
    out = b.affine(f"{name}.out", [("mul", [h_new.out], qh.scale)], qo, name, site=f"{name}:output")
    return out.out, qo


def act_round(b: Builder, module, site: str, v: str, H: int, name: str, why: str):
    """A float64 tensor onto a quantized activation site."""
    q = need(module, site, (H,), f"{name}.{site}", why)
    return b.round(f"{name}.{site}", v, q, site=f"{name}:{site}"), q


def normalized(b: Builder, block, site: str, x: str, qx: Format, name: str, why: str):
    """The block's LayerNorm ``site`` of codes onto its quantized site, in float64 from exact
    integer moments: (H·x − Σx) / sqrt(H·Σx² − (Σx)² + H²·eps/s²) · γ + β."""
    ln, norm = f"{name}.{site}.ln", getattr(block, site)
    if np.ndim(qx.scale):
        raise LoweringError(f"{ln}: LayerNorm over a per-channel scale; make its input per_tensor")
    H = norm.normalized_shape[0]
    eps = b.const(f"{ln}.eps", np.float64(H * H * norm.eps / float(qx.scale) ** 2))
    gamma, beta = b.const(f"{ln}.gamma", _np(norm.weight)), b.const(f"{ln}.beta", _np(norm.bias))
    v = b.emit(ops.LayerNorm(out=ln, src=x, H=H, eps=eps, gamma=gamma, beta=beta))
    return act_round(b, block, site, v, H, name, why)


def residual(b: Builder, module, x: str, qx: Format, v: str, H: int, site: str, name: str):
    r = b.real(f"{name}.{site}.sum", [("mul", [x], qx.scale), ("float", [v], 1.0)])
    return act_round(b, module, site, r, H, name, "the residual sum is a code")


def mlp(b: Builder, m, x: str, qx: Format, name: str) -> str:
    """fc1 → GELU → the gelu site → fc2, as float64 (the residual adds it)."""
    v = b.real(f"{name}.fc1", linear_terms(b, m.fc1, x, qx, f"{name}.fc1"))
    g = b.emit(ops.Gelu(out=f"{name}.gelu_f", src=v))
    g, qg = act_round(b, m, "gelu", g, m.fc1.out_features, name, "fc2 takes codes")
    return b.real(f"{name}.fc2", linear_terms(b, m.fc2, g, qg, f"{name}.fc2"))


def mingru_block(b: Builder, block: MinGRUBlock, name: str, x: str, qx: Format):
    if block.hardware:
        return mingru(b, block.gru, f"{name}.gru", x, qx)
    H = block.norm1.normalized_shape[0]
    n1, q1 = normalized(b, block, "norm1", x, qx, name, "the minGRU takes codes")
    g, qg = mingru(b, block.gru, f"{name}.gru", n1, q1)
    g_real = b.real(f"{name}.gru_f", [("mul", [g], qg.scale)])
    mid, qm = residual(b, block, x, qx, g_real, H, "mid", name)
    n2, q2 = normalized(b, block, "norm2", mid, qm, name, "the MLP takes codes")
    return residual(b, block, mid, qm, mlp(b, block.mlp, n2, q2, f"{name}.mlp"), H, "block", name)


def delay_line(b: Builder, conv, x: str, qx: Format, name: str) -> tuple[str, str, np.ndarray]:
    """The integer-delay convolution as a buffer of the last max_delay input codes (a state)
    and the kernel codes (H, max_delay) with their per-channel scale."""
    if not conv.integer_delays:
        raise LoweringError(f"{name}: delays are not integer; quantize role conv.delay")
    if conv._quantizer("weight") is None:
        raise LoweringError(f"{name}.weight is not quantized; quantize role conv.weight")
    H, J = conv.weight.shape[0], conv.max_delay
    with torch.no_grad():
        kernel = _np(conv.kernel())  # (H, J): tap weights at their integer delays
    s_w = _np(conv._quantizer("weight").qparams()[0]).reshape(-1, 1)  # (H, 1)
    buf = b.state(f"{name}.buffer", qx, (H, J))
    new = b.emit(ops.Shift(out=f"{name}.buffer'", src=x, buffer=buf), bound=qx.bound)
    b.bind(buf, new)
    codes = b.const(f"{name}.K", np.rint(kernel / s_w).astype(np.int64))
    return new, codes, s_w.ravel() * qx.scale


def mgrade_block(b: Builder, block: MGradeLayer, name: str, x: str, qx: Format):
    H = block.conv.weight.shape[0]
    n, qn = x, qx  # the hardware layer's delay line holds its input codes (bits, after one)
    if not block.hardware:
        n, qn = normalized(b, block, "norm", x, qx, name, "the delay line holds codes")
    conv = f"{name}.conv"
    buf, K, scale = delay_line(b, block.conv, n, qn, conv)
    qc = need(block, "conv", (H,), conv, "the minGRU takes codes")
    u = b.affine(conv, [("dot", [buf, K], scale)], qc, conv, site=f"{name}:conv")
    g, qg = mingru(b, block.gru, f"{name}.gru", u.out, qc)
    if block.hardware:  # the delay line feeds the hardware minGRU: one record
        b.layers[-1] = b.layers[-1]._replace(line=graph.DelayLine(n, buf, K, u.out))
        return g, qg
    return residual(b, block, x, qx, mlp(b, block.mlp, g, qg, f"{name}.mlp"), H, "block", name)


# a block's type → its lowering (b, block, name, input, its format) → (output, its format)
BLOCKS = {S4DBlock: s4d_block, MinGRUBlock: mingru_block, MGradeLayer: mgrade_block}


def lower(model) -> Graph:
    """A quantized Classifier → its integer graph."""
    b = Builder()
    d_in, H = model.d_input, model.encoder.out_features
    qi = need(model, "input", (d_in,), "input", "the graph takes codes")
    scale = b.const("input.scale", np.float32(qi.scale))
    op = ops.Quantize(
        out="input", src="x", scale=scale, zp=qi.zp, lo=qi.lo, hi=qi.hi, site=":input"
    )
    x = b.emit(op, bound=qi.bound, q=qi)
    qe = need(model, "encoder", (H,), "encoder output", "it feeds the first block")
    terms = linear_terms(b, model.encoder, x, qi, "encoder")
    h, qh = b.affine("encoder", terms, qe, "encoder", site=":encoder").out, qe
    for i, block in enumerate(model.blocks):
        h, qh = BLOCKS[type(block)](b, block, f"blocks.{i}", h, qh)
    qp = need(model, "pool", (H,), "pooled features", "the decoder takes codes")
    if model.pool == "mean":  # running sums in the step, their mean in the head
        total = b.state("pool.sum", Format(np.float64(1), 0, -INT32, INT32), (H,))
        count = b.state("pool.count", Format(np.float64(1), 0, 0, INT32), (1,))
        one = b.const("pool.one", np.int64(1))
        b.bind(total, b.accumulate("pool.sum'", [("mul", [total]), ("mul", [h])]))
        b.bind(count, b.accumulate("pool.count'", [("mul", [count]), ("const", [one])]))
        step = len(b.ops)  # the ops before the head
        ratio = b.const("pool.ratio", np.asarray(qh.scale / qp.scale, dtype=np.float64))
        sums = {"src": "pool.sum'", "count": "pool.count'", "ratio": ratio}
        op = ops.Mean(out="pool", **sums, lo=qp.lo, hi=qp.hi, site=":pool")
        pooled = b.emit(op, bound=qp.bound, q=qp)
    else:  # the last step's output, kept as a state so the head sees it after a scan
        b.bind(b.state("pool.last", qh, (H,)), h)
        step = len(b.ops)
        pooled = b.affine("pool", [("mul", [h], qh.scale)], qp, "pool", site=":pool").out
    b.real("logits", linear_terms(b, model.decoder, pooled, qp, "decoder"))
    meta = (model.config["family"], d_in, model.n_classes, h)
    return Graph(*meta, b.states, b.ops[:step], b.ops[step:], b.consts, b.formats, b.layers)


# ------------------------------------------------------------------------------------- torch


def fakequant(model, x: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Brevitas fake-quant on sequences x (B, L, d) → (logits, site key → the centered codes
    (value / scale) of every activation site at every step (B, L, …), and the hardware minGRU's
    comparator decisions)."""
    seen: dict[str, list[np.ndarray]] = {}

    def recorder(key: str, scaled: bool):  # a forward hook: codes (out / scale) or decisions
        def record(module, args, out):
            value = torch.round(out / module.qparams()[0]) if scaled else out
            seen.setdefault(key, []).append(value.detach().numpy())

        return record

    sites = [(q, k, True) for k, q in quantizers(model).items() if isinstance(q, SiteQuantizer)]
    for name, module in model.named_modules():
        if isinstance(module, QuantMinGRU) and module.hardware:  # comparator decisions, 0 or 1
            sites.append((module, f"{name}:comparator", False))
    hooks = [m.register_forward_hook(recorder(k, scaled)) for m, k, scaled in sites]
    try:
        with torch.no_grad():
            logits = model(torch.as_tensor(x), mode="recurrent").numpy()
    finally:
        for h in hooks:
            h.remove()
    return logits, {k: v[-1].astype(np.int64) for k, v in seen.items()}


def set_noise(model, noise: dict[str, dict | None]) -> None:
    """Hardware-aware QAT: the Gaussian noise σ (real units) of each hardware minGRU, by module
    name as its hardware record names it (``QuantMinGRU.noise``: gate, cand, out; None: none)."""
    for name, sigmas in noise.items():
        model.get_submodule(name).noise = sigmas
