"""S4D: diagonal state-space layer (Gu et al. 2022), complex or real, two execution modes.

The layer keeps continuous parameters (A, B, C, D, log dt) and discretizes them with zero-order
hold (ZOH):  Ā = exp(dt·A),  B̄ = (Ā - 1)/A · B.  The state update is x_t = Ā x_{t-1} + B̄ u_t and
the output y_t = 2·Re(C x_t) + D u_t for the complex variant (N/2 conjugate-pair modes), or
y_t = C x_t + D u_t for S4D-Real (N real modes, A < 0).  For S4D-Real the update is exactly the
charge-sharing form x ← (1 - z) x + z v with z = 1 - Ā and v = B̄ u / z.

Modes: ``"parallel"`` builds the length-L kernel K and convolves through the FFT (float training);
``"recurrent"`` runs the recurrence step by step (quantized training and streaming).
"""

import math

import torch
from torch import nn

from ..quant.quantizers import Site
from ..quant.scan import S4DScan
from .quantizable import Quantizable, act_site


def halving_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over the last axis in a fixed order: add the second half onto the first (an odd last
    element carried over) until one value is left.  torch's own ``sum`` order is its kernel's
    business; this one ``qssm.quant.scan`` reproduces exactly."""
    while t.shape[-1] > 1:
        m, h = t.shape[-1], t.shape[-1] // 2
        s = t[..., :h] + t[..., h : 2 * h]
        t = torch.cat([s, t[..., 2 * h :]], -1) if m % 2 else s
    return t[..., 0]


class S4D(Quantizable, nn.Module):
    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        real: bool = False,
        init: str = "lin",
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
    ):
        super().__init__()
        H = d_model
        n = d_state if real else d_state // 2  # number of stored modes
        self.real = real
        self.parameterization = "continuous"
        log_dt = torch.rand(H) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        self.log_dt = nn.Parameter(log_dt)  # (H,)
        if real:  # S4D-Real: A_n = -(n + 1)
            self.log_A_real = nn.Parameter(torch.log(torch.arange(1, n + 1.0)).repeat(H, 1))
            self.B = nn.Parameter(torch.ones(H, n))  # (H, n)
            self.C = nn.Parameter(torch.randn(H, n) * math.sqrt(1.0 / n))
        else:
            self.log_A_real = nn.Parameter(torch.full((H, n), math.log(0.5)))  # (H, n)
            idx = torch.arange(n, dtype=torch.float32)
            imag = (
                math.pi * idx
                if init == "lin"
                else d_state / math.pi * (d_state / (2 * idx + 1) - 1)
            )
            self.A_imag = nn.Parameter(imag.repeat(H, 1))  # (H, n)
            self.B = nn.Parameter(torch.view_as_real(torch.ones(H, n, dtype=torch.cfloat)))
            C = torch.randn(H, n, dtype=torch.cfloat) * math.sqrt(0.5)
            self.C = nn.Parameter(torch.view_as_real(C))  # (H, n, 2)
        self.D = nn.Parameter(torch.randn(H))

    def sites(self) -> dict[str, Site]:
        H, n = self.C.shape[:2]
        param = (H, 1) if self.real else (H, 1, 1)  # (H, n) or real/imag pairs (H, n, 2)
        matrices = ("A", "C") if self.folded else ("A", "B", "C")
        sites = {k: Site(f"ssm.{k}", param, 0) for k in matrices}
        # the state (B, H, n[, 2]) per channel: one scale per model channel, shared by its modes
        state = (1, H, 1) if self.real else (1, H, 1, 1)
        sites.update(
            D=Site("ssm.D", (H,), 0),
            state=Site("ssm.state", state, 1),
            output=act_site("ssm.output", H),
        )
        if self.parameterization == "continuous":
            sites["dt"] = Site("ssm.dt", (H,), 0)
        return sites

    def element_site(self) -> Site:
        """The state seen as (B, H·n[, 2]), channels = state elements: ``per_element`` scales
        (the integer model holds x' = x / s, Ā stays diagonal; the scales are stored)."""
        H, n = self.C.shape[:2]
        return Site("ssm.state", (1, H * n) if self.real else (1, H * n, 1), 1)

    def _state_flat(self) -> int:
        """How many state axes the state quantizer sees as one: 2 (H·n) per element, else 1."""
        quantizer = self._quantizer("state")
        return 2 if quantizer is not None and quantizer.spec.granularity == "per_element" else 1

    def fold_b(self) -> None:
        """Fold B̄ into C: x' = x / B̄ evolves as x' ← Ā x' + u (Ā is diagonal) and
        y = readout(C·B̄ x'), the same outputs with no B̄ stored — the input is added to the
        state unweighted, and the state's scale alone sets how finely each mode is resolved."""
        with torch.no_grad():
            _, B_bar, C = self.discretize()
            C = C * B_bar
        self.C = nn.Parameter(C if self.real else torch.view_as_real(C).contiguous())
        for name in ("B", "B_bar"):
            if name in self._parameters:
                delattr(self, name)

    @property
    def folded(self) -> bool:
        """B̄ folded into C (:meth:`fold_b` removed the B parameters)."""
        return "B" not in self._parameters

    def make_discrete(self, polar: bool) -> None:
        """Train Ā and B̄ directly (``discrete_cartesian`` / ``discrete_polar``), starting from the
        current ZOH discretization; A and dt then no longer take part."""
        with torch.no_grad():
            A_bar, B_bar, _ = self.discretize()
        if polar:
            if self.real:
                raise ValueError(
                    "discrete_polar needs complex S4D; use discrete_cartesian for s4d_real"
                )
            self.A_bar_logmag = nn.Parameter(A_bar.abs().log())
            self.A_bar_phase = nn.Parameter(A_bar.angle())
        else:
            self.A_bar = nn.Parameter(A_bar if self.real else torch.view_as_real(A_bar))
        self.B_bar = nn.Parameter(B_bar if self.real else torch.view_as_real(B_bar))
        self.parameterization = "discrete_polar" if polar else "discrete_cartesian"

    def A(self) -> torch.Tensor:
        """Continuous A, (H, n), complex or real."""
        A_real = -torch.exp(self.log_A_real)
        return A_real if self.real else torch.complex(A_real, self.A_imag)

    def dtA(self) -> torch.Tensor:
        """dt·A, (H, n)."""
        return self.A() * self.q("dt", torch.exp(self.log_dt)).unsqueeze(-1)

    def _complex(self, p: torch.Tensor) -> torch.Tensor:
        return p if self.real else torch.view_as_complex(p)

    def discretize(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(Ā, B̄, C), each (H, n): ZOH of the continuous parameters, or the discrete ones."""
        C = self._complex(self.C)
        if self.parameterization == "discrete_cartesian":
            A_bar = self._complex(self.A_bar)
        elif self.parameterization == "discrete_polar":
            A_bar = torch.polar(self.A_bar_logmag.exp(), self.A_bar_phase)
        else:
            A_bar = torch.exp(self.dtA())
        if self.folded:
            return A_bar, torch.ones_like(A_bar), C
        if self.parameterization == "continuous":
            return A_bar, (A_bar - 1) / self.A() * self._complex(self.B), C
        return A_bar, self._complex(self.B_bar), C

    def quantized(self) -> tuple[torch.Tensor, ...]:
        """(Ā, B̄, C, D) as the recurrence uses them: discretized, then fake-quantized."""
        A_bar, B_bar, C = self.discretize()
        A_bar = self.q("A", A_bar, unit_disk=True)  # |Ā| < 1 stays true after quantization
        return A_bar, self.q("B", B_bar), self.q("C", C), self.q("D", self.D)

    def readout(self, x: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
        """y from state: x (..., H, n) → (..., H) without the D term, summed over the modes in
        the fixed order of :func:`halving_sum` (the fused scan kernel sums in the same order, so
        its outputs are bit-identical to this step-by-step readout)."""
        y = halving_sum((C * x).real if not self.real else C * x)
        return y if self.real else 2 * y

    def kernel(self, L: int, params=None) -> torch.Tensor:
        """Convolution kernel K[h, l] = readout(C · Ā^l B̄), (H, L): of the continuous parameters,
        or of given (Ā, B̄, C) — the quantized ones, when the state is analog."""
        if params is None:
            _, B_bar, C = self.discretize()
            powers = torch.exp(self.dtA().unsqueeze(-1) * torch.arange(L, device=C.device))
        else:
            A_bar, B_bar, C = params
            powers = A_bar.unsqueeze(-1) ** torch.arange(L, device=C.device)  # (H, n, L)
        K = torch.einsum("hn,hnl->hl", C * B_bar, powers)
        return K if self.real else 2 * K.real

    @staticmethod
    def convolve(u: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
        """Causal convolution through the FFT: u (B, L, H), K (H, L) → (B, L, H)."""
        L = u.shape[1]
        u_f = torch.fft.rfft(u.transpose(1, 2), n=2 * L)  # (B, H, L+1)
        y = torch.fft.irfft(u_f * torch.fft.rfft(K, n=2 * L), n=2 * L)[..., :L]
        return y.transpose(1, 2)

    def forward(self, u: torch.Tensor, mode: str = "parallel") -> torch.Tensor:
        """u (B, L, H) → y (B, L, H)."""
        if mode == "parallel":
            if self._modules.get("qz"):
                raise ValueError(
                    "a quantized S4D runs in recurrent mode (its state is quantized per step)"
                )
            return self.convolve(u, self.kernel(u.shape[1])) + u * self.D
        if mode != "recurrent":
            raise ValueError(f"unknown mode {mode!r}; use 'parallel' or 'recurrent'")
        A_bar, B_bar, C, D = self.quantized()
        quantizer = self._quantizer("state")
        if quantizer is None and self._modules.get("qz"):  # analog state: a linear recurrence
            # in float64: a float32 FFT errs by ~1e-5 of the peak, enough to move output codes
            params = [
                p.to(torch.complex128 if p.is_complex() else torch.float64)
                for p in (A_bar, B_bar, C)
            ]
            y = self.convolve(u.double(), self.kernel(u.shape[1], params)).to(u.dtype)
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
        """The recurrence one step at a time, (B, L, H) → (B, L, H) without the D term: for a
        float state, for calibration (Brevitas sees the whole trajectory), and as the reference
        that :class:`S4DScan` is tested against."""
        flat = self._state_flat()
        step = self.stepper("state", complex_state=not self.real, flat=flat)  # every step
        x = torch.zeros(u.shape[0], *A_bar.shape, dtype=A_bar.dtype, device=u.device)  # (B, H, n)
        collect = self.calibrating("state")
        ys, xs = [], []
        for u_t in u.unbind(1):  # unbind: one backward op, not one full-size scatter per step
            x = step(A_bar * x + B_bar * u_t[..., None])
            ys.append(self.readout(x, C))
            if collect:
                xs.append(x)
        if collect:
            traj = torch.cat(xs).flatten(1, flat)  # (L·B, H·n) or (L·B, H, n)
            self.observe("state", traj if self.real else torch.view_as_real(traj))
        return torch.stack(ys, 1)
