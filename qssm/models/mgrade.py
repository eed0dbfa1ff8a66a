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

from ..quant.quantizers import Site
from .mingru import MinGRU
from .quantizable import QLinear, Quantizable, act_site


class DelayConv(Quantizable, nn.Module):
    """With ``integer_delays`` (role ``conv.delay`` quantized) the kernel is an exact delay line:
    each tap sits at its rounded delay (σ → 0), and the delays no longer move."""

    def __init__(self, channels: int, max_delay: int = 64, n_taps: int = 4, sigma: float = 0.5):
        super().__init__()
        self.max_delay, self.sigma = max_delay, sigma
        self.integer_delays = False
        spread = torch.linspace(0, max_delay - 1, n_taps)  # taps spread over the window
        self.delay = nn.Parameter(spread.repeat(channels, 1))  # (H, n_taps)
        self.weight = nn.Parameter(torch.randn(channels, n_taps) / n_taps**0.5)  # (H, n_taps)

    def sites(self) -> dict[str, Site]:
        return {"weight": Site("conv.weight", (self.weight.shape[0], 1), 0)}

    def taps(self) -> torch.Tensor:
        """Integer delays (H, n_taps), as the delay line of the quantized model uses them."""
        return self.delay.detach().round().clamp(0, self.max_delay - 1).long()

    def kernel(self) -> torch.Tensor:
        """(H, max_delay); index j is delay j."""
        weight = self.q("weight", self.weight)
        if self.integer_delays:
            onehot = F.one_hot(self.taps(), self.max_delay).to(weight.dtype)  # (H, T, J)
            return torch.einsum("ht,htj->hj", weight, onehot)
        j = torch.arange(self.max_delay, dtype=self.delay.dtype, device=self.delay.device)
        d = self.delay.clamp(0, self.max_delay - 1).unsqueeze(-1)  # (H, T, 1)
        g = torch.exp(-((j - d) ** 2) / (2 * self.sigma**2))  # (H, T, J)
        g = g / g.sum(-1, keepdim=True)
        return torch.einsum("ht,htj->hj", weight, g)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """u (B, L, H) → (B, L, H), causal."""
        k = self.kernel().flip(-1).unsqueeze(1)  # (H, 1, J), conv1d correlates
        x = F.pad(u.transpose(1, 2), (self.max_delay - 1, 0))
        return F.conv1d(x, k, groups=u.shape[-1]).transpose(1, 2)


class MLP(Quantizable, nn.Module):
    """Linear → GELU → Linear, the GELU output quantizable as ``act.output``."""

    def __init__(self, d_model: int, ratio: int):
        super().__init__()
        self.fc1, self.fc2 = QLinear(d_model, ratio * d_model), QLinear(ratio * d_model, d_model)

    def sites(self) -> dict[str, Site]:
        return {"gelu": act_site("act.output", self.fc1.out_features)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.q("gelu", F.gelu(self.fc1(x))))


class MGradeLayer(Quantizable, nn.Module):
    """LayerNorm → delay conv → minGRU → MLP, with a residual around the whole."""

    def __init__(self, d_model: int, max_delay: int, n_taps: int, sigma: float, mlp_ratio: int):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.conv = DelayConv(d_model, max_delay, n_taps, sigma)
        self.gru = MinGRU(d_model, d_model)
        self.mlp = MLP(d_model, mlp_ratio)

    def sites(self) -> dict[str, Site]:
        H = self.norm.normalized_shape[0]
        return {k: act_site("act.output", H) for k in ("norm", "conv", "block")}

    def forward(self, x: torch.Tensor, mode: str = "parallel") -> torch.Tensor:
        u = self.q("conv", self.conv(self.q("norm", self.norm(x))))  # delay-line input and output
        return self.q("block", x + self.mlp(self.gru(u, mode)))
