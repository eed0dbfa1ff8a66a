"""A model qssm does not ship, quantized through the Python API (docs/api.md): two S4D layers,
each followed by SiLU and a linear mixing layer in a pre-norm residual block, and last-step
pooling — a different block from qssm's S4D classifier (GELU, GLU, post-residual, mean pooling).

Roles: the encoder and decoder are tagged as such; the S4D layers tag their own tensors (Ā, B̄,
C, D, dt, the state); the mixing layers' nn.Linear take the default roles linear.weight /
linear.bias; ``taps`` mark the activations to quantize (role act.output)."""

import torch
import torch.nn.functional as F
from torch import nn

from qssm.models.s4d import S4D
from qssm.models.tags import Tap, tag, taps


class Block(nn.Module):
    """x + Linear(SiLU(S4D(LayerNorm x)))."""

    def __init__(self, d_model: int, d_state: int):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.ssm = S4D(d_model, d_state, dt_min=0.01, dt_max=0.5)
        self.mix = nn.Linear(d_model, d_model)
        self.taps = taps(d_model, "norm", "silu", "block")

    def forward(self, x: torch.Tensor, mode: str) -> torch.Tensor:
        h = self.taps.silu(F.silu(self.ssm(self.taps.norm(self.norm(x)), mode)))
        return self.taps.block(x + self.mix(h))


class TwoLayerS4D(nn.Module):
    """x (batch, time, d_input) → logits (batch, n_classes); ``model(x, mode)`` with mode
    "parallel" (FFT convolution, for float training) or "recurrent" (the step loop)."""

    def __init__(self, d_input: int, n_classes: int, d_model: int = 8, d_state: int = 8):
        super().__init__()
        self.encoder = tag(
            nn.Linear(d_input, d_model), weight="encoder.weight", bias="encoder.bias"
        )
        self.blocks = nn.ModuleList(Block(d_model, d_state) for _ in range(2))
        self.decoder = tag(
            nn.Linear(d_model, n_classes), weight="decoder.weight", bias="decoder.bias"
        )
        self.taps = nn.ModuleDict({"input": Tap("act.input", d_input)})

    def forward(self, x: torch.Tensor, mode: str = "parallel") -> torch.Tensor:
        h = self.encoder(self.taps.input(x))
        for block in self.blocks:
            h = block(h, mode)
        return self.decoder(h[:, -1])
