"""mGRADE (Torchet et al. 2025): causal depthwise convolution with learnable spacings + minGRU.

Each channel h has ``n_taps`` taps with a weight w[h, i] and a continuous delay d[h, i] in
[0, max_delay).  The kernel is built by Gaussian interpolation with a fixed σ (DCLS):
    k[h, j] = Σ_i w[h, i] · g(j - d[h, i]) / Σ_j' g(j' - d[h, i]),  g(x) = exp(-x² / 2σ²)
so y[t] = Σ_j k[j] u[t - j] (causal).  As σ → 0 with integer delays the kernel is a delay line:
y[t] = Σ_i w_i u[t - d_i]; quantization rounds the delays to exactly that.
"""

import torch
import torch.nn.functional as F
from torch import nn

from .kernels import CausalConv
from .mingru import MinGRU
from .tags import tag, taps


def interpolated_kernel(weight, delay, max_delay: int, sigma: float) -> torch.Tensor:
    """Tap weights (H, T) at continuous delays (H, T) → kernel (H, max_delay); index j is
    delay j."""
    j = torch.arange(max_delay, dtype=delay.dtype, device=delay.device)
    d = delay.clamp(0, max_delay - 1).unsqueeze(-1)  # (H, T, 1)
    g = torch.exp(-((j - d) ** 2) / (2 * sigma**2))  # (H, T, J)
    g = g / g.sum(-1, keepdim=True)
    return torch.einsum("ht,htj->hj", weight, g)


def causal_conv(u: torch.Tensor, kernel: torch.Tensor, torch_backward: bool = False):
    """Depthwise causal convolution: u (B, L, H), kernel (H, J) with index j delay j →
    (B, L, H).  Forward: torch's conv1d.  Backward: two more forward convolutions
    (:class:`.kernels.CausalConv`, gradients equal to float rounding), or with
    ``torch_backward`` torch's own, several times
    slower — the hardware family keeps it: its binary comparators turn a float-rounding change
    of one gradient into different trained bits, and its golden table
    (tests/golden/sdigits_mgrade_hw.csv) is reproduced bit for bit."""
    if torch_backward:
        return _conv1d(u, kernel)
    return CausalConv.apply(u, kernel, _conv1d)


def _conv1d(u: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    k = kernel.flip(-1).unsqueeze(1)  # (H, 1, J), conv1d correlates
    x = F.pad(u.transpose(1, 2), (kernel.shape[-1] - 1, 0))
    return F.conv1d(x, k, groups=u.shape[-1]).transpose(1, 2)


class DelayConv(nn.Module):
    def __init__(
        self,
        channels: int,
        max_delay: int = 64,
        n_taps: int = 4,
        sigma: float = 0.5,
        torch_backward: bool = False,
    ):
        super().__init__()
        self.max_delay, self.sigma = max_delay, sigma
        self.torch_backward = torch_backward  # see causal_conv
        # what the delay line holds, for the footprint: the bits of a site (relative module path)
        # or a fixed number of bits
        self.source: str | int = "../norm"
        spread = torch.linspace(0, max_delay - 1, n_taps)  # taps spread over the window
        self.delay = nn.Parameter(spread.repeat(channels, 1))  # (H, n_taps)
        self.weight = nn.Parameter(torch.randn(channels, n_taps) / n_taps**0.5)  # (H, n_taps)
        tag(self, weight="conv.weight", delay="conv.delay")

    def kernel(self) -> torch.Tensor:
        """(H, max_delay); index j is delay j."""
        return interpolated_kernel(self.weight, self.delay, self.max_delay, self.sigma)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """u (B, L, H) → (B, L, H), causal."""
        return causal_conv(u, self.kernel(), self.torch_backward)


class MLP(nn.Module):
    """Linear → GELU → Linear, the GELU output an ``act.output`` tap."""

    def __init__(self, d_model: int, ratio: int):
        super().__init__()
        self.fc1 = nn.Linear(d_model, ratio * d_model)
        self.fc2 = nn.Linear(ratio * d_model, d_model)
        self.taps = taps(ratio * d_model, "gelu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.taps.gelu(F.gelu(self.fc1(x))))


class MGradeLayer(nn.Module):
    """LayerNorm → delay conv → minGRU → MLP, with a residual around the whole.

    Hardware (``mgrade_hw``): delay conv → MINIMALIST minGRU only (hard-sigmoid gate, binary
    comparator outputs), so the delay line of a later layer is a shift register of bits."""

    def __init__(
        self,
        d_model: int,
        max_delay: int,
        n_taps: int,
        sigma: float,
        mlp_ratio: int,
        hardware: bool = False,
    ):
        super().__init__()
        self.hardware = hardware
        self.conv = DelayConv(d_model, max_delay, n_taps, sigma, torch_backward=hardware)
        self.gru = MinGRU(d_model, d_model, hardware=hardware)
        if hardware:  # the delay line holds the comparator outputs of the layer below
            self.conv.source = 1
        else:
            self.norm = nn.LayerNorm(d_model)
            self.mlp = MLP(d_model, mlp_ratio)
        # "norm": the delay line's input
        self.taps = taps(d_model, *("conv",) if hardware else ("norm", "conv", "block"))

    def forward(self, x: torch.Tensor, mode: str = "parallel") -> torch.Tensor:
        if self.hardware:
            return self.gru(self.taps.conv(self.conv(x)), mode)
        u = self.taps.conv(self.conv(self.taps.norm(self.norm(x))))  # (B, L, H)
        return self.taps.block(x + self.mlp(self.gru(u, mode)))
