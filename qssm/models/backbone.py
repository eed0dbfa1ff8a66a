"""Classifier: encoder Linear → n blocks → mean or last-step pooling → decoder Linear."""

import torch
import torch.nn.functional as F
from torch import nn

from .mgrade import MLP, MGradeLayer
from .mingru import MinGRU
from .s4d import S4D
from .tags import Tap, tag, taps


class S4DBlock(nn.Module):
    """S4D → GELU → Linear(H → 2H) → GLU, with a residual."""

    def __init__(
        self, d_model: int, d_state: int, real: bool, init: str, dt_min: float, dt_max: float
    ):
        super().__init__()
        self.ssm = S4D(d_model, d_state, real=real, init=init, dt_min=dt_min, dt_max=dt_max)
        self.linear = nn.Linear(d_model, 2 * d_model)
        self.taps = taps(d_model, "gelu", "block")

    def forward(self, x: torch.Tensor, mode: str = "parallel") -> torch.Tensor:
        h = self.taps.gelu(F.gelu(self.ssm(x, mode)))  # (B, L, H)
        return self.taps.block(x + F.glu(self.linear(h), dim=-1))


class MinGRUBlock(nn.Module):
    """Standard: x + minGRU(LN x), then x + MLP(LN x).  Hardware: binary minGRU output, no skip."""

    def __init__(self, d_model: int, hardware: bool, mlp_ratio: int):
        super().__init__()
        self.hardware = hardware
        self.gru = MinGRU(d_model, d_model, hardware=hardware)
        if not hardware:
            self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
            self.mlp = MLP(d_model, mlp_ratio)
        self.taps = taps(d_model, *() if hardware else ("norm1", "mid", "norm2", "block"))

    def forward(self, x: torch.Tensor, mode: str = "parallel") -> torch.Tensor:
        if self.hardware:
            return self.gru(x, mode)
        x = self.taps.mid(x + self.gru(self.taps.norm1(self.norm1(x)), mode))
        return self.taps.block(x + self.mlp(self.taps.norm2(self.norm2(x))))


FAMILIES = ("s4d", "s4d_real", "mingru", "mingru_hw", "mgrade", "mgrade_hw")


def make_block(family: str, d_model: int, cfg: dict) -> nn.Module:
    if family in ("s4d", "s4d_real"):
        keys = ("d_state", "init", "dt_min", "dt_max")
        return S4DBlock(d_model, real=family == "s4d_real", **{k: cfg[k] for k in keys})
    if family in ("mingru", "mingru_hw"):
        return MinGRUBlock(d_model, hardware=family == "mingru_hw", mlp_ratio=cfg["mlp_ratio"])
    if family in ("mgrade", "mgrade_hw"):
        keys = ("max_delay", "n_taps", "sigma", "mlp_ratio")
        return MGradeLayer(d_model, **{k: cfg[k] for k in keys}, hardware=family == "mgrade_hw")
    raise ValueError(f"unknown model family {family!r}; choose one of {', '.join(FAMILIES)}")


class Classifier(nn.Module):
    def __init__(self, config: dict, d_input: int, n_classes: int):
        """``config``: the recipe's ``model`` section as a dict (family, d_model, …)."""
        super().__init__()
        self.config = dict(config)
        self.d_input, self.n_classes = d_input, n_classes
        H = config["d_model"]
        self.encoder = tag(nn.Linear(d_input, H), weight="encoder.weight", bias="encoder.bias")
        self.blocks = nn.ModuleList(
            make_block(config["family"], H, config) for _ in range(config["n_layers"])
        )
        if config["family"] == "mgrade_hw":  # the first delay line holds the encoder's codes
            self.blocks[0].conv.source = "../../../encoder"
        self.pool = config["pool"]
        self.decoder = tag(nn.Linear(H, n_classes), weight="decoder.weight", bias="decoder.bias")
        self.taps = nn.ModuleDict(
            {
                "input": Tap("act.input", d_input),
                "encoder": Tap("act.output", H),
                "pool": Tap("act.output", H, ndim=2),  # (B, H)
            }
        )

    def forward(self, x: torch.Tensor, mode: str = "parallel") -> torch.Tensor:
        """x (B, L, d_input) → logits (B, n_classes)."""
        h = self.taps.encoder(self.encoder(self.taps.input(x)))  # (B, L, H)
        for block in self.blocks:
            h = block(h, mode)
        h = h.mean(1) if self.pool == "mean" else h[:, -1]  # (B, H)
        return self.decoder(self.taps.pool(h))
