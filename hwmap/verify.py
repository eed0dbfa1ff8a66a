"""The verification chain and its gate: Brevitas fake-quant vs the integer reference,
onnxruntime vs the integer reference, the streamed step graph vs the sequence graph, the ideal
simulator vs the integer reference.  ``gate`` holds each figure to its threshold (``CHECKS``)."""

import numpy as np

from . import intref, onnx_export, simulate
from .graph import Graph, MinGRUHw

CHECKS = {  # "section.figure" → (threshold, what it checks): each figure must reach its threshold
    "fakequant_vs_intref.prediction_agreement": (0.999, "fake-quant vs intref: predictions"),
    "fakequant_vs_intref.max_code_diff": (1, "fake-quant vs intref: LSB per op (forced)"),
    "fakequant_vs_intref.unmatched_sites": (0, "fake-quant vs intref: every site compared"),
    "onnx_vs_intref.code_agreement": (1.0, "onnxruntime vs intref: codes"),
    "onnx_vs_intref.logits_identical": (True, "onnxruntime vs intref: logits"),
    "step_vs_sequence.code_agreement": (1.0, "step vs sequence graph: codes"),
    "step_vs_sequence.logits_identical": (True, "step vs sequence graph: logits"),
    "deployed_vs_intref.logits_identical": (True, "deployable graphs vs intref: logits"),
    "sim_ideal_vs_intref.decision_agreement": (0.99999, "ideal simulator vs intref: decisions"),
    "sim_ideal_vs_intref.dac_agreement": (0.999, "simulator with DAC steps vs intref"),
    "sim_ideal_vs_intref.prediction_agreement": (0.999, "ideal simulator vs intref: predictions"),
}
AT_MOST = {  # upper bounds; the others are lower bounds
    "fakequant_vs_intref.max_code_diff",
    "fakequant_vs_intref.unmatched_sites",
}


class VerifyError(Exception):
    """An export whose verification missed a threshold; the message names the checks and their
    figures (the CLI exits with status 1)."""


def gate(result: dict) -> None:
    """Adds ``checks`` ("section.figure" → check, value, threshold, passed) and ``passed`` to
    the verification results, over the sections present."""
    result["checks"] = {}
    for key, (threshold, check) in CHECKS.items():
        section, figure = key.split(".")
        if section in result:
            value = result[section][figure]
            passed = value <= threshold if key in AT_MOST else value >= threshold
            entry = {"check": check, "value": value, "threshold": threshold, "passed": passed}
            result["checks"][key] = entry
    result["passed"] = all(c["passed"] for c in result["checks"].values())


def failure(result: dict) -> str:
    """One line naming the failed checks and their figures."""
    failed = []
    for k, c in result["checks"].items():
        bound = "" if isinstance(c["threshold"], bool) else "≤ " if k in AT_MOST else "≥ "
        if not c["passed"]:
            failed.append(f"{k} = {c['value']} (needs {bound}{c['threshold']})")
    return "verification failed: " + "; ".join(failed)


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


def fakequant_vs_intref(
    fakequant, graph: Graph, x: np.ndarray, batch: int = 250, progress=None
) -> dict:
    """Brevitas fake-quant (``fakequant(x) → (logits, site → codes)``, ``hwmap.lower.fakequant``)
    against the integer reference on sequences ``x``.

    Free-running, the two models agree on predictions and on almost every code; a code that
    differs (float32 rounding in fake-quant, a tie rounded the other way) then propagates, so the
    per-op lowering error is measured *forced*: each traced site of the integer reference is
    compared with fake-quant's codes and then overwritten by them, so every op sees the same
    inputs in both models.  ``max_code_diff`` is that per-op difference."""
    agree, free, forced = 0, _Diff(), _Diff()
    for i in range(0, len(x), batch):
        xb = x[i : i + batch]
        fq_logits, seen = fakequant(xb)
        ir_logits, trace = intref.run(graph, xb, trace=True)
        agree += int((fq_logits.argmax(-1) == ir_logits.argmax(-1)).sum())
        for site, codes in trace.items():
            if site in seen:
                free.add(site, seen[site], codes)
        _forced_run(graph, xb, seen, forced)
        if progress is not None:
            progress(len(xb))
    unmatched = sorted({op.site for op in intref.site_ops(graph)} - set(seen))
    return {
        "prediction_agreement": agree / len(x),
        "max_code_diff": forced.max_diff,
        "forced_per_site": forced.sites,
        "free_running_max_code_diff": free.max_diff,
        "free_running_per_site": free.sites,
        "unmatched_sites": len(unmatched),  # sites of the graph fake-quant reported no codes for
        "unmatched": unmatched,
        "sequences": len(x),
    }


def _forced_run(graph: Graph, xb: np.ndarray, seen: dict, diff: _Diff) -> None:
    state = intref.init_state(graph, len(xb))
    for t in range(xb.shape[1]):

        def force(op, env, t=t):
            if op.site in seen:
                target = seen[op.site][:, t].reshape(env[op.out].shape)
                diff.add(op.site, env[op.out], target)
                env[op.out] = target

        _, state = intref.step(graph, xb[:, t], state, after=force)


def session(model):
    """An onnxruntime session (one thread) of an ONNX file or its bytes."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    model = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


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


def onnx_vs_intref(graph: Graph, sequence_path, x: np.ndarray, batch: int = 250) -> dict:
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


def stream_onnx(graph: Graph, sess, x: np.ndarray) -> tuple[np.ndarray, dict]:
    """The step graph called once per timestep, its state fed back: (logits, site codes)."""
    states = {}
    for s in graph.states:
        np_type = onnx_export.state_type(s)[0]
        states[f"state:{s.name}"] = np.full((len(x), *s.shape), s.zp, dtype=np_type)
    names = [o.name for o in sess.get_outputs()]
    codes: dict[str, list] = {}
    for t in range(x.shape[1]):
        out = dict(zip(names, sess.run(None, {"x": x[:, t], **states}), strict=True))
        states = {f"state:{n[len('next:') :]}": v for n, v in out.items() if n.startswith("next:")}
        for n, v in out.items():
            if n.startswith("code:"):
                codes.setdefault(n[len("code:") :], []).append(v)
    return out["logits"], {k: np.stack(v, 1) for k, v in codes.items()}


def step_vs_sequence(graph: Graph, step_path, sequence_path, x: np.ndarray) -> dict:
    """The streamed step graph against the sequence graph (both onnxruntime)."""
    seq = session(sequence_path)
    names = [o.name for o in seq.get_outputs()]
    out = dict(zip(names, seq.run(None, {"x": x}), strict=True))
    logits, codes = stream_onnx(graph, session(step_path), x)
    pairs = [("logits", logits, out["logits"])]
    pairs += [(s, c, out[f"codes:{s}"]) for s, c in codes.items()]
    return {**_agreement(pairs), "sequences": len(x)}


def deployed_vs_intref(graph: Graph, step_path, sequence_path, x: np.ndarray) -> dict:
    """The deployable graphs (no ``code:*`` outputs) against the integer reference: the logits
    of the sequence graph and of the step graph streamed."""
    logits, _ = intref.run(graph, x)
    sequence = session(sequence_path).run(["logits"], {"x": x})[0]
    streamed, _ = stream_onnx(graph, session(step_path), x)
    same = np.array_equal(sequence, logits) and np.array_equal(streamed, logits)
    return {"logits_identical": bool(same), "sequences": len(x)}


COUNTS = ("equal", "total", "unresolved")  # of the compared decisions, per batch


def sim_ideal_vs_intref(
    graph: Graph, mapping: dict, target, x: np.ndarray, batch: int = 50
) -> dict:
    """The charge-domain simulator with every non-ideality off against the integer reference:
    the decisions of every analog part that is a quantization site (gate codes, comparator
    outputs, S4D output codes) at every timestep, and the logits.  The simulator computes in
    volts (float64) while the reference holds an analog state as fine fixed point, so the
    decisions are compared *forced* — every step starts from the reference's state and every
    decision, once compared, is replaced by the reference's, so each figure is the per-step
    error and a flip does not travel; ``unresolved`` counts the comparator decisions on a state
    the reference rounds to 0 (within its own resolution).  Once with exact thresholds
    (``decision_agreement``), once with the threshold DAC's quantization (``dac_agreement``);
    the free-running predictions and logits beside them.  In batches of ``batch`` sequences:
    the reference's states of every step are kept for a batch (a delay line's are H × J codes)."""
    batches = [
        _sim_vs_intref(graph, mapping, target, x[i : i + batch]) for i in range(0, len(x), batch)
    ]
    result = {}
    for key in ("decision_agreement", "dac_agreement"):
        equal, total, unresolved = (sum(b[key][k] for b in batches) for k in COUNTS)
        result[key] = equal / total
        result["decisions"], result[f"{key}_unresolved"] = total, unresolved
    result["prediction_agreement"] = sum(b["predictions"] for b in batches) / len(x)
    result["logits_max_diff"] = max(b["logits_max_diff"] for b in batches)
    return result | {"sequences": len(x)}


def _sim_vs_intref(graph: Graph, mapping: dict, target, x: np.ndarray) -> dict:
    """One batch of :func:`sim_ideal_vs_intref`: its counts."""
    states: list = []  # the reference's state entering every step
    ref_logits, ref = intref.run(graph, x, trace=True, states=states)
    volts = {
        rec.bank.h: np.asarray(layer["bank"]["v_per_code"], dtype=np.float64)
        for rec, layer in zip(graph.layers, mapping["layers"], strict=True)
        if isinstance(rec, MinGRUHw)
    }
    heavisides = {rec.out: rec.bank.h for rec in graph.layers if isinstance(rec, MinGRUHw)}

    def force(t, state):  # the reference's state, a minGRU bank's in volts
        return {k: v * volts[k] if k in volts else v for k, v in states[t].items()}

    sites = {op.out: op.site for op in intref.site_ops(graph)}
    counts = {}
    for key, on in (("decision_agreement", ()), ("dac_agreement", ("dac",))):
        count = counts[key] = dict.fromkeys(COUNTS, 0)
        sim = simulate.Simulator(graph, mapping, target, on=on, seeds=[0], dtype=np.float64)

        def after(t, op, env, count=count, analog=set(sim.analog) & set(sites)):
            if op.out in analog:
                want = ref[sites[op.out]][:, t].reshape(env[op.out].shape)
                equal = env[op.out] == want
                if op.out in heavisides:  # the reference's state at 0: below its resolution
                    nxt = states[t + 1] if t + 1 < len(states) else None
                    tie = None if nxt is None else nxt[heavisides[op.out]] == 0
                    count["unresolved"] += 0 if tie is None else int((~equal & tie).sum())
                count["equal"] += int(equal.sum())
                count["total"] += equal.size
                env[op.out] = want

        sim.run(x, force=force, after=after)
    free = simulate.Simulator(graph, mapping, target, on=(), seeds=[0], dtype=np.float64)
    logits = free.run(x)[0][0]
    counts["predictions"] = int(np.sum(logits.argmax(-1) == ref_logits.argmax(-1)))
    counts["logits_max_diff"] = float(np.abs(logits - ref_logits).max())
    return counts
