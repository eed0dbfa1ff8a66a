"""Post-training quantization: collect every quantizer's statistics over calibration batches."""

import torch
from brevitas.graph.calibrate import calibration_mode
from tqdm import tqdm

from ..data import Split
from .wrap import quantizers


@torch.no_grad()
def calibrate(model, split: Split, batches: int, batch_size: int, seed: int, progress=True) -> None:
    """Run ``batches`` seeded random training batches through the float model (quantization
    disabled, statistics collected) in recurrent mode; Brevitas then sets the scales and zero
    points.  Sites with ``scale: static`` are frozen, the others stay learnable for QAT."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(split.y), generator=g)[: batches * batch_size]
    model.train()  # Brevitas collects statistics in training mode
    with calibration_mode(model):
        for i in tqdm(
            range(0, len(idx), batch_size),
            desc="PTQ calibration",
            leave=False,
            disable=None if progress else True,
        ):
            model(split.x[idx[i : i + batch_size]], "recurrent")
    model.eval()
    freeze_static_scales(model)


def freeze_static_scales(model) -> None:
    for q in quantizers(model).values():
        if getattr(q, "spec", None) is not None and q.spec.scale == "static":
            q.requires_grad_(False)
