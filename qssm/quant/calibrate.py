"""Post-training quantization: collect every quantizer's statistics over calibration batches."""

import torch
from brevitas.graph.calibrate import calibration_mode
from tqdm import tqdm

from ..data import Split
from .quantizers import OFFSET_BITS, exponent_bits, stored_scale
from .wrap import quantizers


class CalibrationError(ValueError):
    """A calibrated scale that its ``scale_dtype`` cannot store (names the role and the fix)."""


@torch.no_grad()
def calibrate(model, split: Split, cfg, seed: int, progress=True) -> None:
    """Run ``cfg.calibration_batches`` seeded random training batches (``cfg``: the recipe's
    ``ptq`` section) through the float model (quantization disabled, statistics collected) in
    recurrent mode; Brevitas then sets the scales and zero points.  Sites with ``scale: static``
    are frozen, the others stay learnable for QAT."""
    g, n = torch.Generator().manual_seed(seed), cfg.batch_size
    idx = torch.randperm(len(split.y), generator=g)[: cfg.calibration_batches * n]
    model.train()  # Brevitas collects statistics in training mode
    with calibration_mode(model):
        batches = range(0, len(idx), n)
        for i in tqdm(batches, "PTQ calibration", leave=False, disable=None if progress else True):
            model(split.x[idx[i : i + n]], "recurrent")
    model.eval()
    for q in quantizers(model).values():
        for part in q.parts:  # a polar quantizer's magnitude and phase parts too
            if part.spec.scale == "static":
                part.requires_grad_(False)
    check_scales(model)


def check_scales(model) -> None:
    """Every calibrated scale must survive rounding to its ``scale_dtype``: a float8 scale of a
    tiny range underflows to 0 (Brevitas would then clamp it to its minimum, a value the dtype
    cannot store), a huge one overflows."""
    for name, q in quantizers(model).items():
        for part in q.parts:
            for _, _, p, scale in part.stored():
                if not scale or p is None:
                    continue
                kept = stored_scale(p.detach().abs().float(), part.spec.scale_dtype)
                ok = torch.isfinite(kept) & (kept > 0)
                if exponent_bits(part.spec.scale_dtype) is not None:  # the 8-bit offset
                    ok &= torch.log2(kept).max().abs() < 2 ** (OFFSET_BITS - 1)
                if not bool(torch.all(ok)):
                    raise CalibrationError(
                        f"quant: a calibrated scale of {name} ({part.site.role}) spans "
                        f"{p.abs().min().item():.3g}…{p.abs().max().item():.3g}, outside what "
                        f"scale_dtype {part.spec.scale_dtype} stores; give this role a wider "
                        "scale_dtype (float16 or float32)"
                    )
