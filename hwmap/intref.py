"""The integer reference: executes a lowered graph in numpy, step by step or over whole sequences.

Integer tensors are int64 and every fixed-point sum is exact (the lowering keeps it below 2^52);
the float functions of the graph run in float64 in the same order as the ONNX graph.  This is the
golden model: onnxruntime and the switched-capacitor simulator are checked against it.
"""

from pathlib import Path

import numpy as np

from qssm.io import CheckpointError, atomic_path, read_json, write_json


def save_graph(graph: dict, out: Path) -> None:
    """``graph.json`` + ``graph.npz`` (loads without pickle)."""
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "graph.npz") as tmp, open(tmp, "wb") as f:
        np.savez(f, **graph["consts"])
    write_json(out / "graph.json", {k: v for k, v in graph.items() if k != "consts"})


def load_graph(path: Path) -> dict:
    try:
        graph = read_json(path / "graph.json")
        with np.load(path / "graph.npz", allow_pickle=False) as z:
            graph["consts"] = {k: z[k] for k in z.files}
    except (OSError, ValueError, KeyError) as err:
        raise CheckpointError(
            f"{path}: not a lowered graph ({err}); run `qssm export RUN_DIR` again"
        ) from None
    return graph


SQRT1_2 = 0.7071067811865476
ERF_P = 0.3275911  # Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7); onnxruntime has no
ERF_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)  # float64 Erf


def erf(z: np.ndarray) -> np.ndarray:
    """erf in the exact op order of the ONNX graph."""
    a = np.abs(z)
    t = 1.0 / (1.0 + ERF_P * a)
    poly = ERF_A[4]
    for c in ERF_A[3::-1]:
        poly = poly * t + c
    return np.sign(z) * (1.0 - poly * t * np.exp(-(a * a)))


def _term(kind: str, args: list[np.ndarray]) -> np.ndarray:
    if kind == "matmul":
        return args[0] @ args[1]
    if kind == "dot":
        return (args[0] * args[1]).sum(-1)
    out = args[0]
    for a in args[1:]:
        out = out * a
    return out


def term_values(terms: list, get) -> list[np.ndarray]:
    """Each term of an affine op times its multiplier (exact integers)."""
    return [_term(k, [get(i) for i in ins]) * get(m) for k, ins, m in terms]


def requantize(acc: np.ndarray, op: dict) -> np.ndarray:
    """clip((acc + 2^(S−1)) >> S): round half up, then the output range."""
    shift = op["shift"]
    out = (acc + (1 << (shift - 1))) >> shift if shift else acc
    return out if op["lo"] is None else np.clip(out, op["lo"], op["hi"])


def _run_op(op: dict, env: dict, consts: dict) -> None:
    def get(name):
        return env[name] if name in env else consts[name]

    kind = op["op"]
    if kind == "quantize":
        x = get(op["in"]).astype(np.float32)
        code = np.rint(x / get(op["scale"])) + op["zp"]
        out = np.clip(code - op["zp"], op["lo"], op["hi"]).astype(np.int64)
    elif kind == "affine":
        out = requantize(sum(term_values(op["terms"], get)), op)
    elif kind == "real":
        out = None
        for k, ins, s in op["terms"]:
            t = _term(k, [get(i) for i in ins]).astype(np.float64) * get(s)
            out = t if out is None else out + t
    elif kind == "sigmoid":
        out = 1.0 / (1.0 + np.exp(-get(op["in"])))
    elif kind == "glu":
        a, g = np.split(get(op["in"]), 2, axis=-1)
        out = a * (1.0 / (1.0 + np.exp(-g)))
    elif kind == "round":
        out = np.floor(get(op["in"]) / get(op["scale"]) + 0.5)
        out = np.clip(out, op["lo"], op["hi"]).astype(np.int64)
    elif kind == "mean":
        v = get(op["in"]).astype(np.float64) * get(op["ratio"])
        out = np.floor(v / get(op["count"]).astype(np.float64) + 0.5)
        out = np.clip(out, op["lo"], op["hi"]).astype(np.int64)
    elif kind == "lut":
        C = op["channels"]
        out = get(op["table"])[(get(op["in"]) - op["offset"]) * C + np.arange(C)]
    elif kind == "layernorm":
        x, H = get(op["in"]), op["H"]
        s1, s2 = x.sum(-1, keepdims=True), (x * x).sum(-1, keepdims=True)
        den = np.sqrt((H * s2 - s1 * s1).astype(np.float64) + get(op["eps"]))
        out = (H * x - s1).astype(np.float64) / den * get(op["gamma"]) + get(op["beta"])
    elif kind == "gelu":
        v = get(op["in"])
        out = 0.5 * v * (1.0 + erf(v * SQRT1_2))
    elif kind == "shift":  # delay line: the newest code enters at delay 0
        out = np.concatenate([get(op["in"])[..., None], get(op["buffer"])[..., :-1]], -1)
    elif kind == "heaviside":
        out = (get(op["in"]) > 0).astype(np.int64)
    elif kind == "unsqueeze":
        out = get(op["in"])[..., None]
    else:
        raise ValueError(f"unknown op {kind!r}")
    env[op["out"]] = out


def init_state(graph: dict, batch: int) -> dict[str, np.ndarray]:
    return {s["name"]: np.zeros((batch, *s["shape"]), dtype=np.int64) for s in graph["states"]}


def step(graph: dict, x_t: np.ndarray, state: dict, after=None) -> tuple[dict, dict]:
    """One timestep: x_t (B, d_input) float → (env of every tensor, next state).
    ``after(op, env)``, when given, runs after each op (verification forces codes there)."""
    env = {"x": x_t, **state}
    for op in graph["step"]:
        _run_op(op, env, graph["consts"])
        if after is not None:
            after(op, env)
    return env, {s["name"]: env[s["next"]] for s in graph["states"]}


def head(graph: dict, env: dict) -> np.ndarray:
    """Pooling and decoder on the state after a step → logits (B, n_classes), float64."""
    for op in graph["head"]:
        _run_op(op, env, graph["consts"])
    return env["logits"]


def site_ops(graph: dict) -> list[dict]:
    return [op for op in graph["step"] if "site" in op]


def run(graph: dict, x: np.ndarray, trace: bool = False) -> tuple[np.ndarray, dict]:
    """Whole sequences x (B, L, d_input) → (logits, trace: site → codes (B, L, ...))."""
    state = init_state(graph, x.shape[0])
    sites = site_ops(graph) if trace else []
    traced = {op["site"]: [] for op in sites}
    for t in range(x.shape[1]):
        env, state = step(graph, x[:, t], state)
        for op in sites:
            traced[op["site"]].append(env[op["out"]])
    logits = head(graph, env)
    for op in graph["head"]:
        if "site" in op:
            traced[op["site"]] = env[op["out"]]
    return logits, {k: np.stack(v, 1) if isinstance(v, list) else v for k, v in traced.items()}


class Stream:
    """Streaming inference at batch 1: holds the state between calls."""

    def __init__(self, graph: dict):
        self.graph = graph
        self.reset()

    def reset(self) -> None:
        self.state = init_state(self.graph, 1)
        self.env = None

    def __call__(self, x_t: np.ndarray) -> np.ndarray:
        """x_t (d_input,) → the state's new value; ``logits()`` reads the classifier."""
        self.env, self.state = step(self.graph, np.asarray(x_t).reshape(1, -1), self.state)
        return self.env[self.graph["meta"]["output"]][0]

    def logits(self) -> np.ndarray:
        return head(self.graph, dict(self.env))[0]
