"""The integer reference's step compiled for streaming at batch 1 (numba).

The interpreter in ``hwmap.intref`` pays Python and numpy dispatch for every op (≈ 200 µs per
timestep for the small S4D).  Here the step's ops become one generated Python function of scalar
loops over float64 arrays holding exact integers (the arithmetic of the ONNX graph, see
``hwmap.ops``), compiled by numba: every op's result is one loop nest over its elements (shapes
are known when the source is written), its inputs' elementwise arithmetic, slices and
concatenations read in place, so a step allocates only the ops' results.  ``CompiledStream``
holds the states in one buffer whose two rows the step reads and writes in turn, so a call
passes three arguments however many states there are.  ``tests/hwmap/test_compiled.py`` checks
it against the interpreter code for code; ``bench/run.py`` measures it.
"""

import numpy as np

from . import intref
from .graph import Graph
from .ops import Symbolic

ELEMENTWISE = {  # the ops' elementwise primitives (see hwmap.ops) as source over scalars
    "add": "({} + {})",
    "sub": "({} - {})",
    "mul": "({} * {})",
    "div": "({} / {})",
    "neg": "(-{})",
    **{f: f"np.{f}({{}})" for f in ("exp", "sqrt", "abs", "sign", "floor")},
    "clip": "np.minimum(np.maximum({}, {}), {})",
    "float": "{}",
    "codes": "{}",
    "positive": "(1.0 if {} > 0.0 else 0.0)",
    "f32": "np.float32({})",
    "rint": "np.float64(np.rint({}))",
}
RESULT = {"f32": "float32", "rint": "float64", "positive": "float64"}  # else: as numpy promotes


class Src(Symbolic):
    """An array expression of the generated function: its shape, its dtype ("float32" or
    "float64") and ``render(index)``, the source text of its element at ``index`` (one source
    text per axis); ``name`` is the variable holding it, when one does."""

    def __init__(self, b: "Numba", shape: tuple, dtype: str, render, name: str | None = None):
        self.b, self.shape, self.dtype = b, tuple(shape), dtype
        self.render, self.name = render, name

    def at(self, index: tuple) -> str:
        """The element at the index of a result it is broadcast into (numpy's rules)."""
        index = zip(self.shape, index[len(index) - len(self.shape) :], strict=True)
        return self.render(tuple("0" if n == 1 else i for n, i in index))

    def apply(self, prim: str, *args) -> "Src":
        return self.b.apply(prim, *args)


def stored(b: "Numba", name: str, shape: tuple, dtype: str) -> Src:
    """An array variable (or a scalar one, shape ())."""
    return Src(b, shape, dtype, lambda i: f"{name}[{', '.join(i)}]" if i else name, name)


def flat(b: "Numba", name: str, shape: tuple, dtype: str) -> Src:
    """A tensor of ``shape`` held row-major by the 1-d array ``name`` of any layout; float32
    read as float32 whatever the array holds."""
    strides = [int(np.prod(shape[a + 1 :])) for a in range(len(shape))]

    def render(index):
        at = [f"{s} * ({i})" for i, s, n in zip(index, strides, shape, strict=True) if n > 1]
        text = f"{name}[{' + '.join(at) or '0'}]"
        return f"np.{dtype}({text})"

    return Src(b, shape, dtype, render)


class Numba:
    """The ops' backend as source: elementwise arithmetic, slices and concatenations stay one
    expression per element; every other result is bound to a variable by a loop nest."""

    def __init__(self, consts: dict, inputs: dict[str, tuple]):
        self.consts = consts
        self.args = {k: f"a{n}" for n, k in enumerate(inputs)}  # tensor names as identifiers
        self.vals = {k: stored(self, self.args[k], *spec) for k, spec in inputs.items()}
        self.globals: dict[str, np.ndarray] = {}  # the constants the function reads, frozen in
        self.lines: list[str] = []

    def __getattr__(self, prim: str):
        if prim in ELEMENTWISE:
            return lambda *args: self.apply(prim, *args)
        raise AttributeError(prim)

    def get(self, name: str) -> Src:
        if name not in self.vals:
            v = np.asarray(self.consts[name])
            dtype = "float32" if v.dtype == np.float32 else "float64"
            if v.ndim == 0:  # a literal: repr round-trips float64, float32 converts exactly
                text = f"np.{dtype}({float(v)!r})"
                self.vals[name] = Src(self, (), dtype, lambda i, t=text: t)
            else:
                g = f"c{len(self.globals)}"
                self.globals[g] = np.ascontiguousarray(v, dtype=dtype)
                self.vals[name] = stored(self, g, v.shape, dtype)
        return self.vals[name]

    def apply(self, prim: str, *args) -> Src:
        srcs = [a for a in args if isinstance(a, Src)]
        dtype = RESULT.get(prim) or np.result_type(*(np.dtype(s.dtype) for s in srcs)).name
        weak = "float32" if all(s.dtype == "float32" for s in srcs) else "float64"  # NEP 50

        def render(i):
            texts = [a.at(i) if isinstance(a, Src) else f"np.{weak}({float(a)!r})" for a in args]
            return ELEMENTWISE[prim].format(*texts)

        return Src(self, np.broadcast_shapes(*(s.shape for s in srcs)), dtype, render)

    # ---- results bound to variables

    def shr(self, v: Src, shift: int) -> Src:
        return self.floor(v * 2.0**-shift)

    def loops(self, shape: tuple) -> tuple[tuple, str]:
        """Loop headers over the axes longer than 1: (the index, the body's indent)."""
        index, pad = [], "    "
        for axis, n in enumerate(shape):
            if n == 1:
                index.append("0")
                continue
            index.append(f"i{axis}")
            self.lines.append(f"{pad}for i{axis} in range({n}):")
            pad += "    "
        return tuple(index), pad

    def bind(self, shape: tuple, dtype: str, body, into: str | None = None) -> Src:
        """A new variable (or the array ``into``) holding ``body(index, indent)`` at every index;
        ``body`` writes source lines ending in the element's text."""
        var = into or f"t{len(self.lines)}"
        if not shape:
            self.lines.append(f"    {var} = {body((), '    ')}")
        else:
            if into is None:
                self.lines.append(f"    {var} = np.empty({shape}, np.{dtype})")
            index, pad = self.loops(shape)
            value = body(index, pad)
            self.lines.append(f"{pad}{var}[{', '.join(index)}] = {value}")
        return stored(self, var, shape, dtype)

    def let(self, v: Src, name: str | None = None, into: str | None = None) -> Src:
        out = self.bind(v.shape, v.dtype, lambda i, pad: v.at(i), into)
        if name:
            self.vals[name] = out
        return out

    def reduce(self, shape: tuple, dtype: str, n: int, term) -> Src:
        """Σ over k < n of ``term(index, k)``, in order (exact: the sums are over integers, or
        over one element, as the matrix products' are)."""
        if dtype == "float32" and n > 1:
            raise ValueError("a float32 sum over more than one element is not compiled")

        def body(index, pad):
            self.lines.append(f"{pad}acc = np.{dtype}(0.0)")
            self.lines.append(f"{pad}for k in range({n}):")
            self.lines.append(f"{pad}    acc += {term(index, 'k')}")
            return "acc"

        return self.bind(shape, dtype, body)

    def matmul(self, a: Src, w: Src) -> Src:
        """x (…, K) @ W (K, O): row k of W times x_k added onto the result for k = 0, 1, …
        (the innermost loop runs along W's rows, contiguous)."""
        shape, var = (*a.shape[:-1], w.shape[-1]), f"t{len(self.lines)}"
        self.lines.append(f"    {var} = np.zeros({shape}, np.float64)")
        lead, pad = self.loops(shape[:-1])
        self.lines.append(f"{pad}for k in range({a.shape[-1]}):")
        self.lines.append(f"{pad}    x_k = {a.at((*lead, 'k'))}")
        self.lines.append(f"{pad}    for j in range({shape[-1]}):")
        self.lines.append(
            f"{pad}        {var}[{', '.join((*lead, 'j'))}] += x_k * {w.at(('k', 'j'))}"
        )
        return stored(self, var, shape, "float64")

    def sum_last(self, v: Src) -> Src:
        return self.reduce(v.shape[:-1], v.dtype, v.shape[-1], lambda i, k: v.at((*i, k)))

    def sum_keep(self, v: Src) -> Src:
        term = lambda i, k: v.at((*i[:-1], k))  # noqa: E731
        return self.reduce((*v.shape[:-1], 1), v.dtype, v.shape[-1], term)

    # ---- reads in place

    def shifted(self, v: Src, shape: tuple, last) -> Src:
        """``v`` read at the last index ``last(i)`` (an expression of the result's last index)."""
        return Src(self, shape, v.dtype, lambda i: v.at((*i[:-1], last(i[-1]))))

    def slice_last(self, v: Src, a: int, c: int) -> Src:
        return self.shifted(v, (*v.shape[:-1], c - a), lambda i: f"{i} + {a}" if a else i)

    def halves(self, v: Src) -> tuple[Src, Src]:
        h = v.shape[-1] // 2
        return self.slice_last(v, 0, h), self.slice_last(v, h, 2 * h)

    def drop_last(self, v: Src) -> Src:
        return self.slice_last(v, 0, v.shape[-1] - 1)

    def unsqueeze_last(self, v: Src) -> Src:
        return Src(self, (*v.shape, 1), v.dtype, lambda i: v.at(i[:-1]))

    def concat_last(self, a: Src, c: Src) -> Src:
        n = a.shape[-1]
        shape = (*np.broadcast_shapes(a.shape[:-1], c.shape[:-1]), n + c.shape[-1])

        def render(i):
            first, rest = a.at((*i[:-1], i[-1])), c.at((*i[:-1], f"{i[-1]} - {n}"))
            return f"({first} if {i[-1]} < {n} else {rest})"

        return Src(self, shape, a.dtype, render)

    def gather(self, table: Src, index: Src) -> Src:
        return Src(self, index.shape, table.dtype, lambda i: f"{table.name}[int({index.at(i)})]")

    def arange(self, n: int) -> Src:
        return Src(self, (n,), "float64", lambda i: f"np.float64({i[0]})")

    def quantize(self, src: str, scale: str, zp: int, lo: int, hi: int) -> Src:
        return self.rint(self.get(src) / self.get(scale))


def generate(ops: list, consts: dict, inputs: dict[str, tuple], outputs: list[str], held=()):
    """``ops`` as one numba-compiled function ``f(*inputs, *outputs)`` that writes the tensors
    ``outputs`` into arrays it is given; ``inputs``: name → (shape, dtype name) of the arrays it
    reads (codes and reals float64, the float input ``x`` float32).  With ``held`` (pairs of an
    input and an output of one shape: a state and its next value), those are no arguments but
    slots of one float64 buffer ``s`` (2, n), read from row k and written into row 1 − k, and
    every other input is passed as a 1-d array of its elements: ``f(*inputs, s, k)``, three
    arrays to unbox per call however many states there are.  Returns (function, its source,
    the outputs' (shape, dtype), the held pairs' (offset, size) in a row)."""
    import numba

    b = Numba(consts, inputs)
    outs = {name: f"out{k}" for k, name in enumerate(outputs)}
    head, slots, nexts = [], [], dict(held)
    for name, nxt in held:  # views of the buffer's two rows
        shape, at = inputs[name][0], sum(slots[-1]) if slots else 0
        slots.append((at, int(np.prod(shape))))
        for var, row in ((b.args[name], "k"), (outs[nxt], "1 - k")):
            head.append(f"    {var} = s[{row}, {at}:{sum(slots[-1])}].reshape({shape})")
    rest = [name for name in inputs if name not in nexts]
    for name in rest if held else []:
        shape, dtype = inputs[name]
        b.vals[name], n = flat(b, b.args[name], shape, dtype), int(np.prod(shape))
        head.append(f"    if {b.args[name]}.size != {n}:  # would read past the array")
        head.append(f"        raise ValueError('{name}: expected {n} values')")
    for op in ops:
        b.let(op.eval(b), op.out, outs.get(op.out))
    for name in outputs:
        if name not in {op.out for op in ops}:  # an output the ops do not write: copied
            b.let(b.get(name), into=outs[name])
    specs = [(b.vals[name].shape, b.vals[name].dtype) for name in outputs]
    args = [b.args[name] for name in rest] + (["s", "k"] if held else [])
    args += [outs[name] for name in outputs if name not in nexts.values()]
    body = "".join(f"{line}\n" for line in head + b.lines)
    code = f"def f({', '.join(args)}):\n{body}"
    scope: dict = {"np": np, **b.globals}
    exec(code, scope)  # generated from the ops, nothing external
    return numba.njit(cache=False, error_model="numpy")(scope["f"]), code, specs, slots


def compile_ops(ops: list, consts: dict, inputs: list[str], outputs: list[str]):
    """``ops`` as a function of the tensors ``inputs`` (float64 arrays, the float input ``x``
    float32) → the tuple of ``outputs`` (new arrays), compiled by numba for the shapes of its
    first call.  Returns (function, the sources it compiled, keyed by the inputs' shapes)."""
    sources: dict[tuple, str] = {}
    compiled: dict[tuple, tuple] = {}

    def run(*arrays):
        key = tuple((a.shape, a.dtype.name) for a in arrays)
        if key not in compiled:
            shapes = dict(zip(inputs, key, strict=True))
            fn, sources[key], specs, _ = generate(ops, consts, shapes, outputs)
            compiled[key] = fn, specs
        fn, specs = compiled[key]
        outs = [np.empty(shape, dtype) for shape, dtype in specs]
        fn(*arrays, *outs)
        return tuple(outs)

    return run, sources


class CompiledStream:
    """``intref.Stream`` with the step compiled: the same states, the same codes.  The states
    are slots of one buffer of two rows, read from one row and written into the other, the
    rows swapping every step: a step passes the compiled function three arguments."""

    def __init__(self, graph: Graph):
        self.graph = graph
        inputs = {"x": ((1, graph.d_input), "float32")}
        inputs |= {s.name: ((1, *s.shape), "float64") for s in graph.states}
        nexts = [s.next for s in graph.states]
        held = [(s.name, s.next) for s in graph.states]
        self._step, self.source, specs, slots = generate(
            graph.step, graph.consts, inputs, nexts, held
        )
        for s, (shape, _) in zip(graph.states, specs, strict=True):
            if shape != (1, *s.shape):
                raise ValueError(f"state {s.name}: its next value has shape {shape}, not {s.shape}")
        self._buffer = np.zeros((2, sum(size for _, size in slots)))
        self._views = [  # per row: the states as arrays (1, …) over it
            tuple(
                row[at : at + size].reshape(1, *s.shape)
                for s, (at, size) in zip(graph.states, slots, strict=True)
            )
            for row in self._buffer
        ]
        self.reset()
        self(np.zeros(graph.d_input, dtype=np.float32))  # compile now
        self.reset()

    def reset(self) -> None:
        self._buffer[:] = 0.0
        self._row = 0
        self.state = self._views[0]

    def __call__(self, x_t: np.ndarray) -> tuple:
        """x_t (d_input,) → the new state (1, …) per state; the arrays are reused two steps on
        (copy them to keep them)."""
        if type(x_t) is not np.ndarray or x_t.ndim != 1:
            x_t = np.asarray(x_t, dtype=np.float32).reshape(-1)
        self._step(x_t, self._buffer, self._row)
        self._row = 1 - self._row
        self.state = self._views[self._row]
        return self.state

    def codes(self) -> dict[str, np.ndarray]:
        """The state as int64 codes, keyed like ``intref.Stream.state``."""
        names = [s.name for s in self.graph.states]
        return {n: v.astype(np.int64) for n, v in zip(names, self.state, strict=True)}

    def logits(self) -> np.ndarray:
        nexts = [s.next for s in self.graph.states]  # the head reads the state's last value
        return intref.head(self.graph, dict(zip(nexts, self.codes().values(), strict=True)))[0]
