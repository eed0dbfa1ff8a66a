"""What a quantized layer has in common, and the quantized Linear and delay convolution.

A quantized layer is built from its float layer (the same parameters) and lists its quantizable
tensors in ``sites()`` (site name → :class:`Site`: role and channel layout); ``wrap`` gives each
chosen site a quantizer in the layer's ``qz`` ModuleDict.  ``self.q(site, x)`` applies it, or
returns ``x`` unchanged when the site stays float.  ``stored(bits)`` says what the layer keeps
in memory, for the footprint."""

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..models.mgrade import causal_conv, interpolated_kernel
from .kernels.delay import DelayLine
from .quantizers import Site, SiteQuantizer, quantize_complex


class Stored(NamedTuple):
    """``elements`` of a ``role`` kept at ``bits`` each; ``kind`` ∈ param, state, buffer;
    ``float_elements``: what the float model keeps of the same state or buffer."""

    role: str
    elements: int
    bits: int
    kind: str = "param"
    float_elements: int = 0


def act_site(role: str, channels: int, ndim: int = 3) -> Site:
    """An activation (..., C) with channels last."""
    return Site(role, (1,) * (ndim - 1) + (channels,), ndim - 1)


def make_quantizer(site: Site, spec) -> nn.Module:
    if spec.granularity == "per_element":
        raise ValueError(
            f"quant: granularity per_element is for ssm.state only ({site.role} has it); "
            "use per_channel"
        )
    if site.role == "ssm.A" and not spec.symmetric:
        raise ValueError(
            "quant: ssm.A needs symmetric: true (the stability projection rounds toward zero), "
            "or complex: polar"
        )
    return SiteQuantizer(spec, site, signed=spec.signed)


class Quantized:
    """Mixin of the quantized layers.  ``stored(bits)``: ``bits(site)`` gives the bits of one of
    the layer's sites (32 when it stays float; ``"../site"``: a site of the module above)."""

    def attach(self, name: str, site: Site, spec):
        """Quantize site ``name`` as ``spec``; returns the spec as applied."""
        self.qz[name] = make_quantizer(site, spec)
        return spec

    def _quantizer(self, site: str):
        return self.qz[site] if site in self.qz else None

    def q(self, site: str, x: torch.Tensor, unit_disk: bool = False) -> torch.Tensor:
        quantizer = self._quantizer(site)
        return x if quantizer is None else quantize_complex(quantizer, x, unit_disk)

    def stepper(self, site: str, complex_state: bool = False, flat: int = 1):
        """Per-step quantizer for a recurrence (identity when the site is float or calibrating).
        A complex state is quantized as real/imaginary pairs; the ``flat`` trailing state axes
        are seen by the quantizer as one axis."""
        quantizer = self._quantizer(site)
        if quantizer is None:
            return lambda x: x
        step = quantizer.stepper()

        def apply(x: torch.Tensor) -> torch.Tensor:
            parts = torch.view_as_real(x) if complex_state else x
            lead = parts.shape[: parts.ndim - flat - int(complex_state)]
            q = step(parts.reshape(*lead, -1, *parts.shape[parts.ndim - int(complex_state) :]))
            q = q.reshape(parts.shape)
            return torch.view_as_complex(q) if complex_state else q

        return apply

    def calibrating(self, site: str) -> bool:
        quantizer = self._quantizer(site)
        return quantizer is not None and quantizer.calibrating

    def observe(self, site: str, trajectory: torch.Tensor) -> None:
        """While calibrating, show the quantizer the whole float trajectory at once."""
        if self.calibrating(site):
            self.qz[site](trajectory)


class QuantLinear(Quantized, nn.Module):
    """nn.Linear with its weight (per output channel) and bias quantizable under its roles."""

    def __init__(self, linear: nn.Linear, quant=None):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias
        roles = getattr(linear, "roles", {})
        self.roles = (roles.get("weight", "linear.weight"), roles.get("bias", "linear.bias"))
        self.qz = nn.ModuleDict()

    def sites(self) -> dict[str, Site]:
        return {
            "weight": Site(self.roles[0], (self.out_features, 1), 0),
            "bias": Site(self.roles[1], (self.out_features,), 0),
        }

    def stored(self, bits) -> list[Stored]:
        return [
            Stored(self.roles[0], self.weight.numel(), bits("weight")),
            Stored(self.roles[1], self.bias.numel(), bits("bias")),
        ]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.q("weight", self.weight), self.q("bias", self.bias))


class QuantDelayConv(Quantized, nn.Module):
    """The delay convolution with quantized tap weights; with role ``conv.delay`` quantized
    (``integer_delays``) the kernel is an exact delay line: each tap sits at its rounded delay
    (σ → 0), and the delays no longer move."""

    def __init__(self, conv, quant=None):
        super().__init__()
        self.max_delay, self.sigma, self.roles = conv.max_delay, conv.sigma, conv.roles
        self.source, self.torch_backward = conv.source, conv.torch_backward
        self.integer_delays = False
        self.delay, self.weight = conv.delay, conv.weight  # (H, n_taps)
        self.qz = nn.ModuleDict()

    def sites(self) -> dict[str, Site]:
        H = self.weight.shape[0]
        return {k: Site(self.roles[k], (H, 1), 0) for k in ("weight", "delay")}

    def attach(self, name: str, site: Site, spec):
        if name == "weight":
            return super().attach(name, site, spec)
        self.integer_delays = True  # learned delays become integer taps of a delay line
        bits = math.ceil(math.log2(self.max_delay))
        return spec.replace(bit_width=bits, levels=self.max_delay, narrow=False, signed=False)

    def stored(self, bits) -> list[Stored]:
        H, taps = self.weight.shape
        depth = int(self.taps().max()) + 1 if self.integer_delays else self.max_delay
        return [
            Stored(self.roles["weight"], H * taps, bits("weight")),
            Stored(self.roles["delay"], H * taps, bits("delay")),
            # the delay line holds the last inputs (codes of the site ``source`` names)
            Stored("conv.buffer", H * depth, bits(self.source), "buffer", H * self.max_delay),
        ]

    def taps(self) -> torch.Tensor:
        """Integer delays (H, n_taps), as the delay line uses them."""
        return self.delay.detach().round().clamp(0, self.max_delay - 1).long()

    def kernel(self) -> torch.Tensor:
        """(H, max_delay); index j is delay j."""
        weight = self.q("weight", self.weight)
        if not self.integer_delays:
            return interpolated_kernel(weight, self.delay, self.max_delay, self.sigma)
        onehot = F.one_hot(self.taps(), self.max_delay).to(weight.dtype)  # (H, T, J)
        return torch.einsum("ht,htj->hj", weight, onehot)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """u (B, L, H) → (B, L, H), causal.  Integer delays run as a sparse delay line
        (:class:`~.kernels.delay.DelayLine`), except where the layer keeps torch's convolution
        backward (the hardware family, for its bit-exact golden table)."""
        if self.integer_delays and not self.torch_backward:
            return DelayLine.apply(u, self.q("weight", self.weight), self.taps())
        return causal_conv(u, self.kernel(), self.torch_backward)
