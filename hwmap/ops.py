"""The ops of the integer graph, each defined once.

Every tensor holds *centered* integer codes (code − zero point) or, for the float functions, an
exact float64 value.  An op is a frozen dataclass (its fields are names of tensors and constants,
and integers) with one method, ``eval(b)``: its arithmetic, written over a backend ``b`` that
supplies the tensors (``b.get``) and a few primitives (``b.exp``, ``b.floor``, ``b.clip``, …).
Three backends run the same definitions: the numpy integer reference (``hwmap.intref``: int64
codes, float64 reals), the numba source of the compiled step (``hwmap.compiled``) and ONNX nodes
(``hwmap.onnx_export``), both float64 holding exact integers — every fixed-point sum stays below
2^52.  Float functions run in the same op order everywhere, so the three agree bit for bit.
``OPS`` looks a kind up by name (``graph.json``'s ``"op"``).
"""

from dataclasses import dataclass
from typing import ClassVar, NamedTuple


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
    out = args[0]
    for a in args[1:]:
        out = out * a
    return out


def total(values):
    """Σ values, left to right (the op order every backend follows)."""
    values = iter(values)
    out = next(values)
    for v in values:
        out = out + v
    return out


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
    (verification compares them with fake-quant's)."""

    kind: ClassVar[str]
    out: str
    site: str | None = None


@dataclass(frozen=True, kw_only=True)
class Quantize(Op):
    """float input → codes: clip(rint(x / scale) + zp) − zp, in float32 (as QuantizeLinear)."""

    kind = "quantize"
    src: str
    scale: str
    zp: int
    lo: int
    hi: int

    def eval(self, b):
        codes = b.quantize(self.src, self.scale, self.zp, self.lo, self.hi)
        return b.codes(b.clip(codes, self.lo, self.hi))


@dataclass(frozen=True, kw_only=True)
class Affine(Op):
    """Σ term × integer multiplier; with a shift S, (Σ + 2^(S−1)) >> S (round half up); clipped
    to [lo, hi] unless lo is None (an exact accumulator)."""

    kind = "affine"
    terms: tuple[Term, ...]
    shift: int
    lo: int | None
    hi: int | None

    def eval(self, b):
        acc = total(term(b, t) * b.get(t.weight) for t in self.terms)
        if self.shift:
            acc = b.shr(acc + 2 ** (self.shift - 1), self.shift)
        return acc if self.lo is None else b.clip(acc, self.lo, self.hi)


@dataclass(frozen=True, kw_only=True)
class Real(Op):
    """Σ term × float64 scale → float64 (the input of a float function)."""

    kind = "real"
    terms: tuple[Term, ...]

    def eval(self, b):
        return total(b.float(term(b, t)) * b.get(t.weight) for t in self.terms)


@dataclass(frozen=True, kw_only=True)
class Sigmoid(Op):
    """float64 → 1 / (1 + e^−v)."""

    kind = "sigmoid"
    src: str

    def eval(self, b):
        return sigmoid(b, b.get(self.src))


@dataclass(frozen=True, kw_only=True)
class Glu(Op):
    """float64 (…, 2H) → a · sigmoid(g), a and g the halves of the last axis."""

    kind = "glu"
    src: str

    def eval(self, b):
        a, g = b.halves(b.get(self.src))
        return a * sigmoid(b, g)


@dataclass(frozen=True, kw_only=True)
class Gelu(Op):
    """float64 → v/2 · (1 + erf(v/√2)), erf by Abramowitz & Stegun 7.1.26."""

    kind = "gelu"
    src: str

    def eval(self, b):
        v = b.get(self.src)
        return 0.5 * v * (1.0 + erf(b, v * SQRT1_2))


@dataclass(frozen=True, kw_only=True)
class Round(Op):
    """float64 → codes: clip(floor(v / scale + 1/2))."""

    kind = "round"
    src: str
    scale: str
    lo: int
    hi: int

    def eval(self, b):
        v = b.floor(b.get(self.src) / b.get(self.scale) + 0.5)
        return b.codes(b.clip(v, self.lo, self.hi))


@dataclass(frozen=True, kw_only=True)
class Mean(Op):
    """Running-sum codes → mean codes: clip(floor(sum · ratio / count + 1/2))."""

    kind = "mean"
    src: str
    count: str
    ratio: str
    lo: int
    hi: int

    def eval(self, b):
        v = b.float(b.get(self.src)) * b.get(self.ratio) / b.float(b.get(self.count))
        return b.codes(b.clip(b.floor(v + 0.5), self.lo, self.hi))


@dataclass(frozen=True, kw_only=True)
class Lut(Op):
    """codes → codes through a flat table: entry (code − offset)·channels + c of channel c
    (channels = 1 for one table shared by every channel)."""

    kind = "lut"
    src: str
    table: str
    offset: int
    channels: int

    def eval(self, b):
        index = (b.get(self.src) - self.offset) * self.channels + b.arange(self.channels)
        return b.gather(b.get(self.table), index)


@dataclass(frozen=True, kw_only=True)
class LayerNorm(Op):
    """LayerNorm of codes from exact integer moments, in float64:
    (H·x − Σx) / sqrt(H·Σx² − (Σx)² + eps) · γ + β (eps holds H²·ε / s²)."""

    kind = "layernorm"
    src: str
    H: int
    eps: str
    gamma: str
    beta: str

    def eval(self, b):
        x, H = b.get(self.src), self.H
        s1, s2 = b.sum_last(x, keep=True), b.sum_last(x * x, keep=True)
        den = b.sqrt(b.float(H * s2 - s1 * s1) + b.get(self.eps))
        return b.float(H * x - s1) / den * b.get(self.gamma) + b.get(self.beta)


@dataclass(frozen=True, kw_only=True)
class Shift(Op):
    """The delay line (B, H, J): the newest code enters at delay 0, the oldest leaves."""

    kind = "shift"
    src: str
    buffer: str

    def eval(self, b):
        return b.concat_last(b.unsqueeze_last(b.get(self.src)), b.drop_last(b.get(self.buffer)))


@dataclass(frozen=True, kw_only=True)
class Heaviside(Op):
    """codes → 1 where > 0, else 0 (the hardware minGRU's comparator)."""

    kind = "heaviside"
    src: str

    def eval(self, b):
        return b.positive(b.get(self.src))


@dataclass(frozen=True, kw_only=True)
class Unsqueeze(Op):
    """Adds a trailing axis."""

    kind = "unsqueeze"
    src: str

    def eval(self, b):
        return b.unsqueeze_last(b.get(self.src))


OPS: dict[str, type[Op]] = {cls.kind: cls for cls in Op.__subclasses__()}
