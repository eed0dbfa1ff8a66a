"""minGRU (Feng et al. 2024) and its hardware variant (MINIMALIST, Billaudelle et al. 2025).

    z_t = σ(W_z x_t + b_z),   h̃_t = W_h x_t + b_h,   h_t = (1 - z_t) ⊙ h_{t-1} + z_t ⊙ h̃_t

``"parallel"`` mode evaluates the recurrence for all t at once with a log-space scan (Heinsen
2023): h_t = exp(a*_t) · Σ_{k≤t} b_k exp(-a*_k) with a*_t = Σ_{k≤t} log(1 - z_k) and b_k = z_k h̃_k.
Since b_k takes both signs, its positive and negative parts are scanned separately.
``"recurrent"`` mode is the step form.

The hardware variant uses a hard-sigmoid gate and emits binary outputs through a comparator
(Heaviside forward, straight-through hard-tanh-window gradient); the state itself stays analog.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..quant.quantizers import Site
from ..quant.scan import GateScan
from .quantizable import QLinear, Quantizable, act_site

LOG_FLOOR = -1e4  # stands in for log(0): exp(LOG_FLOOR) == 0 and gradients stay finite


def hard_sigmoid(x: torch.Tensor) -> torch.Tensor:
    return torch.clamp(x / 4 + 0.5, 0.0, 1.0)


class Heaviside(torch.autograd.Function):
    """Comparator: 1 where x > 0, else 0; gradient passed through where |x| < 1."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return (x > 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * (x.abs() < 1).to(grad.dtype)


def _log_pos(v: torch.Tensor) -> torch.Tensor:
    """log(v) where v > 0, LOG_FLOOR elsewhere (finite gradients everywhere)."""
    return torch.where(v > 0, torch.log(v.clamp_min(1e-30)), torch.full_like(v, LOG_FLOOR))


def log_scan(log_a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """h_t = a_t h_{t-1} + b_t, h_0 = 0, given log a (B, L, H) and b (B, L, H) → h (B, L, H)."""
    a_star = torch.cumsum(log_a, dim=1)  # (B, L, H)
    pos = torch.logcumsumexp(_log_pos(b) - a_star, dim=1)
    neg = torch.logcumsumexp(_log_pos(-b) - a_star, dim=1)
    return torch.exp(a_star + pos) - torch.exp(a_star + neg)


class MinGRU(Quantizable, nn.Module):
    def __init__(self, d_in: int, d_hidden: int, hardware: bool = False):
        super().__init__()
        self.hardware = hardware
        self.noise: dict[str, torch.Tensor] | None = None  # hardware-aware QAT (hwmap.hwaware)
        self.Wz = QLinear(d_in, d_hidden, "gru.Wz", "gru.bz")
        self.Wh = QLinear(d_in, d_hidden, "gru.Wh", "gru.bh")
        nn.init.normal_(self.Wz.weight, std=1 / math.sqrt(d_in))
        nn.init.normal_(self.Wh.weight, std=1 / math.sqrt(d_in))

    def sites(self) -> dict[str, Site]:
        H = self.Wz.out_features
        sites = {k: act_site(f"gru.{k}", H) for k in ("gate", "cand")}
        sites["state"] = Site("gru.state", (1, H), 1)  # (B, H)
        if not self.hardware:  # the hardware variant's outputs are already binary
            sites["output"] = act_site("gru.output", H)
        return sites

    def gate(self, pre: torch.Tensor) -> torch.Tensor:
        return hard_sigmoid(pre) if self.hardware else torch.sigmoid(pre)

    def _noisy(self, x: torch.Tensor, key: str) -> torch.Tensor:
        """x plus the hardware's analog error while training hardware-aware (straight-through:
        the noise does not depend on the parameters)."""
        if self.noise is None or not self.training:
            return x
        return x + self.noise[key] * torch.randn_like(x)

    def _at_most_one(self, z: torch.Tensor) -> torch.Tensor:
        """The hardware gate switches k units of a bank: z = k·s ≤ 1, so its top code is
        ⌊1/s⌋ — rounding the clamped 1 could give ⌊1/s + ½⌋·s > 1."""
        quantizer = self._quantizer("gate")
        if quantizer is None or quantizer.calibrating:
            return z
        scale = quantizer.qparams()[0]
        return torch.minimum(z, torch.floor(1 / scale) * scale)

    def output(self, h: torch.Tensor) -> torch.Tensor:
        return Heaviside.apply(self._noisy(h, "out")) if self.hardware else self.q("output", h)

    def forward(self, x: torch.Tensor, mode: str = "parallel") -> torch.Tensor:
        """x (B, L, d_in) → (B, L, d_hidden)."""
        pre_z = self._noisy(self.Wz(x), "gate")  # (B, L, D)
        cand = self.q("cand", self._noisy(self.Wh(x), "cand"))
        if mode == "parallel":
            if self._modules.get("qz"):
                raise ValueError(
                    "a quantized minGRU runs in recurrent mode (its state is quantized per step)"
                )
            if self.hardware:
                z = self.gate(pre_z)
                log_keep = torch.log((1 - z).clamp_min(1e-6))
            else:  # log(1 - σ(p)) = -softplus(p), exact and stable
                z, log_keep = torch.sigmoid(pre_z), -F.softplus(pre_z)
            return self.output(log_scan(log_keep, z * cand))
        if mode != "recurrent":
            raise ValueError(f"unknown mode {mode!r}; use 'parallel' or 'recurrent'")
        z = self.q("gate", self.gate(pre_z))
        if self.hardware:
            z = self._at_most_one(z)
        quantizer = self._quantizer("state")
        keep, write = 1 - z, z * cand
        if quantizer is None:  # analog state: one autograd node for the whole sequence
            return self.output(GateScan.apply(keep, write, None, None, 0, 0))
        if quantizer.calibrating:
            return self.output(self.step_loop(keep, write))
        scale, zp, qmin, qmax = quantizer.qparams()
        return self.output(GateScan.apply(keep, write, scale, zp, qmin, qmax))

    def step_loop(self, keep: torch.Tensor, write: torch.Tensor) -> torch.Tensor:
        """h_t = Q(keep_t h_{t-1} + write_t) one step at a time: for calibration (Brevitas sees
        the trajectory) and as the reference :class:`GateScan` is tested against."""
        step = self.stepper("state")
        h = torch.zeros_like(keep[:, 0])
        hs = []
        for keep_t, write_t in zip(keep.unbind(1), write.unbind(1), strict=True):
            h = step(keep_t * h + write_t)
            hs.append(h)
        hs = torch.stack(hs, 1)  # (B, L, H)
        self.observe("state", hs.flatten(0, 1))
        return hs
