"""One quantizer per tensor site, built on Brevitas.

Each site holds a Brevitas ``QuantIdentity`` whose injector-defined quantizer is chosen from the
recipe's spec (bits, signed, symmetric, per-tensor/per-channel, observer, narrow range).  Brevitas
owns the scales and zero points: they are collected by ``brevitas.graph.calibrate.calibration_mode``
(PTQ) and are learnable parameters afterwards (QAT; frozen when ``scale: static``).

Outside calibration a site does not run Brevitas' dozen-op chain on its tensor: it reads the
quantizer's (scale, zero point, integer range) from Brevitas — so the scales stay Brevitas'
parameters, with their gradients — and applies ``IntQuant``'s arithmetic (round with a
straight-through gradient, clamp without one) as one autograd node, :class:`FakeQuant`.  Inside a
recurrence the state is re-quantized at every step; :meth:`SiteQuantizer.stepper` reads the
parameters once per sequence.  ``tests/quant/test_quantizers.py`` checks both against Brevitas
itself: identical values, equal gradients.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from brevitas.core.quant.int import RescalingIntQuant
from brevitas.core.restrict_val import FloatRestrictValue
from brevitas.core.scaling.int_scaling import PowerOfTwoIntScaling
from brevitas.core.stats import NegativeMinOrZero
from brevitas.inject.enum import ScalingPerOutputType, StatsOp
from brevitas.nn import QuantIdentity
from brevitas.quant import (
    Int8ActPerTensorFloat,
    Int8ActPerTensorFloatMSE,
    Uint8ActPerTensorFloat,
    Uint8ActPerTensorFloatMSE,
)
from brevitas.quant.shifted_scaled_int import (
    ShiftedUint8ActPerTensorFloat,
    ShiftedUint8ActPerTensorFloatMSE,
)
from torch import nn

from .kernels import fakequant


@dataclass(frozen=True)
class Site:
    """A quantizable tensor of a module: its role, and where its channels are.

    ``shape`` is the per-channel broadcast shape (1 everywhere but the channel axis ``axis``)."""

    role: str
    shape: tuple[int, ...]
    axis: int


def _base_quantizer(symmetric: bool, signed: bool, observer: str):
    if not symmetric:
        return (
            ShiftedUint8ActPerTensorFloatMSE if observer == "mse" else ShiftedUint8ActPerTensorFloat
        )
    if observer == "mse":
        return Int8ActPerTensorFloatMSE if signed else Uint8ActPerTensorFloatMSE
    return Int8ActPerTensorFloat if signed else Uint8ActPerTensorFloat


OFFSET_BITS = 8  # the shared exponent of a quantizer's power-of-two scales


def exponent_bits(scale_dtype: str) -> int | None:
    """k for ``po2_<k>bit`` scales, None for float dtypes."""
    return int(scale_dtype[4:-3]) if scale_dtype.startswith("po2_") else None


def stored_scale(x: torch.Tensor, scale_dtype: str) -> torch.Tensor:
    """Scales as stored: rounded to a float dtype, or to powers of two 2^e with e within the
    2^k exponents below the tensor's largest (smaller scales are raised to the lowest one)."""
    k = exponent_bits(scale_dtype)
    if k is None:
        return x.to(getattr(torch, scale_dtype)).to(x.dtype)
    e = torch.round(torch.log2(x))
    return torch.exp2(torch.clamp(e, min=e.max() - (2**k - 1)))


class StoredScale(FloatRestrictValue):
    """Brevitas' float scale restriction, rounded to what the scale is stored as (float16,
    bfloat16, float8, or a power of two) with a straight-through gradient: the model computes
    with exactly the scales it stores.  Only the learned value is rounded; Brevitas then divides
    it by the integer threshold, which the hardware knows from the bit width: 2^(b−1) for a
    signed grid, 2^b − 1 for an unsigned one — or 2^b with power-of-two scales
    (``PowerOfTwoIntScaling``), so that the scale itself is a power of two."""

    def __init__(self, scale_dtype: str):
        super().__init__()
        self.scale_dtype = scale_dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.abs(x)
        return x + (stored_scale(x.detach(), self.scale_dtype) - x).detach()


def brevitas_quantizer(spec, site: Site, signed: bool):
    """An injector-defined Brevitas activation quantizer for ``spec`` at ``site``."""
    q = _base_quantizer(spec.symmetric, signed, spec.observer)
    kw = dict(bit_width=spec.bit_width, narrow_range=spec.narrow, collect_stats_steps=30)
    if spec.scale_dtype != "float32":
        kw.update(  # the integer threshold stays exact: it is not stored
            restrict_scaling_impl=StoredScale(spec.scale_dtype),
            restrict_threshold_impl=FloatRestrictValue,
        )
    if exponent_bits(spec.scale_dtype) is not None:  # threshold 2^b (unsigned) or 2^(b−1), not
        kw["int_scaling_impl"] = PowerOfTwoIntScaling  # 2^b − 1: the scale stays a power of two
    if spec.observer == "minmax":
        kw["scaling_stats_op"] = StatsOp.MAX if spec.symmetric else StatsOp.MIN_MAX
        if not spec.symmetric:
            kw["zero_point_stats_impl"] = NegativeMinOrZero  # zero point from the minimum
    elif spec.observer == "percentile":
        kw["high_percentile_q"] = spec.percentile
    if spec.granularity != "per_tensor":  # per_element: the site's channels are the elements
        axis = site.axis % len(site.shape)
        perm = (axis, *[i for i in range(len(site.shape)) if i != axis])
        kw.update(
            scaling_per_output_type=ScalingPerOutputType.CHANNEL,
            per_channel_broadcastable_shape=site.shape,
            scaling_stats_permute_dims=perm,
        )
    return q.let(**kw)


def ste(fn, x: torch.Tensor) -> torch.Tensor:
    """``fn(x)`` forward, identity gradient (straight-through estimator); exact in floating
    point, since x + (fn(x) - x) is representable whenever fn rounds to an integer."""
    return x + (fn(x) - x).detach()


def int_range(bit_width: int, signed: bool, narrow: bool) -> tuple[int, int]:
    """(min code, max code) as in Brevitas' ``min_int`` / ``max_int``."""
    if signed:
        return -(2 ** (bit_width - 1)) + int(narrow), 2 ** (bit_width - 1) - 1
    return 0, 2**bit_width - 1 - int(narrow)


class FakeQuant(torch.autograd.Function):
    """Brevitas IntQuant arithmetic, (clamp(round(x / s + z), qmin, qmax) − z) · s, with its
    straight-through gradients, as one autograd node: ∂/∂x = [inside], ∂/∂s = (code − z) −
    [inside]·x/s, ∂/∂z = s·([inside] − 1), where inside means round(x / s + z) ∈ [qmin, qmax].
    The same values and elementwise gradients as Brevitas' chain of a dozen ops (tested), at a
    third of the time on (B, L, H) activations; the scale's and the zero point's gradients are
    the same per-element terms summed in float64 (Brevitas sums them in the scale's dtype)."""

    @staticmethod
    def forward(ctx, x, scale, zero_point, qmin: int, qmax: int):
        ctx.q = (qmin, qmax)
        if fakequant.applies(x, scale, zero_point):  # one numba pass, the same values
            ctx.save_for_backward(x, scale, zero_point)
            return fakequant.forward(x, scale, zero_point, qmin, qmax)
        r = (x / scale).add_(zero_point).round_()
        codes = torch.clamp(r, qmin, qmax)
        ctx.save_for_backward(x, scale, zero_point, r == codes, codes)
        return (codes - zero_point).mul_(scale)

    @staticmethod
    def backward(ctx, g):
        if len(ctx.saved_tensors) == 3:
            return (
                *fakequant.backward(g, *ctx.saved_tensors, *ctx.q, ctx.needs_input_grad),
                None,
                None,
            )
        x, scale, zero_point, inside, codes = ctx.saved_tensors
        gx = g * inside if ctx.needs_input_grad[0] else None
        gs = gz = None
        if ctx.needs_input_grad[1]:  # autograd's two terms per element, summed in float64
            through = g * scale * inside  # ∂L/∂(x / s), then ∂(x / s)/∂s = −x / s²
            terms = (g * (codes - zero_point)).double() + (-through * x / (scale * scale))
            gs = terms.sum_to_size(scale.shape).to(scale.dtype)
        if ctx.needs_input_grad[2]:
            terms = (g * scale * (inside.to(g.dtype) - 1)).double()
            gz = terms.sum_to_size(zero_point.shape).to(zero_point.dtype)
        return gx, gs, gz, None, None


fake_quant = FakeQuant.apply  # fake_quant(x, scale, zero_point, qmin, qmax)


class SiteQuantizer(nn.Module):
    """Quantizer of one site.  ``forward`` runs Brevitas; ``stepper`` gives the per-step form."""

    def __init__(self, spec, site: Site, signed: bool):
        super().__init__()
        self.site, self.spec, self.signed = site, spec, signed
        self.quant = QuantIdentity(
            act_quant=brevitas_quantizer(spec, site, signed), return_quant_tensor=True
        )

    @property
    def calibrating(self) -> bool:
        """True inside ``calibration_mode`` (Brevitas passes values through, collects stats):
        one of Brevitas' modules that have an ``observer_only`` flag has it set (the modules
        looked up once; ``calibration_mode`` only sets flags that exist)."""
        if "_flagged" not in self.__dict__:
            modules = self.quant.act_quant.modules()
            self.__dict__["_flagged"] = [m for m in modules if hasattr(m, "observer_only")]
        return any(m.observer_only for m in self.__dict__["_flagged"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.calibrating:  # Brevitas passes x through and collects statistics
            out = self.quant(x)
            return out.value if hasattr(out, "value") else out
        return fake_quant(x, *self.qparams())  # Brevitas' scales, its arithmetic in one node

    @property
    def parts(self) -> tuple["SiteQuantizer", ...]:
        """The grids this quantizer is made of: itself (a polar quantizer has two)."""
        return (self,)

    def stored(self):
        """(elements, bits each, parameter, is a scale) for what the quantizer keeps: scales as
        ``scale_dtype`` (power-of-two ones as k-bit exponents and their 8-bit offset, which has
        no parameter; a single one as the offset alone), zero points in float32."""
        k = exponent_bits(self.spec.scale_dtype)
        for name, p in self.named_parameters():
            if "scaling_impl" not in name:
                yield p.numel(), 32, p, False
            elif k is None:
                yield p.numel(), torch.finfo(getattr(torch, self.spec.scale_dtype)).bits, p, True
            elif p.numel() == 1:  # a single power of two is its own offset
                yield 1, OFFSET_BITS, p, True
            else:
                yield p.numel(), k, p, True
                yield 1, OFFSET_BITS, None, True

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        """(scale, zero point, min code, max code); scale and zero point broadcast like the site.
        Brevitas' own scale and zero point of a probe: for its RescalingIntQuant the two modules
        that make them, called as its forward calls them (the same values, the same autograd
        graph) without rounding the probe and wrapping it in a QuantTensor."""
        qmin, qmax = int_range(self.spec.bit_width, self.signed, self.spec.narrow)
        x = torch.zeros(self.site.shape, dtype=self.dtype)
        quant = self.quant.act_quant.fused_activation_quant_proxy.tensor_quant
        if type(quant) is not RescalingIntQuant:
            probe = self.quant(x)
            return probe.scale, probe.zero_point, qmin, qmax
        bit_width = quant.msb_clamp_bit_width_impl()
        scale = quant.scaling_impl(x, quant.int_scaling_impl(bit_width))
        return scale, quant.zero_point_impl(x, scale, bit_width), qmin, qmax

    @property
    def dtype(self) -> torch.dtype:
        """Its parameters' dtype (the default dtype before it has any).  The first parameter is
        looked up once: walking the modules on every call was a millisecond per QAT step."""
        first = self.__dict__.get("_first")
        if first is None:
            first = next(iter(self.parameters()), None)
        if first is None:
            return torch.get_default_dtype()
        self.__dict__["_first"] = first
        return first.dtype

    def stepper(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """Per-step quantizer for a recurrence: identity while calibrating, else fake_quant."""
        if self.calibrating:
            return lambda x: x
        scale, zero_point, qmin, qmax = self.qparams()
        return lambda x: fake_quant(x, scale, zero_point, qmin, qmax)


class PolarQuantizer(nn.Module):
    """Complex tensors as magnitude and phase, each on its own calibrated grid.

    With ``unit_disk`` (the state matrix Ā, whose slow modes have |Ā| within 1e-3 of 1) the
    quantity on the grid is the retention deficit 1 - |Ā| (unsigned, smallest code 1), so the slow
    modes are resolved to a fraction of the fastest mode's deficit rather than to 1 / 2^b, and
    |Ā_q| = 1 - d_q < 1 always.  A real Ā (S4D-Real) is quantized the same way, without phase;
    1 - Ā is exactly the charge-sharing ratio z of a switched-capacitor cell."""

    def __init__(self, spec, site: Site, unit_disk: bool):
        super().__init__()
        self.unit_disk = unit_disk
        self.magnitude = SiteQuantizer(spec.replace(symmetric=True), site, signed=False)
        self.phase = SiteQuantizer(
            spec.replace(symmetric=True, observer="minmax"), site, signed=True
        )

    @property
    def calibrating(self) -> bool:
        return self.magnitude.calibrating

    @property
    def parts(self) -> tuple[SiteQuantizer, ...]:
        return self.magnitude, self.phase

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        r = z.abs()
        if self.unit_disk:
            d = self.magnitude(1 - r)
            if not self.calibrating:
                d = torch.maximum(d, self.magnitude.qparams()[0])  # code ≥ 1: strictly inside
            r = 1 - d
        else:
            r = self.magnitude(r)
        if not z.is_complex():  # S4D-Real's Ā
            return r * torch.sign(z)
        return torch.polar(r, self.phase(z.angle()))


def quantize_complex(
    quantizer: nn.Module, z: torch.Tensor, unit_disk: bool = False
) -> torch.Tensor:
    """Quantize a real or complex tensor; complex ones cartesian (real and imaginary part on one
    grid) unless ``quantizer`` is polar.  With ``unit_disk`` (the state matrix Ā) values that
    rounding pushed onto or outside the unit circle are re-rounded toward zero on each part, which
    never increases the modulus: |Ā_q| ≤ |Ā| < 1."""
    if isinstance(quantizer, PolarQuantizer):
        return quantizer(z)
    parts = torch.view_as_real(z) if z.is_complex() else z
    q = quantizer(parts)
    if unit_disk and not quantizer.calibrating:
        scale = quantizer.qparams()[0]
        modulus = q.norm(dim=-1, keepdim=True) if z.is_complex() else q.abs()
        q = torch.where(modulus >= 1, ste(torch.trunc, parts / scale) * scale, q)
    return torch.view_as_complex(q.contiguous()) if z.is_complex() else q
