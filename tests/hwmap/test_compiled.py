"""The compiled streaming step gives the interpreter's codes, step for step."""

import numpy as np
import pytest

from hwmap import intref, ops
from hwmap.compiled import CompiledStream, compile_ops
from hwmap.lower import lower
from hwmap.ops import Term
from qssm.runs import load_data, load_run_model


# every op kind between them
@pytest.mark.parametrize("family", ["s4d", "mingru_hw", "mgrade", "mgrade_hw"])
def test_compiled_stream_equals_interpreter(family, tiny_run, recipe_of):
    graph = lower(load_run_model(tiny_run(family))[0])
    fast = CompiledStream(graph)
    x = load_data(recipe_of(family)).test.x.numpy()[:3]
    for seq in x:
        slow = intref.Stream(graph)
        fast.reset()
        for x_t in seq:
            slow(x_t)
            fast(x_t)
            assert all(np.array_equal(v, slow.state[k]) for k, v in fast.codes().items())
        assert np.array_equal(fast.logits(), slow.logits())


def test_compiled_float32_arithmetic_equals_numpy_on_random_near_ties():
    """The scalar float32 loops round as numpy's float32 arrays do: random codes, factors and
    scales (per element and broadcast over the batch), the S4D update and a readout over an
    odd number of modes, against the interpreter's backend.  Every other mode makes ties that
    only float32 rounds to: f32(1/3)·(x·3) is x in float32, x·(1 + 3e−8) in float64."""
    rng = np.random.default_rng(0)
    B, H, M = 400, 3, 7
    consts = {
        "f1": rng.uniform(-1, 1, (H, M)).astype(np.float32),
        "f2": rng.uniform(-1, 1, (H, M)).astype(np.float32),
        "s1": rng.uniform(0.01, 0.1, (H, M)).astype(np.float32),
        "su": np.float32(0.3),
        "out": rng.uniform(0.01, 0.1, (H, M)).astype(np.float32),
        "D": rng.uniform(-1, 1, H).astype(np.float32),
        "one": np.float32(1.0),
        "M": np.int64(1),
    }
    for name, tie in (("f1", 1 / 3), ("s1", 3.0), ("out", 2.0)):
        consts[name][:, ::2] = tie
    terms = (Term("mul", ("xr",), "M"), Term("mul", ("u",), "M"))
    update = ops.Float32Update(
        out="x1", terms=terms, shift=0, lo=-128, hi=127,
        factors=("f1", "f2"), scales=("s1", "su"), out_scale="out",
    )  # fmt: skip
    readout = ops.Float32Readout(
        out="y", terms=(Term("dot", ("x1", "f1"), "M"), Term("mul", ("v",), "M")), shift=0,
        lo=-8, hi=7, factors=("f2", "D"), scales=("s1", "su"), out_scale="one", modes=M,
    )  # fmt: skip
    inputs = {
        "xr": rng.integers(-128, 128, (B, H, M)),
        "u": rng.integers(-8, 8, (B, H, 1)),
        "v": rng.integers(-8, 8, (B, H)),
    }
    env = dict(inputs)
    b = intref.Numpy(env, consts)
    for op in (update, readout):
        env[op.out] = op.eval(b)
    c = {k: np.float64(v) for k, v in consts.items()}  # the update in float64 rounds otherwise
    f64 = (c["f1"] * (inputs["xr"] * c["s1"]) + c["f2"] * (inputs["u"] * c["su"])) / c["out"]
    assert (np.clip(np.rint(f64), -128, 127) != env["x1"]).any()
    fn, _ = compile_ops([update, readout], consts, list(inputs), ["x1", "y"])
    x1, y = fn(*(v.astype(np.float64) for v in inputs.values()))
    assert np.array_equal(x1, env["x1"]) and np.array_equal(y, env["y"])
    assert len(np.unique(env["y"])) > 3  # the readout is not saturated


def test_compiled_stream_reads_any_one_dimensional_input_and_checks_its_size(tiny_run, recipe_of):
    """The step reads x_t in place from a 1-d array of any dtype and strides (as float32, as
    the interpreter casts it), converts anything else, and refuses a wrong length."""
    graph = lower(load_run_model(tiny_run("s4d"))[0])
    fast = CompiledStream(graph)
    seq = load_data(recipe_of("s4d")).test.x.numpy()[0].astype(np.float64) * 1.001
    wide = np.repeat(seq, 3, axis=1)  # column k::3 is a strided view of seq's values
    for feed in (seq, wide[:, ::3], seq.tolist()):
        slow = intref.Stream(graph)
        fast.reset()
        for t in range(len(seq)):
            slow(seq[t])
            state = fast(feed[t])
            assert all(np.array_equal(v, slow.state[k]) for k, v in fast.codes().items())
        assert all(np.array_equal(a, b) for a, b in zip(state, fast.state, strict=True))
        assert np.array_equal(fast.logits(), slow.logits())
    with pytest.raises(ValueError, match="x: expected"):
        fast(np.zeros(graph.d_input + 1, dtype=np.float32))
