"""Classifier: encoder Linear → n blocks → mean or last-step pooling → decoder Linear."""

import torch
import torch.nn.functional as F
from torch import nn

from ..quant.quantizers import Site
from .mgrade import MLP, MGradeLayer
from .mingru import MinGRU
from .quantizable import QLinear, Quantizable, act_site
from .s4d import S4D


class S4DBlock(Quantizable, nn.Module):
    """S4D → GELU → Linear(H → 2H) → GLU, with a residual."""

    def __init__(
        self, d_model: int, d_state: int, real: bool, init: str, dt_min: float, dt_max: float
    ):
        super().__init__()
        self.ssm = S4D(d_model, d_state, real=real, init=init, dt_min=dt_min, dt_max=dt_max)
        self.linear = QLinear(d_model, 2 * d_model)

    def sites(self) -> dict[str, Site]:
        H = self.linear.in_features
        return {k: act_site("act.output", H) for k in ("gelu", "block")}

    def forward(self, x: torch.Tensor, mode: str = "parallel") -> torch.Tensor:
        h = self.q("gelu", F.gelu(self.ssm(x, mode)))
        return self.q("block", x + F.glu(self.linear(h), dim=-1))


class MinGRUBlock(Quantizable, nn.Module):
    """Standard: x + minGRU(LN x), then x + MLP(LN x).  Hardware: binary minGRU output, no skip."""

    def __init__(self, d_model: int, hardware: bool, mlp_ratio: int):
        super().__init__()
        self.hardware = hardware
        self.gru = MinGRU(d_model, d_model, hardware=hardware)
        if not hardware:
            self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
            self.mlp = MLP(d_model, mlp_ratio)

    def sites(self) -> dict[str, Site]:
        if self.hardware:
            return {}
        H = self.norm1.normalized_shape[0]
        return {k: act_site("act.output", H) for k in ("norm1", "mid", "norm2", "block")}

    def forward(self, x: torch.Tensor, mode: str = "parallel") -> torch.Tensor:
        if self.hardware:
            return self.gru(x, mode)
        x = self.q("mid", x + self.gru(self.q("norm1", self.norm1(x)), mode))
        return self.q("block", x + self.mlp(self.q("norm2", self.norm2(x))))


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


class Classifier(Quantizable, nn.Module):
    def __init__(self, config: dict, d_input: int, n_classes: int):
        """``config``: the recipe's ``model`` section as a dict (family, d_model, …)."""
        super().__init__()
        self.config = dict(config)
        self.d_input, self.n_classes = d_input, n_classes
        d_model = config["d_model"]
        self.encoder = QLinear(d_input, d_model, "encoder.weight", "encoder.bias")
        self.blocks = nn.ModuleList(
            make_block(config["family"], d_model, config) for _ in range(config["n_layers"])
        )
        self.pool = config["pool"]
        self.decoder = QLinear(d_model, n_classes, "decoder.weight", "decoder.bias")

    def sites(self) -> dict[str, Site]:
        H = self.encoder.out_features
        return {
            "input": act_site("act.input", self.d_input),
            "encoder": act_site("act.output", H),
            "pool": act_site("act.output", H, ndim=2),
        }

    def forward(self, x: torch.Tensor, mode: str = "parallel") -> torch.Tensor:
        """x (B, L, d_input) → logits (B, n_classes)."""
        h = self.q("encoder", self.encoder(self.q("input", x)))  # (B, L, H)
        for block in self.blocks:
            h = block(h, mode)
        h = h.mean(1) if self.pool == "mean" else h[:, -1]
        return self.decoder(self.q("pool", h))
