"""minGRU (Feng et al. 2024) and its hardware variant (MINIMALIST, Billaudelle et al. 2025).

    z_t = σ(W_z x_t + b_z),   h̃_t = W_h x_t + b_h,   h_t = (1 - z_t) ⊙ h_{t-1} + z_t ⊙ h̃_t

``"parallel"`` mode evaluates the recurrence for all t at once with a log-space scan (Heinsen
2023): h_t = exp(a*_t) · Σ_{k≤t} b_k exp(-a*_k) with a*_t = Σ_{k≤t} log(1 - z_k) and b_k = z_k h̃_k.
Since b_k takes both signs, its positive and negative parts are scanned separately.
``"recurrent"`` mode is the step form, run as one fused kernel (:func:`~.kernels.gru_scan`,
bit-identical to the step loop :func:`gate_scan` in values and gradients; the hardware variant's
gate, recurrence and comparator together as :class:`~.kernels.HardGRUScan`).

The hardware variant uses a hard-sigmoid gate and emits binary outputs through a comparator
(Heaviside forward, straight-through hard-tanh-window gradient); the state itself stays analog.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import kernels
from .kernels import HardGRUScan, gru_scan
from .tags import tag

LOG_FLOOR = -1e4  # stands in for log(0): exp(LOG_FLOOR) == 0 and gradients stay finite


def pointwise(name: str, doc: str, forward_kernel, backward_kernel):
    """An autograd Function of one numba kernel each way over x (the backward gets x and the
    incoming gradient)."""

    def forward(ctx, x):
        ctx.save_for_backward(x)
        return kernels.elementwise(forward_kernel, x)

    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return kernels.elementwise(backward_kernel, x, grad.to(x.dtype))

    body = {"__doc__": doc, "forward": staticmethod(forward), "backward": staticmethod(backward)}
    return type(name, (torch.autograd.Function,), body)


HardSigmoid = pointwise(
    "HardSigmoid",
    "clamp(x / 4 + ½, 0, 1), the hardware gate; its gradient [0 ≤ x / 4 + ½ ≤ 1] · g / 4.",
    kernels.hard_sigmoid_forward,
    kernels.hard_sigmoid_backward,
)
Heaviside = pointwise(
    "Heaviside",
    "Comparator: 1 where x > 0, else 0; gradient passed through where |x| < 1.",
    kernels.heaviside_forward,
    kernels.heaviside_backward,
)


def hard_sigmoid(x: torch.Tensor) -> torch.Tensor:
    return HardSigmoid.apply(x)


def _log_pos(v: torch.Tensor) -> torch.Tensor:
    """log(v) where v > 0, LOG_FLOOR elsewhere (finite gradients everywhere)."""
    return torch.where(v > 0, torch.log(v.clamp_min(1e-30)), torch.full_like(v, LOG_FLOOR))


def log_scan(log_a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """h_t = a_t h_{t-1} + b_t, h_0 = 0, given log a (B, L, H) and b (B, L, H) → h (B, L, H)."""
    a_star = torch.cumsum(log_a, dim=1)  # (B, L, H)
    pos = torch.logcumsumexp(_log_pos(b) - a_star, dim=1)
    neg = torch.logcumsumexp(_log_pos(-b) - a_star, dim=1)
    return torch.exp(a_star + pos) - torch.exp(a_star + neg)


def gate_scan(keep: torch.Tensor, write: torch.Tensor, step=None) -> torch.Tensor:
    """h_t = step(keep_t ⊙ h_{t-1} + write_t) from h_{-1} = 0, one step at a time:
    (B, L, H) → (B, L, H); ``step`` defaults to the identity."""
    h = torch.zeros_like(keep[:, 0])
    hs = []
    for keep_t, write_t in zip(keep.unbind(1), write.unbind(1), strict=True):
        h = keep_t * h + write_t
        if step is not None:
            h = step(h)
        hs.append(h)
    return torch.stack(hs, 1)


class MinGRU(nn.Module):
    def __init__(self, d_in: int, d_hidden: int, hardware: bool = False):
        super().__init__()
        self.hardware = hardware
        self.Wz = tag(nn.Linear(d_in, d_hidden), weight="gru.Wz", bias="gru.bz")
        self.Wh = tag(nn.Linear(d_in, d_hidden), weight="gru.Wh", bias="gru.bh")
        nn.init.normal_(self.Wz.weight, std=1 / math.sqrt(d_in))
        nn.init.normal_(self.Wh.weight, std=1 / math.sqrt(d_in))
        # z_t, h̃_t, h_t, and the output (the hardware variant's is binary: no role)
        tag(self, gate="gru.gate", cand="gru.cand", state="gru.state", output="gru.output")

    def gate(self, pre: torch.Tensor) -> torch.Tensor:
        return hard_sigmoid(pre) if self.hardware else torch.sigmoid(pre)

    def output(self, h: torch.Tensor) -> torch.Tensor:
        return Heaviside.apply(h) if self.hardware else h

    def forward(self, x: torch.Tensor, mode: str = "parallel") -> torch.Tensor:
        """x (B, L, d_in) → (B, L, d_hidden)."""
        pre_z, cand = self.Wz(x), self.Wh(x)  # (B, L, D)
        if mode == "parallel":
            if self.hardware:
                z = self.gate(pre_z)
                log_keep = torch.log((1 - z).clamp_min(1e-6))
            else:  # log(1 - σ(p)) = -softplus(p), exact and stable
                z, log_keep = torch.sigmoid(pre_z), -F.softplus(pre_z)
            return self.output(log_scan(log_keep, z * cand))
        if mode != "recurrent":
            raise ValueError(f"unknown mode {mode!r}; use 'parallel' or 'recurrent'")
        if self.hardware:
            return HardGRUScan.apply(pre_z, cand)
        return gru_scan(self.gate(pre_z), cand)
