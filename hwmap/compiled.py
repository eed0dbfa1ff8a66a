"""The integer reference's step compiled for streaming at batch 1 (numba).

The interpreter in ``hwmap.intref`` pays Python and numpy dispatch for every op (≈ 200 µs per
timestep for the small S4D).  Here the step's ops become one generated Python function over
float64 arrays holding exact integers (the arithmetic of the ONNX graph, see ``hwmap.ops``),
compiled by numba.  ``tests/hwmap/test_compiled.py`` checks it against the interpreter code for
code; ``bench/run.py`` measures it.
"""

import numpy as np

from . import intref
from .graph import Graph
from .ops import Symbolic

SOURCE = {  # the ops' primitives (see hwmap.ops) as source over float64 arrays
    "add": "({} + {})",
    "sub": "({} - {})",
    "mul": "({} * {})",
    "div": "({} / {})",
    "neg": "(-{})",
    **{f: f"np.{f}({{}})" for f in ("exp", "sqrt", "abs", "sign", "floor")},
    "clip": "np.minimum(np.maximum({}, {}), {})",
    "shr": "np.floor({} * 2.0 ** -{})",
    "float": "{}",
    "codes": "{}",
    "arange": "np.arange({})",
    "positive": "np.where({} > 0.0, 1.0, 0.0)",
    "drop_last": "{}[..., :-1]",
    "gather": "{0}[{1}.ravel().astype(np.int64)].reshape({1}.shape)",
    "f32": "{}.astype(np.float32)",
    "rint": "np.rint({}).astype(np.float64)",
}
BOUND = {  # not elementwise: each result is bound to a local variable
    "matmul": "{} @ {}",
    "sum_last": "{}.sum(axis=-1)",
    "sum_keep": "np.expand_dims({}.sum(axis=-1), -1)",
    "unsqueeze_last": "np.expand_dims({}, -1)",
    "concat_last": "np.concatenate(({}, {}), axis=-1)",
}


class Src(Symbolic):
    """Source text of an array expression in the generated function."""

    def __init__(self, text: str, b: "Numba"):
        self.text, self.b = text, b

    def apply(self, prim: str, *args) -> "Src":
        return self.b.apply(prim, *args)


class Numba:
    """The ops' backend as source: elementwise arithmetic stays one expression (numba fuses it
    into one loop), other results are bound to local variables."""

    def __init__(self, consts: dict):
        self.consts = consts
        self.names: dict[str, str] = {"x": "x"}
        self.order: list[str] = []  # the constants the function reads, as globals c0, c1, …
        self.lines: list[str] = []

    def __getattr__(self, prim: str):
        if prim in SOURCE or prim in BOUND:
            return lambda *args: self.apply(prim, *args)
        raise AttributeError(prim)

    def lit(self, v) -> str:
        return v.text if isinstance(v, Src) else repr(float(v))

    def apply(self, prim: str, *args) -> Src:
        text = (SOURCE.get(prim) or BOUND[prim]).format(*map(self.lit, args))
        return self.let(Src(text, self)) if prim in BOUND else Src(text, self)

    def get(self, name: str) -> Src:
        if name not in self.names:
            if name in self.consts:
                self.names[name] = f"c{len(self.order)}"
                self.order.append(name)
            else:
                self.names[name] = f"v{len(self.names)}"
        return Src(self.names[name], self)

    def let(self, value: Src, name: str | None = None) -> Src:
        var = self.get(name).text if name else f"t{len(self.lines)}"
        self.lines.append(f"{var} = {value.text}")
        return Src(var, self)

    def quantize(self, src: str, scale: str, zp: int, lo: int, hi: int) -> Src:
        x, s = self.get(src).text, self.get(scale).text
        return Src(f"np.rint({x} / {s}).astype(np.float64)", self)

    def slice_last(self, v: Src, a: int, c: int) -> Src:
        if not v.text.isidentifier():  # bound once, its slices read the variable
            v.text = self.let(v).text
        return Src(f"{v.text}[..., {a}:{c}]", self)

    def halves(self, v: Src) -> tuple[Src, Src]:
        v = self.let(v).text
        mid = f"{v}.shape[-1] // 2"
        return Src(f"{v}[..., :{mid}]", self), Src(f"{v}[..., {mid}:]", self)


def compile_ops(ops: list, consts: dict, inputs: list[str], outputs: list[str]):
    """``ops`` as one numba-compiled function of the tensors ``inputs`` (float64 arrays, the
    float input ``x`` float32) → the tuple of ``outputs``; the constants are frozen in as
    globals.  Returns (function, its source)."""
    import numba

    b = Numba(consts)
    args = ", ".join(b.get(name).text for name in inputs)
    for op in ops:
        b.let(op.eval(b), op.out)
    body = "".join(f"    {line}\n" for line in b.lines)
    code = f"def f({args}):\n{body}    return ({', '.join(b.get(n).text for n in outputs)},)\n"
    scope: dict = {"np": np}
    for i, name in enumerate(b.order):  # float64 integers; the input scale stays float32
        dtype = np.float32 if consts[name].dtype == np.float32 else np.float64
        scope[f"c{i}"] = np.ascontiguousarray(consts[name], dtype=dtype)
    exec(code, scope)  # generated from the ops, nothing external
    return numba.njit(cache=False)(scope["f"]), code


class CompiledStream:
    """``intref.Stream`` with the step compiled: the same states, the same codes."""

    def __init__(self, graph: Graph):
        self.graph = graph
        states = [s.name for s in graph.states]
        nexts = [s.next for s in graph.states]
        self._step, self.source = compile_ops(graph.step, graph.consts, ["x", *states], nexts)
        self.reset()
        self(np.zeros(graph.d_input, dtype=np.float32))  # compile now
        self.reset()

    def reset(self) -> None:
        self.state = tuple(np.zeros((1, *s.shape)) for s in self.graph.states)

    def __call__(self, x_t: np.ndarray) -> tuple:
        x = np.asarray(x_t, dtype=np.float32).reshape(1, -1)
        self.state = self._step(x, *self.state)
        return self.state

    def codes(self) -> dict[str, np.ndarray]:
        """The state as int64 codes, keyed like ``intref.Stream.state``."""
        names = [s.name for s in self.graph.states]
        return {n: v.astype(np.int64) for n, v in zip(names, self.state, strict=True)}

    def logits(self) -> np.ndarray:
        nexts = [s.next for s in self.graph.states]  # the head reads the state's last value
        return intref.head(self.graph, dict(zip(nexts, self.codes().values(), strict=True)))[0]
