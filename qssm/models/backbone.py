"""Classifier: encoder Linear → n blocks → mean or last-step pooling → decoder Linear."""

import torch
import torch.nn.functional as F
from torch import nn

from .mgrade import MGradeLayer
from .mingru import MinGRU
from .s4d import S4D


class S4DBlock(nn.Module):
    """S4D → GELU → Linear(H → 2H) → GLU, with a residual."""

    def __init__(
        self, d_model: int, d_state: int, real: bool, init: str, dt_min: float, dt_max: float
    ):
        super().__init__()
        self.ssm = S4D(d_model, d_state, real=real, init=init, dt_min=dt_min, dt_max=dt_max)
        self.linear = nn.Linear(d_model, 2 * d_model)

    def forward(self, x: torch.Tensor, mode: str = "parallel") -> torch.Tensor:
        return x + F.glu(self.linear(F.gelu(self.ssm(x, mode))), dim=-1)


class MinGRUBlock(nn.Module):
    """Standard: x + minGRU(LN x), then x + MLP(LN x).  Hardware: binary minGRU output, no skip."""

    def __init__(self, d_model: int, hardware: bool, mlp_ratio: int):
        super().__init__()
        self.hardware = hardware
        self.gru = MinGRU(d_model, d_model, hardware=hardware)
        if not hardware:
            self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
            hidden = mlp_ratio * d_model
            self.mlp = nn.Sequential(
                nn.Linear(d_model, hidden), nn.GELU(), nn.Linear(hidden, d_model)
            )

    def forward(self, x: torch.Tensor, mode: str = "parallel") -> torch.Tensor:
        if self.hardware:
            return self.gru(x, mode)
        x = x + self.gru(self.norm1(x), mode)
        return x + self.mlp(self.norm2(x))


FAMILIES = ("s4d", "s4d_real", "mingru", "mingru_hw", "mgrade")


def make_block(family: str, d_model: int, cfg: dict) -> nn.Module:
    if family in ("s4d", "s4d_real"):
        keys = ("d_state", "init", "dt_min", "dt_max")
        return S4DBlock(d_model, real=family == "s4d_real", **{k: cfg[k] for k in keys})
    if family in ("mingru", "mingru_hw"):
        return MinGRUBlock(d_model, hardware=family == "mingru_hw", mlp_ratio=cfg["mlp_ratio"])
    if family == "mgrade":
        keys = ("max_delay", "n_taps", "sigma", "mlp_ratio")
        return MGradeLayer(d_model, **{k: cfg[k] for k in keys})
    raise ValueError(f"unknown model family {family!r}; choose one of {', '.join(FAMILIES)}")


class Classifier(nn.Module):
    def __init__(self, config: dict, d_input: int, n_classes: int):
        """``config``: the recipe's ``model`` section as a dict (family, d_model, …)."""
        super().__init__()
        self.config = dict(config)
        self.d_input, self.n_classes = d_input, n_classes
        d_model = config["d_model"]
        self.encoder = nn.Linear(d_input, d_model)
        self.blocks = nn.ModuleList(
            make_block(config["family"], d_model, config) for _ in range(config["n_layers"])
        )
        self.pool = config["pool"]
        self.decoder = nn.Linear(d_model, n_classes)

    def forward(self, x: torch.Tensor, mode: str = "parallel") -> torch.Tensor:
        """x (B, L, d_input) → logits (B, n_classes)."""
        h = self.encoder(x)  # (B, L, H)
        for block in self.blocks:
            h = block(h, mode)
        h = h.mean(1) if self.pool == "mean" else h[:, -1]
        return self.decoder(h)
