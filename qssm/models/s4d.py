"""S4D: diagonal state-space layer (Gu et al. 2022), complex or real, two execution modes.

The layer keeps continuous parameters (A, B, C, D, log dt) and discretizes them with zero-order
hold (ZOH):  Ā = exp(dt·A),  B̄ = (Ā - 1)/A · B.  The state update is x_t = Ā x_{t-1} + B̄ u_t and
the output y_t = 2·Re(C x_t) + D u_t for the complex variant (N/2 conjugate-pair modes), or
y_t = C x_t + D u_t for S4D-Real (N real modes, A < 0).  For S4D-Real the update is exactly the
charge-sharing form x ← (1 - z) x + z v with z = 1 - Ā and v = B̄ u / z.

Modes: ``"parallel"`` builds the length-L kernel K and convolves through the FFT (training);
``"recurrent"`` runs the recurrence step by step (the reference, and streaming).
"""

import math

import torch
from torch import nn

from .tags import tag


def halving_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over the last axis in a fixed order: add the second half onto the first (an odd last
    element carried over) until one value is left.  torch's own ``sum`` order is its kernel's
    business; this one the fused kernel of ``qssm.quant.kernels.s4d`` reproduces exactly."""
    while t.shape[-1] > 1:
        m, h = t.shape[-1], t.shape[-1] // 2
        s = t[..., :h] + t[..., h : 2 * h]
        t = torch.cat([s, t[..., 2 * h :]], -1) if m % 2 else s
    return t[..., 0]


def readout(x: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    """y from state: x (..., H, n) → (..., H) without the D term, summed over the modes in the
    fixed order of :func:`halving_sum`: Σ C x (real), or 2·Σ Re(C x) (complex)."""
    y = halving_sum((C * x).real if C.is_complex() else C * x)
    return 2 * y if C.is_complex() else y


def as_complex(p: torch.Tensor) -> torch.Tensor:
    """Real/imaginary pairs (..., 2) as a complex tensor; a real parameter (S4D-Real) as it is."""
    return torch.view_as_complex(p) if p.shape[-1] == 2 and p.ndim == 3 else p


def ssm_kernel(CB: torch.Tensor, powers: torch.Tensor) -> torch.Tensor:
    """K[h, l] = readout(C B̄ Ā^l): CB = C·B̄ (H, n), powers Ā^l (H, n, L) → (H, L)."""
    K = torch.einsum("hn,hnl->hl", CB, powers)
    return 2 * K.real if K.is_complex() else K


def convolve(u: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Causal convolution through the FFT: u (B, L, H), K (H, L) → (B, L, H)."""
    L = u.shape[1]
    u_f = torch.fft.rfft(u.transpose(1, 2), n=2 * L)  # (B, H, L+1)
    y = torch.fft.irfft(u_f * torch.fft.rfft(K, n=2 * L), n=2 * L)[..., :L]
    return y.transpose(1, 2)


def recurrence(u, A_bar, B_bar, C, step=None, states: list | None = None) -> torch.Tensor:
    """x_t = step(Ā x_{t-1} + B̄ u_t) from x_{-1} = 0, y_t = readout(x_t, C), one step at a
    time: u (B, L, H), Ā, B̄, C (H, n) → y (B, L, H) without the D term.  ``step`` defaults to
    the identity; ``states`` (a list) receives every x_t (B, H, n)."""
    x = torch.zeros(u.shape[0], *A_bar.shape, dtype=A_bar.dtype, device=u.device)  # (B, H, n)
    ys = []
    for u_t in u.unbind(1):  # unbind: one backward op, not one full-size scatter per step
        x = A_bar * x + B_bar * u_t[..., None]
        if step is not None:
            x = step(x)
        ys.append(readout(x, C))
        if states is not None:
            states.append(x)
    return torch.stack(ys, 1)


class S4D(nn.Module):
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
        log_dt = torch.rand(H) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        self.log_dt = nn.Parameter(log_dt)  # (H,)
        if real:  # S4D-Real: A_n = -(n + 1)
            self.log_A_real = nn.Parameter(torch.log(torch.arange(1, n + 1.0)).repeat(H, 1))
            self.B = nn.Parameter(torch.ones(H, n))  # (H, n)
            self.C = nn.Parameter(torch.randn(H, n) * math.sqrt(1.0 / n))
        else:
            self.log_A_real = nn.Parameter(torch.full((H, n), math.log(0.5)))  # (H, n)
            idx = torch.arange(n, dtype=torch.float32)
            inv = d_state / math.pi * (d_state / (2 * idx + 1) - 1)  # S4D-Inv
            imag = math.pi * idx if init == "lin" else inv
            self.A_imag = nn.Parameter(imag.repeat(H, 1))  # (H, n)
            self.B = nn.Parameter(torch.view_as_real(torch.ones(H, n, dtype=torch.cfloat)))
            C = torch.randn(H, n, dtype=torch.cfloat) * math.sqrt(0.5)
            self.C = nn.Parameter(torch.view_as_real(C))  # (H, n, 2)
        self.D = nn.Parameter(torch.randn(H))  # (H,)
        roles = ("A", "B", "C", "D", "dt", "state", "output")  # Ā, B̄, C, D, dt, x_t, y_t
        tag(self, **{k: f"ssm.{k}" for k in roles})

    def A(self) -> torch.Tensor:
        """Continuous A, (H, n), complex or real."""
        A_real = -torch.exp(self.log_A_real)
        return A_real if self.real else torch.complex(A_real, self.A_imag)

    def dtA(self) -> torch.Tensor:
        """dt·A, (H, n)."""
        return self.A() * torch.exp(self.log_dt).unsqueeze(-1)

    def discretize(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(Ā, B̄, C), each (H, n), complex or real: zero-order hold of the parameters."""
        C = as_complex(self.C)
        A_bar = torch.exp(self.dtA())
        return A_bar, (A_bar - 1) / self.A() * as_complex(self.B), C

    def kernel(self, L: int) -> torch.Tensor:
        """Convolution kernel K[h, l] = readout(C · Ā^l B̄), (H, L), Ā^l = exp(l·dt·A)."""
        _, B_bar, C = self.discretize()
        powers = torch.exp(self.dtA().unsqueeze(-1) * torch.arange(L, device=C.device))
        return ssm_kernel(C * B_bar, powers)  # powers (H, n, L)

    def forward(self, u: torch.Tensor, mode: str = "parallel") -> torch.Tensor:
        """u (B, L, H) → y (B, L, H)."""
        if mode == "parallel":
            return convolve(u, self.kernel(u.shape[1])) + u * self.D
        if mode != "recurrent":
            raise ValueError(f"unknown mode {mode!r}; use 'parallel' or 'recurrent'")
        return recurrence(u, *self.discretize()) + u * self.D
