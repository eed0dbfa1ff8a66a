"""The ops of the integer graph, each defined once.

Every tensor holds *centered* integer codes (code − zero point) or, for the float functions, an
exact float64 value.  An op is a frozen dataclass (its fields are names of tensors and constants,
and integers) with one method, ``eval(b)``: its arithmetic, written over a backend ``b`` that
supplies the tensors (``b.get``) and these primitives: exp sqrt abs sign floor (elementwise),
clip(v, lo, hi), matmul(a, b), sum_last / sum_keep (Σ over the last axis, without / with it),
shr(v, S) (floor of v / 2^S), float / codes (the numpy dtypes; no-ops elsewhere),
quantize(src, scale, zp, lo, hi) (rint(x / scale) of the float32 input), halves, gather(table,
index), arange(n), positive (1 where > 0), unsqueeze_last, drop_last, concat_last,
slice_last(v, a, c) (v[..., a:c]), f32 (to float32), rint (half to even, to exact integers), and
the operators + − × / and negation.
Three backends run the same definitions: the numpy integer reference (``hwmap.intref``: int64
codes, float64 reals), the numba source of the compiled step (``hwmap.compiled``) and ONNX nodes
(``hwmap.onnx_export``), both float64 holding exact integers — every fixed-point sum stays below
2^52.  Float functions (and the float32 ops) run in the same op order everywhere, so the three
agree bit for bit.
``OPS`` looks a kind up by name (``graph.json``'s ``"op"``).
"""

from dataclasses import dataclass
from functools import reduce
from operator import add, mul
from typing import NamedTuple


class Term(NamedTuple):
    """One summand of ``affine`` / ``real``: the term's value times the constant ``weight`` (an
    integer multiplier, or a float64 scale in ``real``).  Kinds: ``mul`` (broadcast product of
    the inputs), ``matmul`` (x (B, K) @ W (K, O)), ``dot`` (Σ over the last axis of x · W),
    ``const`` (a constant broadcast over the batch), ``float`` (a float64 tensor, in ``real``)."""

    kind: str
    inputs: tuple[str, ...]
    weight: str


def term(b, t: Term):
    """The value of a term, without its weight."""
    args = [b.get(i) for i in t.inputs]
    if t.kind == "matmul":
        return b.matmul(args[0], args[1])
    if t.kind == "dot":
        return b.sum_last(args[0] * args[1])
    return reduce(mul, args)


def _operator(prim: str, swap: bool = False):
    return lambda a, b: a.apply(prim, b, a) if swap else a.apply(prim, a, b)


class Symbolic:
    """The operators of a backend's symbolic tensor (numba source, ONNX values): each applies
    the backend's primitive add, sub, mul, div or neg."""

    __add__, __radd__ = _operator("add"), _operator("add", True)
    __sub__, __rsub__ = _operator("sub"), _operator("sub", True)
    __mul__, __rmul__ = _operator("mul"), _operator("mul", True)
    __truediv__, __rtruediv__ = _operator("div"), _operator("div", True)

    def __neg__(self):
        return self.apply("neg", self)


def sigmoid(b, v):
    return 1.0 / (1.0 + b.exp(-v))


SQRT1_2 = 0.7071067811865476
ERF_P = 0.3275911  # Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7); onnxruntime has no
ERF_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)  # float64 Erf


def erf(b, z):
    a = b.abs(z)
    t = 1.0 / (1.0 + ERF_P * a)
    poly = ERF_A[4]
    for c in ERF_A[3::-1]:
        poly = poly * t + c
    return b.sign(z) * (1.0 - poly * t * b.exp(-(a * a)))


@dataclass(frozen=True, kw_only=True)
class Op:
    """Writes tensor ``out``; ``site`` names the quantization site whose codes it produces
    (verification compares them with fake-quant's).  Subclasses become keyword-only dataclasses."""

    out: str
    site: str | None = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        dataclass(frozen=True, kw_only=True)(cls)

    @property
    def kind(self) -> str:
        return type(self).__name__.lower()


class Quantize(Op):
    """float input → codes: clip(rint(x / scale) + zp) − zp, in float32 (as QuantizeLinear)."""

    src: str
    scale: str
    zp: int
    lo: int
    hi: int

    def eval(self, b):
        codes = b.quantize(self.src, self.scale, self.zp, self.lo, self.hi)
        return b.codes(b.clip(codes, self.lo, self.hi))


class Affine(Op):
    """Σ term × integer multiplier; with a shift S, (Σ + 2^(S−1)) >> S (round half up); clipped
    to [lo, hi] unless lo is None (an exact accumulator)."""

    terms: tuple[Term, ...]
    shift: int
    lo: int | None
    hi: int | None

    def eval(self, b):
        acc = reduce(add, (term(b, t) * b.get(t.weight) for t in self.terms))
        if self.shift:
            acc = b.shr(acc + 2 ** (self.shift - 1), self.shift)
        return acc if self.lo is None else b.clip(acc, self.lo, self.hi)


class Float32Update(Affine):
    """An affine op evaluated as fake-quant evaluates it (the quantized S4D state): each term
    factor · (code · scale) in float32, added left to right, ÷ out_scale, rounded half to even,
    clipped.  The exact fixed-point sum of ``terms`` (kept: the hardware records and the mapping
    read its multipliers) would round fake-quant's ties up and miss its float32 near-ties."""

    factors: tuple[str, ...]
    scales: tuple[str, ...]
    out_scale: str

    def products(self, b) -> list:
        f32 = lambda name: b.f32(b.get(name))  # noqa: E731
        args = zip(self.terms, self.factors, self.scales, strict=True)
        return [f32(f) * (f32(t.inputs[0]) * f32(s)) for t, f, s in args]

    def rounded(self, b, v):
        return b.codes(b.clip(b.rint(v / b.f32(b.get(self.out_scale))), self.lo, self.hi))

    def eval(self, b):
        return self.rounded(b, reduce(add, self.products(b)))


class Float32Readout(Float32Update):
    """The S4D readout as fake-quant evaluates it: the products of all terms but the last (the
    state parts, ×2 folded into complex C) added per mode, summed over the last axis (``modes``)
    in ``halving_sum``'s order, + the last term's product (D·u), then as ``Float32Update``."""

    modes: int

    def eval(self, b):
        *parts, skip = self.products(b)
        t, m = reduce(add, parts), self.modes
        while m > 1:  # second half onto the first, an odd last mode carried over
            h = m // 2
            s = b.slice_last(t, 0, h) + b.slice_last(t, h, 2 * h)
            t, m = (b.concat_last(s, b.slice_last(t, 2 * h, m)) if m % 2 else s), h + m % 2
        return self.rounded(b, b.sum_last(t) + skip)  # Σ over one mode: that mode


class Real(Op):
    """Σ term × float64 scale → float64 (the input of a float function)."""

    terms: tuple[Term, ...]

    def eval(self, b):
        return reduce(add, (b.float(term(b, t)) * b.get(t.weight) for t in self.terms))


class Sigmoid(Op):
    """float64 → 1 / (1 + e^−v)."""

    src: str

    def eval(self, b):
        return sigmoid(b, b.get(self.src))


class Glu(Op):
    """float64 (…, 2H) → a · sigmoid(g), a and g the halves of the last axis."""

    src: str

    def eval(self, b):
        a, g = b.halves(b.get(self.src))
        return a * sigmoid(b, g)


class Gelu(Op):
    """float64 → v/2 · (1 + erf(v/√2)), erf by Abramowitz & Stegun 7.1.26."""

    src: str

    def eval(self, b):
        v = b.get(self.src)
        return 0.5 * v * (1.0 + erf(b, v * SQRT1_2))


class Round(Op):
    """float64 → codes: clip(floor(v / scale + 1/2))."""

    src: str
    scale: str
    lo: int
    hi: int

    def eval(self, b):
        v = b.floor(b.get(self.src) / b.get(self.scale) + 0.5)
        return b.codes(b.clip(v, self.lo, self.hi))


class Mean(Op):
    """Running-sum codes → mean codes: clip(floor(sum · ratio / count + 1/2))."""

    src: str
    count: str
    ratio: str
    lo: int
    hi: int

    def eval(self, b):
        v = b.float(b.get(self.src)) * b.get(self.ratio) / b.float(b.get(self.count))
        return b.codes(b.clip(b.floor(v + 0.5), self.lo, self.hi))


class Lut(Op):
    """codes → codes through a flat table: entry (code − offset)·channels + c of channel c
    (channels = 1 for one table shared by every channel)."""

    src: str
    table: str
    offset: int
    channels: int

    def eval(self, b):
        index = (b.get(self.src) - self.offset) * self.channels + b.arange(self.channels)
        return b.gather(b.get(self.table), index)


class LayerNorm(Op):
    """LayerNorm of codes from exact integer moments, in float64:
    (H·x − Σx) / sqrt(H·Σx² − (Σx)² + eps) · γ + β (eps holds H²·ε / s²)."""

    src: str
    H: int
    eps: str
    gamma: str
    beta: str

    def eval(self, b):
        x, H = b.get(self.src), self.H
        s1, s2 = b.sum_keep(x), b.sum_keep(x * x)
        den = b.sqrt(b.float(H * s2 - s1 * s1) + b.get(self.eps))
        return b.float(H * x - s1) / den * b.get(self.gamma) + b.get(self.beta)


class Shift(Op):
    """The delay line (B, H, J): the newest code enters at delay 0, the oldest leaves."""

    src: str
    buffer: str

    def eval(self, b):
        return b.concat_last(b.unsqueeze_last(b.get(self.src)), b.drop_last(b.get(self.buffer)))


class Heaviside(Op):
    """codes → 1 where > 0, else 0 (the hardware minGRU's comparator)."""

    src: str

    def eval(self, b):
        return b.positive(b.get(self.src))


class Unsqueeze(Op):
    """Adds a trailing axis."""

    src: str

    def eval(self, b):
        return b.unsqueeze_last(b.get(self.src))


def _kinds(cls) -> list:
    return [k for sub in cls.__subclasses__() for k in (sub, *_kinds(sub))]


OPS: dict[str, type[Op]] = {cls.__name__.lower(): cls for cls in _kinds(Op)}
