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

    def A(self) -> torch.Tensor:
        """Continuous A, (H, n), complex or real."""
        A_real = -torch.exp(self.log_A_real)
        return A_real if self.real else torch.complex(A_real, self.A_imag)

    def dtA(self) -> torch.Tensor:
        """dt·A, (H, n)."""
        return self.A() * torch.exp(self.log_dt).unsqueeze(-1)

    def discretize(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """ZOH: (Ā, B̄, C), each (H, n)."""
        A_bar = torch.exp(self.dtA())
        B = self.B if self.real else torch.view_as_complex(self.B)
        C = self.C if self.real else torch.view_as_complex(self.C)
        return A_bar, (A_bar - 1) / self.A() * B, C

    def readout(self, x: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
        """y from state: x (..., H, n) → (..., H) without the D term."""
        y = (C * x).sum(-1)
        return y if self.real else 2 * y.real

    def kernel(self, L: int) -> torch.Tensor:
        """Convolution kernel K[h, l] = readout(C · Ā^l B̄), (H, L)."""
        _, B_bar, C = self.discretize()
        powers = torch.exp(self.dtA().unsqueeze(-1) * torch.arange(L, device=C.device))  # (H, n, L)
        K = torch.einsum("hn,hnl->hl", C * B_bar, powers)
        return K if self.real else 2 * K.real

    def forward(self, u: torch.Tensor, mode: str = "parallel") -> torch.Tensor:
        """u (B, L, H) → y (B, L, H)."""
        if mode == "parallel":
            L = u.shape[1]
            K = self.kernel(L)  # (H, L)
            u_f = torch.fft.rfft(u.transpose(1, 2), n=2 * L)  # (B, H, L+1)
            y = torch.fft.irfft(u_f * torch.fft.rfft(K, n=2 * L), n=2 * L)[..., :L]
            return y.transpose(1, 2) + u * self.D
        if mode != "recurrent":
            raise ValueError(f"unknown mode {mode!r}; use 'parallel' or 'recurrent'")
        A_bar, B_bar, C = self.discretize()
        x = torch.zeros(u.shape[0], *A_bar.shape, dtype=A_bar.dtype, device=u.device)  # (B, H, n)
        ys = []
        for t in range(u.shape[1]):
            x = A_bar * x + B_bar * u[:, t, :, None]
            ys.append(self.readout(x, C))
        return torch.stack(ys, 1) + u * self.D
