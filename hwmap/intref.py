"""The integer reference: executes a lowered graph in numpy, step by step or over whole sequences.

Integer tensors are int64 (every fixed-point sum exact), reals float64.  This is the golden
model: onnxruntime, the compiled step and the switched-capacitor simulator are checked against it.
"""

import numpy as np

from .graph import Graph
from .ops import Op

NUMPY = {  # the ops' primitives over numpy arrays (see hwmap.ops)
    **{f: getattr(np, f) for f in ("exp", "sqrt", "abs", "sign", "floor", "clip", "matmul")},
    "arange": np.arange,
    "sum_last": lambda v: v.sum(-1),
    "sum_keep": lambda v: v.sum(-1, keepdims=True),
    "shr": lambda v, shift: v >> shift,
    "float": lambda v: v.astype(np.float64),
    "codes": lambda v: v.astype(np.int64),
    "halves": lambda v: np.split(v, 2, axis=-1),
    "gather": lambda table, index: table[index],
    "positive": lambda v: (v > 0).astype(np.int64),
    "unsqueeze_last": lambda v: v[..., None],
    "drop_last": lambda v: v[..., :-1],
    "concat_last": lambda a, b: np.concatenate([a, b], -1),
    "slice_last": lambda v, a, c: v[..., a:c],
    "f32": lambda v: v.astype(np.float32),
    "rint": np.rint,
}


class Numpy:
    """The ops' backend over numpy arrays: int64 codes, float64 reals; tensors from ``env``."""

    def __init__(self, env: dict, consts: dict):
        self.env, self.consts = env, consts

    def __getattr__(self, prim: str):
        if prim in NUMPY:
            return NUMPY[prim]
        raise AttributeError(prim)

    def get(self, name: str) -> np.ndarray:
        return self.env[name] if name in self.env else self.consts[name]

    def quantize(self, src: str, scale: str, zp: int, lo: int, hi: int) -> np.ndarray:
        return np.rint(self.get(src).astype(np.float32) / self.get(scale))


def init_state(graph: Graph, batch: int) -> dict[str, np.ndarray]:
    return {s.name: np.zeros((batch, *s.shape), dtype=np.int64) for s in graph.states}


def step(graph: Graph, x_t: np.ndarray, state: dict, after=None, parts=None) -> tuple[dict, dict]:
    """One timestep: x_t (B, d_input) float → (env of every tensor, next state).
    ``after(op, env)``, when given, runs after each op (verification forces codes there);
    ``parts``: tensor → ``fn(op, backend)`` that computes it instead of the op (the simulator)."""
    env = {"x": x_t, **state}
    b = Numpy(env, graph.consts)
    for op in graph.step:
        env[op.out] = parts[op.out](op, b) if parts and op.out in parts else op.eval(b)
        if after is not None:
            after(op, env)
    return env, {s.name: env[s.next] for s in graph.states}


def head(graph: Graph, env: dict) -> np.ndarray:
    """Pooling and decoder on the state after a step → logits (B, n_classes), float64."""
    b = Numpy(env, graph.consts)
    for op in graph.head:
        env[op.out] = op.eval(b)
    return env["logits"]


def site_ops(graph: Graph) -> list[Op]:
    return [op for op in graph.step if op.site is not None]


def run(
    graph: Graph, x: np.ndarray, trace: bool = False, states: list | None = None
) -> tuple[np.ndarray, dict]:
    """Whole sequences x (B, L, d_input) → (logits, trace: site → codes (B, L, ...)); ``states``,
    when given, receives the state entering every step."""
    state = init_state(graph, x.shape[0])
    sites = site_ops(graph) if trace else []
    traced = {op.site: [] for op in sites}
    for t in range(x.shape[1]):
        if states is not None:
            states.append(state)
        env, state = step(graph, x[:, t], state)
        for op in sites:
            traced[op.site].append(env[op.out])
    logits = head(graph, env)
    for op in graph.head:
        if op.site is not None:
            traced[op.site] = env[op.out]
    return logits, {k: np.stack(v, 1) if isinstance(v, list) else v for k, v in traced.items()}


class Stream:
    """Streaming inference at batch 1: holds the state between calls."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.reset()

    def reset(self) -> None:
        self.state = init_state(self.graph, 1)
        self.env = None

    def __call__(self, x_t: np.ndarray) -> np.ndarray:
        """x_t (d_input,) → the state's new value; ``logits()`` reads the classifier."""
        self.env, self.state = step(self.graph, np.asarray(x_t).reshape(1, -1), self.state)
        return self.env[self.graph.output][0]

    def logits(self) -> np.ndarray:
        return head(self.graph, dict(self.env))[0]
