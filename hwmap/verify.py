"""Checks of the verification chain: Brevitas fake-quant vs the integer reference, onnxruntime vs
the integer reference, the streamed step graph vs the sequence graph."""

import contextlib

import numpy as np
import torch

from qssm.models.quantizable import Quantizable
from qssm.quant.quantizers import SiteQuantizer

from . import intref


@contextlib.contextmanager
def fakequant_codes(model):
    """Records, for every activation site the model quantizes in one call, the centered codes
    (value / scale) it produced: site key → list of arrays."""
    seen: dict[str, list[np.ndarray]] = {}
    hooks = []
    for name, module in model.named_modules():
        qz = module._modules.get("qz") if isinstance(module, Quantizable) else None
        for site, q in (qz or {}).items():
            if not isinstance(q, SiteQuantizer):
                continue

            def hook(q, args, out, key=f"{name}:{site}"):
                scale = q.qparams()[0]
                seen.setdefault(key, []).append(torch.round(out / scale).detach().numpy())

            hooks.append(q.register_forward_hook(hook))
    try:
        yield seen
    finally:
        for h in hooks:
            h.remove()


def fakequant_vs_intref(model, graph: dict, x: np.ndarray, batch: int = 250) -> dict:
    """Prediction agreement and the largest code difference over every traced site."""
    agree, total, max_diff, diff_count = 0, 0, 0, 0
    for i in range(0, len(x), batch):
        xb = x[i : i + batch]
        with torch.no_grad(), fakequant_codes(model) as seen:
            fq_logits = model(torch.as_tensor(xb), mode="recurrent").numpy()
        ir_logits, trace = intref.run(graph, xb, trace=True)
        agree += int((fq_logits.argmax(-1) == ir_logits.argmax(-1)).sum())
        total += len(xb)
        for key, codes in trace.items():
            if key not in seen:
                continue
            fq = seen[key][-1].reshape(codes.shape)
            d = np.abs(fq - codes)
            max_diff = max(max_diff, int(d.max()))
            diff_count += int((d > 0).sum())
    return {
        "prediction_agreement": agree / total,
        "max_code_diff": max_diff,
        "differing_codes": diff_count,
        "sequences": total,
    }
