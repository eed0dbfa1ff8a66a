"""The quantized minGRU: gate, candidate, state and output on quantizer grids, recurrent only.

The hardware variant (MINIMALIST) can train hardware-aware: ``noise`` (set by hardware-aware
QAT) holds the standard deviations of the analog errors of the gate pre-activation, the
candidate and the comparator input, per unit; they are added as Gaussian noise in training —
``gate``, ``cand``, ``out`` drawn anew every step, ``*_static`` once per sequence and held over
all its steps (a chip's mismatch and offsets)."""

import torch
from torch import nn

from ..models.kernels import HardGRUScan, gru_scan
from ..models.mingru import Heaviside, MinGRU, gate_scan
from .kernels.mingru import AtMost, HardGateScan, QuantGateScan
from .layers import Quantized, QuantLinear, Stored, act_site
from .quantizers import Site


class QuantMinGRU(Quantized, nn.Module):
    gate = MinGRU.gate  # the float layer's gate: sigmoid, or the hardware's hard sigmoid

    def __init__(self, gru, quant=None):
        super().__init__()
        self.hardware, self.roles = gru.hardware, gru.roles
        self.noise = None
        self.Wz, self.Wh = QuantLinear(gru.Wz), QuantLinear(gru.Wh)
        self.qz = nn.ModuleDict()

    @property
    def noise(self) -> dict[str, torch.Tensor] | None:
        """Per-unit σ of the analog errors: ``gate``, ``cand``, ``out`` (per step) and optional
        ``gate_static``, ``cand_static``, ``out_static`` (per sequence) → (H,); None: no noise.
        Assigned as tensors, numpy arrays or floats (stored as float32 tensors)."""
        return self._noise

    @noise.setter
    def noise(self, sigmas) -> None:
        tensors = {k: torch.as_tensor(v, dtype=torch.float32) for k, v in (sigmas or {}).items()}
        self._noise = None if sigmas is None else tensors

    def sites(self) -> dict[str, Site]:
        H = self.Wz.out_features
        sites = {k: act_site(self.roles[k], H) for k in ("gate", "cand")}
        sites["state"] = Site(self.roles["state"], (1, H), 1)  # (B, H)
        if not self.hardware:  # the hardware variant's outputs are already binary
            sites["output"] = act_site(self.roles["output"], H)
        return sites

    def stored(self, bits) -> list[Stored]:
        H = self.Wz.out_features
        return [Stored(self.roles["state"], H, bits("state"), "state", H)]

    def _noisy(self, x: torch.Tensor, key: str) -> torch.Tensor:
        """x plus the hardware's analog error while training hardware-aware (straight-through:
        the noise does not depend on the parameters)."""
        if self.noise is None or not self.training:
            return x
        x = x + self.noise[key] * torch.randn_like(x)
        static = self.noise.get(f"{key}_static")  # x (B, L, H): one draw per sequence
        if static is not None:
            x = x + static * torch.randn(x.shape[0], 1, x.shape[-1], device=x.device)
        return x

    def _at_most_one(self, z: torch.Tensor | None) -> torch.Tensor:
        """The hardware gate switches k units of a bank: z = k·s ≤ 1, so its top code is
        ⌊1/s⌋ — rounding the clamped 1 could give ⌊1/s + ½⌋·s > 1.  z = None: the cap ⌊1/s⌋·s
        itself."""
        quantizer = self._quantizer("gate")
        if quantizer is None or quantizer.calibrating:
            return z
        scale = quantizer.qparams()[0]
        cap = torch.floor(1 / scale) * scale
        return cap if z is None else AtMost.apply(z, cap)

    def output(self, h: torch.Tensor) -> torch.Tensor:
        return Heaviside.apply(self._noisy(h, "out")) if self.hardware else self.q("output", h)

    def forward(self, x: torch.Tensor, mode: str = "recurrent") -> torch.Tensor:
        """x (B, L, d_in) → (B, L, d_hidden)."""
        if mode != "recurrent":
            raise ValueError(
                "a quantized minGRU runs in recurrent mode (its state is quantized per step)"
            )
        pre_z = self._noisy(self.Wz(x), "gate")  # (B, L, D)
        cand = self.q("cand", self._noisy(self.Wh(x), "cand"))
        fused = self._fused(pre_z, cand)
        if fused is not None:
            return fused
        z = self.q("gate", self.gate(pre_z))
        if self.hardware:
            z = self._at_most_one(z)
        quantizer = self._quantizer("state")
        if quantizer is None:  # analog state
            return self.output(gru_scan(z, cand))
        if quantizer.calibrating:
            return self.output(self.step_loop(1 - z, z * cand))
        return self.output(QuantGateScan.apply(z, cand, *quantizer.qparams()))

    def _fused(self, pre_z: torch.Tensor, cand: torch.Tensor) -> torch.Tensor | None:
        """The hardware layer's gate, analog recurrence and comparator as one kernel
        (:class:`HardGRUScan`, or :class:`HardGateScan` with the gate on a per-tensor grid):
        the same values and gradients as the separate nodes of :meth:`forward` (the gate's
        scale's: the same terms, summed in the kernel).  None where those are needed: not the
        hardware variant, noise while training, a quantized state, a calibrating gate, a gate
        whose quantizer is observed (forward hooks: the lowering records its codes), or a
        gate grid the kernel does not take (not float32 per-tensor, a zero point with a
        gradient).  (The standard layer's four quantized sites fused the
        same way measured no faster than its separate nodes at width 16.)"""
        noisy = self.noise is not None and self.training
        if not self.hardware or noisy or self._quantizer("state") is not None:
            return None
        quantizer = self._quantizer("gate")
        if quantizer is None:
            return HardGRUScan.apply(pre_z, cand)
        if quantizer.calibrating or quantizer._forward_hooks:
            return None
        scale, zp, qmin, qmax = quantizer.qparams()
        float32 = {pre_z.dtype, cand.dtype, scale.dtype, zp.dtype} == {torch.float32}
        if not float32 or scale.numel() != 1 or zp.numel() != 1 or zp.requires_grad:
            return None
        return HardGateScan.apply(pre_z, cand, scale, zp, self._at_most_one(None), qmin, qmax)

    def step_loop(self, keep: torch.Tensor, write: torch.Tensor) -> torch.Tensor:
        """h_t = Q(keep_t h_{t-1} + write_t) one step at a time: for calibration (Brevitas sees
        the trajectory) and as the reference :class:`QuantGateScan` is tested against."""
        hs = gate_scan(keep, write, self.stepper("state"))  # (B, L, H)
        self.observe("state", hs.flatten(0, 1))
        return hs
