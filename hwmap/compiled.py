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


def _ident(name: str, names: dict) -> str:
    if name not in names:
        names[name] = f"v{len(names)}"
    return names[name]


def _source(graph: dict, shapes: dict) -> tuple[str, list[str]]:
    """Python source of ``step(x, *states) -> (*next_states,)`` over globals c0, c1, … (the
    constants, in the returned order)."""
    names: dict[str, str] = {"x": "x"}
    consts: list[str] = []

    def get(name: str) -> str:
        if name in graph["consts"]:
            if name not in names:
                names[name] = f"c{len(consts)}"
                consts.append(name)
            return names[name]
        return _ident(name, names)

    def term(kind, ins):
        args = [get(i) for i in ins]
        if kind == "matmul":
            return f"({args[0]} @ {args[1]})"
        if kind == "dot":
            return f"({args[0]} * {args[1]}).sum(axis={len(shapes[ins[0]]) - 1})"
        return "(" + " * ".join(args) + ")"

    def clip(expr, lo, hi):
        return f"np.minimum(np.maximum({expr}, {float(lo)}), {float(hi)})"

    states = [_ident(s["name"], names) for s in graph["states"]]
    lines = []
    for op in graph["step"]:
        kind, out = op["op"], _ident(op["out"], names)
        shape = shapes[op["out"]]
        if kind == "quantize":
            r = f"np.rint(x / {get(op['scale'])}).astype(np.float64)"
            lines.append(f"{out} = {clip(r, op['lo'], op['hi'])}")
        elif kind in ("affine", "real"):
            acc = " + ".join(f"{term(k, ins)} * {get(m)}" for k, ins, m in op["terms"])
            if kind == "affine" and op["shift"]:
                s = op["shift"]
                acc = f"np.floor(({acc} + {2.0 ** (s - 1)!r}) * {2.0**-s!r})"
            if kind == "affine" and op["lo"] is not None:
                acc = clip(acc, op["lo"], op["hi"])
            lines.append(f"{out} = np.broadcast_to({acc}, {shape}).copy()")
        elif kind == "sigmoid":
            lines.append(f"{out} = 1.0 / (1.0 + np.exp(-{get(op['in'])}))")
        elif kind == "glu":
            v, h = get(op["in"]), shape[-1]
            lines.append(f"{out} = {v}[:, :{h}] * (1.0 / (1.0 + np.exp(-{v}[:, {h}:])))")
        elif kind == "round":
            r = f"np.floor({get(op['in'])} / {get(op['scale'])} + 0.5)"
            lines.append(f"{out} = {clip(r, op['lo'], op['hi'])}")
        elif kind == "mean":
            r = f"np.floor({get(op['in'])} * {get(op['ratio'])} / {get(op['count'])} + 0.5)"
            lines.append(f"{out} = {clip(r, op['lo'], op['hi'])}")
        elif kind == "lut":
            C = op["channels"]
            idx = f"(({get(op['in'])} - {float(op['offset'])}) * {C}.0 + np.arange({C}) * 1.0)"
            lines.append(
                f"{out} = {get(op['table'])}[{idx}.ravel().astype(np.int64)].reshape({shape})"
            )
        elif kind == "heaviside":
            lines.append(f"{out} = np.where({get(op['in'])} > 0, 1.0, 0.0)")
        elif kind == "unsqueeze":
            lines.append(f"{out} = {get(op['in'])}.reshape({shape})")
        elif kind == "shift":
            new, buf = get(op["in"]), get(op["buffer"])
            lines.append(
                f"{out} = np.concatenate(({new}.reshape({shape[:-1] + (1,)}), "
                f"{buf}[:, :, :-1]), axis=2)"
            )
        elif kind == "layernorm":
            v, H = get(op["in"]), op["H"]
            lines += [
                f"s1 = {v}.sum(axis=1).reshape(-1, 1)",
                f"s2 = ({v} * {v}).sum(axis=1).reshape(-1, 1)",
                f"den = np.sqrt(({H}.0 * s2 - s1 * s1) + {get(op['eps'])})",
                f"{out} = ({H}.0 * {v} - s1) / den * {get(op['gamma'])} + {get(op['beta'])}",
            ]
        elif kind == "gelu":
            v = get(op["in"])
            lines += [
                f"z = {v} * {intref.SQRT1_2!r}",
                "a = np.abs(z)",
                f"t = 1.0 / (1.0 + {intref.ERF_P!r} * a)",
                f"p = {intref.ERF_A[4]!r}",
                *[f"p = p * t + {c!r}" for c in intref.ERF_A[3::-1]],
                f"{out} = 0.5 * {v} * (1.0 + np.sign(z) * (1.0 - p * t * np.exp(-(a * a))))",
            ]
        else:
            raise ValueError(f"unknown op {kind!r}")
    nexts = ", ".join(names[s["next"]] for s in graph["states"])
    args = ", ".join(["x", *states])  # the constants are globals: numba freezes them in
    body = "\n".join("    " + line for line in lines)
    return f"def step({args}):\n{body}\n    return ({nexts},)\n", consts


class CompiledStream:
    """``intref.Stream`` with the step compiled: the same states, the same codes."""

    def __init__(self, graph: dict):
        import numba

        self.graph = graph
        x = np.zeros((1, graph["meta"]["d_input"]), dtype=np.float32)
        env, _ = intref.step(graph, x, intref.init_state(graph, 1))
        shapes = {k: tuple(np.shape(v)) for k, v in env.items()}
        consts = graph["consts"]
        source, order = _source(graph, shapes)
        scope: dict = {"np": np}
        for i, name in enumerate(order):  # float64 integers; the input scale stays float32
            value = consts[name]
            dtype = np.float32 if value.dtype == np.float32 else np.float64
            scope[f"c{i}"] = np.ascontiguousarray(value, dtype=dtype)
        exec(source, scope)  # generated from the graph's own ops, nothing external
        self.source = source
        self._step = numba.njit(cache=False)(scope["step"])
        self.reset()
        self(np.zeros(graph["meta"]["d_input"], dtype=np.float32))  # compile now
        self.reset()

    def reset(self) -> None:
        self.state = tuple(np.zeros((1, *s["shape"])) for s in self.graph["states"])

    def __call__(self, x_t: np.ndarray) -> tuple:
        x = np.asarray(x_t, dtype=np.float32).reshape(1, -1)
        self.state = self._step(x, *self.state)
        return self.state

    def codes(self) -> dict[str, np.ndarray]:
        """The state as int64 codes, keyed like ``intref.Stream.state``."""
        return {
            s["name"]: v.astype(np.int64)
            for s, v in zip(self.graph["states"], self.state, strict=True)
        }

    def logits(self) -> np.ndarray:
        env = {
            s["next"]: v.astype(np.int64)
            for s, v in zip(self.graph["states"], self.state, strict=True)
        }
        return intref.head(self.graph, env)[0]
