"""The quantized S4D: Ā, B̄, C, D, the state and the output on quantizer grids, recurrent only.

Built from a float :class:`~qssm.models.s4d.S4D` as a recipe's ``quant`` section asks: its
parameterization is ``continuous`` (the float parameters; Ā and B̄ are their ZOH) or
``discrete_cartesian`` / ``discrete_polar`` (Ā and B̄ trained directly, starting from the float
layer's discretization), and with ``fold_b`` B̄ is folded into C: x' = x / B̄ evolves as
x' ← Ā x' + u (Ā is diagonal) and y = readout(C·B̄ x'), the same outputs with no B̄ stored — the
input is added to the state unweighted, and the state's scale alone sets how finely each mode
is resolved."""

import torch
from torch import nn

from ..models.s4d import S4D, as_complex, convolve, recurrence, ssm_kernel
from .kernels.s4d import S4DScan
from .layers import Quantized, Stored, act_site
from .quantizers import PolarQuantizer, Site, SiteQuantizer


class QuantS4D(Quantized, nn.Module):
    A = S4D.A  # the float layer's continuous A (``continuous`` parameterization)

    def __init__(self, ssm, quant):
        super().__init__()
        self.real, self.roles = ssm.real, ssm.roles
        self.parameterization = quant.parameterization
        polar = self.parameterization == "discrete_polar"
        if polar and self.real:
            raise ValueError(
                "discrete_polar needs complex S4D; use discrete_cartesian for s4d_real"
            )
        with torch.no_grad():
            A_bar, B_bar, C = ssm.discretize()

        def parts(t):  # complex values stored as real/imaginary pairs (..., 2)
            return nn.Parameter(t if self.real else torch.view_as_real(t).contiguous())

        if self.parameterization == "continuous":
            self.log_dt, self.log_A_real = ssm.log_dt, ssm.log_A_real
            if not self.real:
                self.A_imag = ssm.A_imag
            if not quant.fold_b:
                self.B = ssm.B
        self.C = parts(C * B_bar) if quant.fold_b else ssm.C
        self.D = ssm.D
        if polar:
            self.A_bar_logmag = nn.Parameter(A_bar.abs().log())
            self.A_bar_phase = nn.Parameter(A_bar.angle())
        elif self.parameterization == "discrete_cartesian":
            self.A_bar = parts(A_bar)
        if self.parameterization != "continuous" and not quant.fold_b:
            self.B_bar = parts(B_bar)
        self.qz = nn.ModuleDict()

    @property
    def folded(self) -> bool:
        """B̄ folded into C: no B̄ stored."""
        return "B" not in self._parameters and "B_bar" not in self._parameters

    def sites(self) -> dict[str, Site]:
        H, n = self.C.shape[:2]
        param = (H, 1) if self.real else (H, 1, 1)  # (H, n) or real/imag pairs (H, n, 2)
        matrices = ("A", "C") if self.folded else ("A", "B", "C")
        sites = {k: Site(self.roles[k], param, 0) for k in matrices}
        # the state (B, H, n[, 2]) per channel: one scale per model channel, shared by its modes
        state = (1, H, 1) if self.real else (1, H, 1, 1)
        sites.update(
            D=Site(self.roles["D"], (H,), 0),
            state=Site(self.roles["state"], state, 1),
            output=act_site(self.roles["output"], H),
        )
        if self.parameterization == "continuous":
            sites["dt"] = Site(self.roles["dt"], (H,), 0)
        return sites

    def element_site(self) -> Site:
        """The state seen as (B, H·n[, 2]), channels = state elements: ``per_element`` scales
        (the integer model holds x' = x / s, Ā stays diagonal; the scales are stored)."""
        H, n = self.C.shape[:2]
        return Site(self.roles["state"], (1, H * n) if self.real else (1, H * n, 1), 1)

    def attach(self, name: str, site: Site, spec):
        polar = spec.complex == "polar" and (name == "A" or not self.real and name in "BC")
        if name == "state" and spec.granularity == "per_element":
            self.qz[name] = SiteQuantizer(spec, self.element_site(), signed=spec.signed)
        elif polar and spec.granularity != "per_element":
            flat = site if self.real else Site(site.role, site.shape[:-1], site.axis)  # no re/im
            self.qz[name] = PolarQuantizer(spec, flat, unit_disk=name == "A")
        else:
            return super().attach(name, site, spec)
        return spec

    def stored(self, bits) -> list[Stored]:
        H, n = self.C.shape[:2]
        size = H * n * (1 if self.real else 2)  # complex values as real and imaginary parts
        out = [Stored(self.roles[k], size, bits(k)) for k in self.sites() if k in ("A", "B", "C")]
        out.append(Stored(self.roles["D"], H, bits("D")))
        out.append(Stored(self.roles["state"], size, bits("state"), "state", size))
        return out

    def _state_flat(self) -> int:
        """How many state axes the state quantizer sees as one: 2 (H·n) per element, else 1."""
        quantizer = self._quantizer("state")
        return 2 if quantizer is not None and quantizer.spec.granularity == "per_element" else 1

    def dtA(self) -> torch.Tensor:
        """dt·A, (H, n), with dt quantized where role ``ssm.dt`` is."""
        return self.A() * self.q("dt", torch.exp(self.log_dt)).unsqueeze(-1)

    def discretize(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(Ā, B̄, C), each (H, n): ZOH of the continuous parameters, or the discrete ones."""
        C = as_complex(self.C)
        if self.parameterization == "discrete_cartesian":
            A_bar = as_complex(self.A_bar)
        elif self.parameterization == "discrete_polar":
            A_bar = torch.polar(self.A_bar_logmag.exp(), self.A_bar_phase)
        else:
            A_bar = torch.exp(self.dtA())
        if self.folded:
            return A_bar, torch.ones_like(A_bar), C
        if self.parameterization == "continuous":
            return A_bar, (A_bar - 1) / self.A() * as_complex(self.B), C
        return A_bar, as_complex(self.B_bar), C

    def quantized(self) -> tuple[torch.Tensor, ...]:
        """(Ā, B̄, C, D) as the recurrence uses them: discretized, then fake-quantized."""
        A_bar, B_bar, C = self.discretize()
        A_bar = self.q("A", A_bar, unit_disk=True)  # |Ā| < 1 stays true after quantization
        return A_bar, self.q("B", B_bar), self.q("C", C), self.q("D", self.D)

    def forward(self, u: torch.Tensor, mode: str = "recurrent") -> torch.Tensor:
        """u (B, L, H) → y (B, L, H)."""
        if mode != "recurrent":
            raise ValueError(
                "a quantized S4D runs in recurrent mode (its state is quantized per step)"
            )
        A_bar, B_bar, C, D = self.quantized()
        quantizer = self._quantizer("state")
        if quantizer is None and self.qz:  # analog state: a linear recurrence, as a convolution
            # in float64: a float32 FFT errs by ~1e-5 of the peak, enough to move output codes
            A64, B64, C64 = (
                p.to(torch.complex128 if p.is_complex() else torch.float64)
                for p in (A_bar, B_bar, C)
            )
            powers = A64.unsqueeze(-1) ** torch.arange(u.shape[1], device=C.device)  # (H, n, L)
            y = convolve(u.double(), ssm_kernel(C64 * B64, powers)).to(u.dtype)
            return self.q("output", y + u * D)
        if quantizer is None or quantizer.calibrating:
            return self.q("output", self.step_loop(u, A_bar, B_bar, C) + u * D)
        scale, zp, qmin, qmax = quantizer.qparams()  # one autograd node for the sequence
        shape = A_bar.shape + ((1,) if A_bar.is_complex() else ())  # the state's parts
        rest = shape[1:] if self._state_flat() == 2 else (1,) * (len(shape) - 1)
        scale, zp = (  # (H, n[, 1]) per element, (H, 1[, 1]) per channel, or all 1
            t.reshape(-1, *rest) if t.numel() > 1 else t.reshape((1,) * len(shape))
            for t in (scale, zp)
        )
        y = S4DScan.apply(u, A_bar, B_bar, C, scale, zp, qmin, qmax)
        return self.q("output", y + u * D)

    def step_loop(self, u, A_bar, B_bar, C) -> torch.Tensor:
        """The quantized recurrence one step at a time, (B, L, H) → (B, L, H) without the D
        term: for a float state, for calibration (Brevitas sees the whole trajectory), and as
        the reference that :class:`S4DScan` is tested against."""
        flat = self._state_flat()
        step = self.stepper("state", complex_state=not self.real, flat=flat)  # every step
        xs = [] if self.calibrating("state") else None
        y = recurrence(u, A_bar, B_bar, C, step, xs)
        if xs is not None:
            traj = torch.cat(xs).flatten(1, flat)  # (L·B, H·n) or (L·B, H, n)
            self.observe("state", traj if self.real else torch.view_as_real(traj))
        return y
