"""What a model module needs to be quantized: named sites, and a float path when unquantized.

A module lists its quantizable tensors in ``sites()`` (site name → :class:`Site`: role and channel
layout).  ``qssm.quant.wrap`` gives it a ``qz`` ModuleDict with a quantizer per chosen site;
``self.q(site, x)`` applies it, or returns ``x`` unchanged when the site has none, so the float
and the quantized model run the same forward code.
"""

import torch
import torch.nn.functional as F
from torch import nn

from ..quant.quantizers import Site, quantize_complex


class Quantizable:
    """Mixin for nn.Modules with quantizable tensors."""

    def sites(self) -> dict[str, Site]:
        return {}

    def _quantizer(self, site: str):
        qz = self._modules.get("qz")
        return qz[site] if qz is not None and site in qz else None

    def q(self, site: str, x: torch.Tensor, unit_disk: bool = False) -> torch.Tensor:
        quantizer = self._quantizer(site)
        return x if quantizer is None else quantize_complex(quantizer, x, unit_disk)

    def stepper(self, site: str, complex_state: bool = False, flat: int = 1):
        """Per-step quantizer for a recurrence (identity when the site is float or calibrating).
        A complex state is quantized as real/imaginary pairs; the ``flat`` trailing state axes
        are seen by the quantizer as one axis."""
        quantizer = self._quantizer(site)
        if quantizer is None:
            return lambda x: x
        step = quantizer.stepper()

        def apply(x: torch.Tensor) -> torch.Tensor:
            parts = torch.view_as_real(x) if complex_state else x
            lead = parts.shape[: parts.ndim - flat - int(complex_state)]
            q = step(parts.reshape(*lead, -1, *parts.shape[parts.ndim - int(complex_state) :]))
            q = q.reshape(parts.shape)
            return torch.view_as_complex(q) if complex_state else q

        return apply

    def calibrating(self, site: str) -> bool:
        quantizer = self._quantizer(site)
        return quantizer is not None and quantizer.calibrating

    def observe(self, site: str, trajectory: torch.Tensor) -> None:
        """While calibrating, show the quantizer the whole float trajectory at once."""
        quantizer = self._quantizer(site)
        if quantizer is not None and quantizer.calibrating:
            quantizer(trajectory)


def act_site(role: str, channels: int, ndim: int = 3) -> Site:
    """An activation (..., C) with channels last."""
    return Site(role, (1,) * (ndim - 1) + (channels,), ndim - 1)


class QLinear(Quantizable, nn.Linear):
    """nn.Linear whose weight (per output channel) and bias are quantizable under given roles."""

    def __init__(self, d_in: int, d_out: int, weight_role="linear.weight", bias_role="linear.bias"):
        super().__init__(d_in, d_out)
        self.roles = (weight_role, bias_role)

    def sites(self) -> dict[str, Site]:
        return {
            "weight": Site(self.roles[0], (self.out_features, 1), 0),
            "bias": Site(self.roles[1], (self.out_features,), 0),
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.q("weight", self.weight), self.q("bias", self.bias))
