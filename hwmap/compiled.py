"""The integer reference's step compiled for streaming at batch 1 (numba).

The interpreter in ``hwmap.intref`` pays Python and numpy dispatch for every op (≈ 200 µs per
timestep for the small S4D).  Here the step's ops become one generated Python function over
float64 arrays holding exact integers — the arithmetic of the ONNX graph — compiled by numba:
every fixed-point sum stays below 2^52, so it is exact in float64, and the float functions run in
the same op order.  ``tests/hwmap/test_compiled.py`` checks it against the interpreter code for
code; ``bench/run.py`` measures it.
"""

import numpy as np

from . import intref
from .graph import Graph


class Src:
    """Source text of an array expression in the generated function (float64 arrays)."""

    def __init__(self, text: str):
        self.text = text

    def _op(self, sign: str, other, swap: bool = False) -> "Src":
        a, b = self.text, lit(other)
        return Src(f"({b} {sign} {a})" if swap else f"({a} {sign} {b})")

    def __add__(self, o):
        return self._op("+", o)

    def __radd__(self, o):
        return self._op("+", o, True)

    def __sub__(self, o):
        return self._op("-", o)

    def __rsub__(self, o):
        return self._op("-", o, True)

    def __mul__(self, o):
        return self._op("*", o)

    def __rmul__(self, o):
        return self._op("*", o, True)

    def __truediv__(self, o):
        return self._op("/", o)

    def __rtruediv__(self, o):
        return self._op("/", o, True)

    def __neg__(self):
        return Src(f"(-{self.text})")


def lit(v) -> str:
    return v.text if isinstance(v, Src) else repr(float(v))


def call(fn: str, *args) -> Src:
    return Src(f"{fn}({', '.join(lit(a) for a in args)})")


class Numba:
    """The ops' backend as source: elementwise arithmetic stays one expression (numba fuses it
    into one loop), other results are bound to local variables."""

    def __init__(self, consts: dict):
        self.consts = consts
        self.names: dict[str, str] = {"x": "x"}
        self.order: list[str] = []  # the constants the function reads, as globals c0, c1, …
        self.lines: list[str] = []

    def get(self, name: str) -> Src:
        if name not in self.names:
            if name in self.consts:
                self.names[name] = f"c{len(self.order)}"
                self.order.append(name)
            else:
                self.names[name] = f"v{len(self.names)}"
        return Src(self.names[name])

    def let(self, value, name: str | None = None) -> Src:
        var = self.get(name).text if name else f"t{len(self.lines)}"
        self.lines.append(f"{var} = {lit(value)}")
        return Src(var)

    def exp(self, v):
        return call("np.exp", v)

    def sqrt(self, v):
        return call("np.sqrt", v)

    def abs(self, v):
        return call("np.abs", v)

    def sign(self, v):
        return call("np.sign", v)

    def floor(self, v):
        return call("np.floor", v)

    def clip(self, v, lo, hi):
        return call("np.minimum", call("np.maximum", v, lo), hi)

    def quantize(self, src: str, scale: str, zp: int, lo: int, hi: int) -> Src:
        return Src(f"np.rint({lit(self.get(src))} / {lit(self.get(scale))}).astype(np.float64)")

    def matmul(self, a, b):
        return self.let(Src(f"({lit(a)} @ {lit(b)})"))

    def sum_last(self, v, keep=False):
        s = self.let(Src(f"{lit(v)}.sum(axis=-1)"))
        return self.unsqueeze_last(s) if keep else s

    def shr(self, v, shift):
        return self.floor(v * 2.0**-shift)

    def float(self, v):
        return v

    def codes(self, v):
        return v

    def halves(self, v):
        v = self.let(v)
        h = f"{v.text}.shape[-1] // 2"
        return Src(f"{v.text}[..., :{h}]"), Src(f"{v.text}[..., {h}:]")

    def gather(self, table, index):
        i = self.let(index)
        return self.let(
            Src(f"{lit(table)}[{i.text}.ravel().astype(np.int64)].reshape({i.text}.shape)")
        )

    def arange(self, n):
        return Src(f"(np.arange({n}) * 1.0)")

    def positive(self, v):
        return Src(f"np.where({lit(v)} > 0.0, 1.0, 0.0)")

    def unsqueeze_last(self, v):
        return self.let(Src(f"np.expand_dims({lit(v)}, -1)"))

    def drop_last(self, v):
        return Src(f"{lit(v)}[..., :-1]")

    def concat_last(self, a, b):
        return self.let(Src(f"np.concatenate(({lit(a)}, {lit(b)}), axis=-1)"))


def source(graph: Graph) -> tuple[str, list[str]]:
    """Python source of ``step(x, *states) -> (*next_states,)`` over globals c0, c1, … (the
    constants, in the returned order)."""
    b = Numba(graph.consts)
    states = [b.get(s.name).text for s in graph.states]
    for op in graph.step:
        b.let(op.eval(b), op.out)
    nexts = ", ".join(b.get(s.next).text for s in graph.states)
    args = ", ".join(["x", *states])  # the constants are globals: numba freezes them in
    body = "\n".join("    " + line for line in b.lines)
    return f"def step({args}):\n{body}\n    return ({nexts},)\n", b.order


class CompiledStream:
    """``intref.Stream`` with the step compiled: the same states, the same codes."""

    def __init__(self, graph: Graph):
        import numba

        self.graph = graph
        code, order = source(graph)
        scope: dict = {"np": np}
        for i, name in enumerate(order):  # float64 integers; the input scale stays float32
            value = graph.consts[name]
            dtype = np.float32 if value.dtype == np.float32 else np.float64
            scope[f"c{i}"] = np.ascontiguousarray(value, dtype=dtype)
        exec(code, scope)  # generated from the graph's own ops, nothing external
        self.source = code
        self._step = numba.njit(cache=False)(scope["step"])
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
        return {
            s.name: v.astype(np.int64) for s, v in zip(self.graph.states, self.state, strict=True)
        }

    def logits(self) -> np.ndarray:
        env = {
            s.next: v.astype(np.int64) for s, v in zip(self.graph.states, self.state, strict=True)
        }
        return intref.head(self.graph, env)[0]
