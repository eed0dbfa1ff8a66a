"""Checks of the verification chain: Brevitas fake-quant vs the integer reference, onnxruntime vs
the integer reference, the streamed step graph vs the sequence graph."""

import contextlib

import numpy as np
import torch
from qssm.models.quantizable import Quantizable

from qssm.models.mingru import MinGRU
from qssm.quant.quantizers import SiteQuantizer

from . import intref, onnx_export


@contextlib.contextmanager
def fakequant_codes(model):
    """Records, for every activation site the model quantizes in one call, the centered codes
    (value / scale) it produced, and the hardware minGRU's comparator decisions: site key → list
    of arrays."""
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
        if isinstance(module, MinGRU) and module.hardware:  # comparator decisions, 0 or 1

            def decisions(m, args, out, key=f"{name}:comparator"):
                seen.setdefault(key, []).append(out.detach().numpy())

            hooks.append(module.register_forward_hook(decisions))
    try:
        yield seen
    finally:
        for h in hooks:
            h.remove()


def _fakequant(model, xb: np.ndarray) -> tuple[np.ndarray, dict]:
    with torch.no_grad(), fakequant_codes(model) as seen:
        logits = model(torch.as_tensor(xb), mode="recurrent").numpy()
    return logits, {k: v[-1].astype(np.int64) for k, v in seen.items()}


class _Diff:
    """Per-site count of differing codes and the largest difference."""

    def __init__(self):
        self.sites: dict[str, dict] = {}

    def add(self, site: str, a: np.ndarray, b: np.ndarray) -> None:
        d = np.abs(a.reshape(b.shape) - b)
        entry = self.sites.setdefault(site, {"codes": 0, "differing": 0, "max_diff": 0})
        entry["codes"] += d.size
        entry["differing"] += int((d > 0).sum())
        entry["max_diff"] = max(entry["max_diff"], int(d.max()))

    @property
    def max_diff(self) -> int:
        return max((e["max_diff"] for e in self.sites.values()), default=0)


def fakequant_vs_intref(model, graph: dict, x: np.ndarray, batch: int = 250, progress=None) -> dict:
    """Brevitas fake-quant against the integer reference on sequences ``x``.

    Free-running, the two models agree on predictions and on almost every code; a code that
    differs (float32 rounding in fake-quant, a tie rounded the other way) then propagates, so the
    per-op lowering error is measured *forced*: each traced site of the integer reference is
    compared with fake-quant's codes and then overwritten by them, so every op sees the same
    inputs in both models.  ``max_code_diff`` is that per-op difference."""
    agree, free, forced = 0, _Diff(), _Diff()
    for i in range(0, len(x), batch):
        xb = x[i : i + batch]
        fq_logits, seen = _fakequant(model, xb)
        ir_logits, trace = intref.run(graph, xb, trace=True)
        agree += int((fq_logits.argmax(-1) == ir_logits.argmax(-1)).sum())
        for site, codes in trace.items():
            if site in seen:
                free.add(site, seen[site], codes)
        _forced_run(graph, xb, seen, forced)
        if progress is not None:
            progress(len(xb))
    return {
        "prediction_agreement": agree / len(x),
        "max_code_diff": forced.max_diff,
        "forced_per_site": forced.sites,
        "free_running_max_code_diff": free.max_diff,
        "free_running_per_site": free.sites,
        "sequences": len(x),
    }


def _forced_run(graph: dict, xb: np.ndarray, seen: dict, diff: _Diff) -> None:
    state = intref.init_state(graph, len(xb))
    for t in range(xb.shape[1]):

        def force(op, env, t=t):
            site = op.get("site")
            if site in seen:
                target = seen[site][:, t].reshape(env[op["out"]].shape)
                diff.add(site, env[op["out"]], target)
                env[op["out"]] = target

        _, state = intref.step(graph, xb[:, t], state, after=force)


def session(path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _agreement(pairs) -> dict:
    equal = total = 0
    identical_logits = True
    for name, a, b in pairs:
        if name == "logits":
            identical_logits &= bool(np.array_equal(a, b))
        else:
            equal += int((a == b).sum())
            total += a.size
    return {"code_agreement": equal / total, "logits_identical": identical_logits, "codes": total}


def onnx_vs_intref(graph: dict, sequence_path, x: np.ndarray, batch: int = 250) -> dict:
    """The sequence graph run by onnxruntime against the integer reference: every site code at
    every timestep, and the logits."""
    sess = session(sequence_path)
    names = [o.name for o in sess.get_outputs()]
    pairs = []
    for i in range(0, len(x), batch):
        xb = x[i : i + batch]
        out = dict(zip(names, sess.run(None, {"x": xb}), strict=True))
        logits, trace = intref.run(graph, xb, trace=True)
        pairs.append(("logits", out["logits"], logits))
        pairs += [(s, out[f"codes:{s}"], c) for s, c in trace.items() if f"codes:{s}" in out]
    return {**_agreement(pairs), "sequences": len(x)}


def stream_onnx(graph: dict, sess, x: np.ndarray) -> tuple[np.ndarray, dict]:
    """The step graph called once per timestep, its state fed back: (logits, site codes)."""
    states = {}
    for s in graph["states"]:
        np_type = onnx_export.code_type(s["lo"] + s["zp"], s["hi"] + s["zp"])[0]
        states[f"state:{s['name']}"] = np.full((len(x), *s["shape"]), s["zp"], dtype=np_type)
    names = [o.name for o in sess.get_outputs()]
    codes: dict[str, list] = {}
    for t in range(x.shape[1]):
        out = dict(zip(names, sess.run(None, {"x": x[:, t], **states}), strict=True))
        states = {f"state:{n[len('next:') :]}": v for n, v in out.items() if n.startswith("next:")}
        for n, v in out.items():
            if n.startswith("code:"):
                codes.setdefault(n[len("code:") :], []).append(v)
    return out["logits"], {k: np.stack(v, 1) for k, v in codes.items()}


def step_vs_sequence(graph: dict, step_path, sequence_path, x: np.ndarray) -> dict:
    """The streamed step graph against the sequence graph (both onnxruntime)."""
    seq = session(sequence_path)
    names = [o.name for o in seq.get_outputs()]
    out = dict(zip(names, seq.run(None, {"x": x}), strict=True))
    logits, codes = stream_onnx(graph, session(step_path), x)
    pairs = [("logits", logits, out["logits"])]
    pairs += [(s, c, out[f"codes:{s}"]) for s, c in codes.items()]
    return {**_agreement(pairs), "sequences": len(x)}
