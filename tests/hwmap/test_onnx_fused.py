"""The fewer, fused nodes of the ONNX step graph (folded constants, tables over the input's
codes, the stacked S4D layer, Gather and Gemm ops, Reciprocal) stay bit-exact against the
integer reference, also where float32 rounding ties."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from hwmap import intref, onnx_export, verify
from hwmap.graph import Format, Graph, State
from hwmap.lower import lower
from hwmap.ops import Affine, Float32Readout, Float32Update, Lut, Quantize, Real, Term
from qssm.runs import load_data, load_run_model


def _run(e: onnx_export.Emitter, inputs: dict, outputs: dict, feeds: dict) -> tuple[dict, list]:
    """The emitted nodes as a model run once in onnxruntime: (outputs, node kinds)."""
    info = helper.make_tensor_value_info
    graph = e.graph(
        "t",
        [info(k, t, ["batch", *s]) for k, (t, s) in inputs.items()],
        [info(k, t, ["batch", *s]) for k, (t, s) in outputs.items()],
    )
    model = onnx_export._model(graph)
    sess = verify.session(model.SerializeToString())
    return dict(zip(outputs, sess.run(None, feeds), strict=True)), [n.op_type for n in e.nodes]


@pytest.mark.parametrize(
    "zp, lo, hi", [(0, -8, 7), (5, -5, 10), (10, -2, 5), (-3, -100, 120), (0, -128, 127)]
)
def test_a_scalar_input_becomes_a_table_over_its_codes(zp, lo, hi):
    # the requantization of the input's codes folds into one Gather from a table of them,
    # read by the stored code itself or (codes above 0) shifted by the lowest; stored codes
    # that span a whole type (int4, uint4, int8) are quantized to it, which clips them
    step = [
        Quantize(out="c", src="x", scale="s", zp=zp, lo=lo, hi=hi, site="c"),
        Affine(out="y", terms=(Term("mul", ("c",), "M"),), shift=2, lo=-50, hi=40, site="y"),
    ]
    head = [Real(out="logits", terms=(Term("mul", ("y",), "one"),))]
    consts = {"s": np.float32(0.37), "M": np.int64(3), "one": np.float64(1.0)}
    graph = Graph("hand", 1, 1, "y", [], step, head, consts, {})
    x = np.linspace(-60, 60, 2001, dtype=np.float32)[:, None]  # every code, and clipped ones
    env, _ = intref.step(graph, x, {})
    ref = intref.head(graph, env)
    model = onnx_export.step_model(graph)
    out = dict(
        zip(
            ["logits", "code:c", "code:y"],
            verify.session(model.SerializeToString()).run(None, {"x": x}),
            strict=True,
        )
    )
    assert np.array_equal(out["logits"], ref) and np.array_equal(out["code:y"], env["y"])
    assert np.array_equal(out["code:c"], env["c"]) and len(np.unique(env["c"])) == hi - lo + 1
    kinds = [n.op_type for n in model.graph.node]
    assert "Gather" in kinds and not {"Mul", "Floor", "MatMul"} & set(kinds)
    assert ("Clip" in kinds) == ((lo + zp, hi + zp) not in onnx_export.EXACT_TYPES)


def _readout(scales: tuple[str, str, str], out_scale: str, M: int) -> Float32Readout:
    """The S4D readout y = Σ h0·x_re' + Σ h1·x_im' + D·v over M modes, on 4-bit codes."""
    return Float32Readout(
        out="y", terms=(Term("dot", ("xr'", "h0"), "M"), Term("dot", ("xi'", "h1"), "M"),
                        Term("mul", ("v",), "M")),
        shift=0, lo=-8, hi=7, factors=("h0", "h1", "D"), scales=scales, out_scale=out_scale,
        modes=M,
    )  # fmt: skip


def _s4d_layer(H: int, M: int, pow2: bool, rng):
    """Two state updates (the inputs xr, xi, u) and their readout (+ v), with constants
    that make float32 ties in every other mode: with powers of two x·1.5 rounds half to even,
    otherwise f = 1/3 and g = 3 make f·(x·g) x in float32, x·(1 + 3e−8) in float64, and ÷ 2
    a tie (as in test_compiled)."""
    c = {}
    for part in ("r", "i"):
        for k in range(3):
            c[f"f{part}{k}"] = rng.uniform(-1, 1, (H, M)).astype(np.float32)
            if pow2:
                c[f"g{part}{k}"] = np.float32(2.0) ** rng.integers(-3, 3, (H, M)).astype(np.float32)
            else:
                c[f"g{part}{k}"] = rng.uniform(0.01, 0.1, (H, M)).astype(np.float32)
        c[f"s{part}"] = (
            np.float32(2.0) ** rng.integers(-2, 2, (H, M)).astype(np.float32)
            if pow2
            else rng.uniform(0.01, 0.1, (H, M)).astype(np.float32)
        )
        if pow2:  # f·(x·1)/0.5 = 1.5·x: a tie for odd x (the other terms' codes are even)
            c[f"f{part}0"][:, ::2], c[f"s{part}"][:, ::2] = 0.75, 0.5
            c[f"f{part}1"][:, ::2] = c[f"f{part}2"][:, ::2] = 0.5
            for k in range(3):
                c[f"g{part}{k}"][:, ::2] = 1
        else:
            c[f"f{part}0"][:, ::2], c[f"g{part}0"][:, ::2], c[f"s{part}"][:, ::2] = 1 / 3, 3, 2
            c[f"f{part}1"][:, ::2] = c[f"f{part}2"][:, ::2] = 0  # x/2 alone: a tie for odd x
    c.update(
        h0=rng.uniform(-0.1, 0.1, (H, M)).astype(np.float32),
        h1=rng.uniform(-0.1, 0.1, (H, M)).astype(np.float32),
        D=rng.uniform(-1, 1, H).astype(np.float32),
        su=np.float32(0.25),
        one=np.float32(0.5),
        M=np.int64(1),
    )
    terms = tuple(Term("mul", (name,), "M") for name in ("xr", "xi", "u"))
    updates = [
        Float32Update(
            out=f"x{p}'",
            terms=terms,
            shift=0,
            lo=-128,
            hi=127,
            factors=(f"f{p}0", f"f{p}1", f"f{p}2"),
            scales=(f"g{p}0", f"g{p}1", f"g{p}2"),
            out_scale=f"s{p}",
        )  # fmt: skip
        for p in ("r", "i")
    ]
    return c, [*updates, _readout(("gr0", "gi1", "su"), "one", M)]


@pytest.mark.parametrize("pow2", [True, False])
@pytest.mark.parametrize("modes", [8, 7])
def test_stacked_s4d_layer_equals_the_reference_on_float32_ties(pow2, modes):
    rng = np.random.default_rng(modes + 10 * pow2)
    B, H = 300, 3
    consts, ops = _s4d_layer(H, modes, pow2, rng)
    feeds = {
        "state:xr": rng.integers(-128, 128, (B, H, modes)).astype(np.int8),
        "state:xi": rng.integers(-128, 128, (B, H, modes)).astype(np.int8),
        "state:u": 2 * rng.integers(-4, 4, (B, H, 1)).astype(np.int8),
        "v": rng.integers(-8, 8, (B, H)).astype(np.float64),
    }
    if pow2:  # even codes beside the tie column's odd ones
        for k in ("state:xi",):
            feeds[k] = (feeds[k] // 2 * 2).astype(np.int8)
    env = {"xr": feeds["state:xr"].astype(np.int64), "xi": feeds["state:xi"].astype(np.int64)}
    env.update(u=feeds["state:u"].astype(np.int64), v=feeds["v"].astype(np.int64))
    b = intref.Numpy(env, consts)
    for op in ops:
        env[op.out] = op.eval(b)
    shapes = {"xr'": (H, modes), "xi'": (H, modes), "y": (H,)}
    e = onnx_export.Emitter(consts, name_ops=False, shapes=shapes)
    for s in ("xr", "xi", "u"):  # int8 codes through DequantizeLinear
        e.set(e.from_code(f"state:{s}", 0, np.int8, s), s)
    e.ops(ops)
    for s in ("xr", "xi"):
        e.to_code(e.get(f"{s}'"), 0, np.int8, TensorProto.INT8, f"next:{s}")
    e.output(e.get("y"), "y")
    int8, double = TensorProto.INT8, TensorProto.DOUBLE
    inputs = {
        "state:xr": (int8, (H, modes)),
        "state:xi": (int8, (H, modes)),
        "state:u": (int8, (H, 1)),
        "v": (double, (H,)),
    }
    outputs = {"next:xr": (int8, (H, modes)), "next:xi": (int8, (H, modes)), "y": (double, (H,))}
    out, kinds = _run(e, inputs, outputs, feeds)
    assert np.array_equal(out["next:xr"], env["xr'"]) and np.array_equal(out["next:xi"], env["xi'"])
    assert np.array_equal(out["y"], env["y"]) and len(np.unique(env["y"])) > 3
    fused = modes == 8  # the stacked readout: halved by pairing MatMuls, requantized by one
    assert kinds.count("ReduceSum") == (not fused) and kinds.count("MatMul") == 3 * fused
    assert kinds.count("QuantizeLinear") == 1 + fused  # both next states through one
    assert kinds.count("Div") == (not fused) + (not pow2)  # the update's ÷ powers of two folded
    c = {k: np.float64(v) for k, v in consts.items()}
    xr = env["xr"].astype(np.float64)
    v = (
        c["fr0"] * (xr * c["gr0"])
        + c["fr1"] * (env["xi"] * c["gr1"])
        + c["fr2"] * (env["u"] * c["gr2"])
    )
    v = v / c["sr"]
    if pow2:  # ties that round to even
        assert (np.floor(v + 0.5) != np.clip(np.rint(v), -128, 127)).any()
    else:  # float64 rounds otherwise
        assert (np.clip(np.rint(v), -128, 127) != env["xr'"]).any()


def test_a_times_one_over_d_is_written_with_reciprocal():
    # onnxruntime rewrites Mul(a, Div(1, d)) as Div(a, d), which rounds otherwise; the ops'
    # sigmoid and erf compute a · (1 / d) and so must the graph
    rng = np.random.default_rng(3)
    feeds = {"a": rng.normal(0, 4, (2000, 8)), "d": rng.uniform(0.5, 40, (2000, 8))}
    e = onnx_export.Emitter({})
    e.output(e.get("a") * (1.0 / e.get("d")), "y")
    double = TensorProto.DOUBLE
    out, kinds = _run(e, {k: (double, (8,)) for k in feeds}, {"y": (double, (8,))}, feeds)
    assert np.array_equal(out["y"], feeds["a"] * (1.0 / feeds["d"]))
    assert (feeds["a"] / feeds["d"] != out["y"]).any()  # what Div(a, d) would have given
    assert kinds == ["Reciprocal", "Mul"]  # the Mul writes the output: no Identity


def test_s4d_deployable_step_graph_is_few_nodes_and_exact(tiny_run, recipe_of, tmp_path):
    graph = lower(load_run_model(tiny_run("s4d"))[0])
    model = onnx_export.step_model(graph, codes=False)
    kinds = [n.op_type for n in model.graph.node]
    assert len(kinds) <= 55 and kinds.count("QuantizeLinear") == 3, kinds  # x, states, readout
    # onnxruntime's optimizer leaves the next states' two Gathers (int32 indices) unfused
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    optimized = [n.op_type for n in onnx.load(tmp_path / "optimized.onnx").graph.node]
    assert "Squeeze" not in optimized and len(optimized) == len(kinds), optimized
    x = load_data(recipe_of("s4d")).test.x.numpy()[:16]
    sess = verify.session(model.SerializeToString())
    logits, _ = verify.stream_onnx(graph, sess, x)
    assert np.array_equal(logits, intref.run(graph, x)[0])


@pytest.mark.parametrize("scale, gemm", [(0.375, True), (0.37, False), (2.0**-60, False)])
def test_an_exact_dyadic_real_is_one_gemm(scale, gemm):
    # codes @ W × s + b × s₁: one Gemm where every product and sum is a multiple of 2^−k
    # below 2^(53−k) (0.375 = 3·2^−3); otherwise MatMul, Mul, Add as the reference computes
    rng = np.random.default_rng(5)
    step = [Quantize(out="c", src="x", scale="s", zp=0, lo=-128, hi=127, site="c")]
    mm = Term("matmul", ("c", "W"), "s0")
    head = [Real(out="logits", terms=(mm, Term("const", ("b",), "s1")))]
    consts = {
        "s": np.float32(0.01),
        "W": rng.integers(-128, 128, (4, 3)),
        "s0": np.array([scale, 2 * scale, scale / 4]),
        "b": rng.integers(-8, 8, 3),
        "s1": np.float64(0.0625),
    }
    formats = {"c": Format(np.float64(0.01), 0, -128, 127)}
    graph = Graph("hand", 4, 3, "c", [], step, head, consts, formats)
    x = rng.normal(0, 1, (500, 4)).astype(np.float32)
    ref = intref.head(graph, intref.step(graph, x, {})[0])
    model = onnx_export.step_model(graph, codes=False)
    (logits,) = verify.session(model.SerializeToString()).run(None, {"x": x})
    assert np.array_equal(logits, ref)
    assert ("Gemm" in [n.op_type for n in model.graph.node]) == gemm


@pytest.mark.parametrize("zp", [0, 3])
def test_a_wide_state_crosses_the_boundary_as_float64_without_casts(zp):
    # a state wider than 16 bits (an exact accumulator, stored with zero point zp) is a float64
    # input and output holding its stored codes exactly: no Cast at either end; streamed it
    # gives the reference's logits, and its stored codes are the reference's centered ones + zp
    acc = State("acc", (2,), zp, -(2**30), 2**30, "acc'")
    step = [
        Quantize(out="c", src="x", scale="s", zp=0, lo=-128, hi=127, site="c"),
        Affine(out="acc'", terms=(Term("mul", ("acc",), "one"), Term("mul", ("c",), "M")),
               shift=0, lo=None, hi=None),
    ]  # fmt: skip
    head = [Real(out="logits", terms=(Term("mul", ("acc'",), "half"),))]
    consts = {"s": np.float32(0.01), "M": np.int64(2**20 + 1), "one": np.int64(1)}
    consts["half"] = np.float64(0.5)
    graph = Graph("hand", 2, 2, "acc'", [acc], step, head, consts, {})
    model = onnx_export.step_model(graph, codes=False)
    ends = [*model.graph.input, *model.graph.output]
    types = {v.name: v.type.tensor_type.elem_type for v in ends}
    assert types["state:acc"] == types["next:acc"] == TensorProto.DOUBLE
    readers = [n for n in model.graph.node if "state:acc" in n.input]
    writer = [n for n in model.graph.node if "next:acc" in n.output]
    assert "Cast" not in [n.op_type for n in readers + writer] and len(writer) == 1
    x = np.random.default_rng(1).normal(0, 1, (40, 300, 2)).astype(np.float32)
    logits, _ = verify.stream_onnx(graph, verify.session(model.SerializeToString()), x)
    ref = intref.run(graph, x)[0]
    assert np.array_equal(logits, ref) and np.abs(ref).max() > 2**24  # past float32's integers
    sess = verify.session(model.SerializeToString())
    nxt = sess.run(["next:acc"], {"x": x[:, 0], "state:acc": np.full((40, 2), float(zp))})[0]
    centered = intref.step(graph, x[:, 0], intref.init_state(graph, 40))[1]["acc"]
    assert np.array_equal(nxt, centered + zp)


def _identity_then_readout(H: int, M: int, scale: float, rng, B: int = 400):
    """Two state updates that hand the state codes on (x' = x), their readout over M modes, and
    codes (2, B, H, M) for both states: per state and channel four modes have factor 2^18 and
    codes ±64 (products ±2^24, where float32 steps by 2), two of each sign, the others factor 1
    and codes −1, 0, 1, so float32 partial sums round, the large ones cancel, and the order of
    the sum decides the codes."""
    big = np.zeros((2, H, M), bool)
    big[..., :4] = True
    big = rng.permuted(big, axis=-1)
    c = {f"h{k}": np.where(big[k], np.float32(2.0**18), np.float32(1)) for k in range(2)}
    c.update(one=np.float32(1), zero=np.float32(0), s=np.float32(scale), D=np.float32(1))
    c["M"] = np.int64(1)
    terms = tuple(Term("mul", (name,), "M") for name in ("xr", "xi", "u"))
    updates = [
        Float32Update(
            out=f"{x}'",
            terms=terms,
            shift=0,
            lo=-128,
            hi=127,
            factors=("one", "zero", "zero") if x == "xr" else ("zero", "one", "zero"),
            scales=("one", "one", "one"),
            out_scale="one",
        )  # fmt: skip
        for x in ("xr", "xi")
    ]
    readout = _readout(("one", "one", "one"), "s", M)
    x = rng.choice([-1, 0, 0, 0, 1], (2, B, H, M))
    signs = rng.permuted(np.broadcast_to([64, 64, -64, -64], (2, B, H, 4)), axis=-1)
    x[np.broadcast_to(big[:, None], x.shape)] = signs.ravel()
    return c, [*updates, readout], x.astype(np.int8)


@pytest.mark.parametrize("modes, scale", [(8, 2.0), (32, 0.6), (128, 2.0)])
def test_the_readout_halving_by_pairing_matmuls_keeps_the_reference_order(modes, scale):
    # each halving level one MatMul by a 0/1 matrix (up to 64 modes; above, Split and Add):
    # the reference's order of float32 roundings, where a sequential or exact sum would give
    # other codes; the codes requantized by one QuantizeLinear (÷ 2: ties to even, saturated)
    rng = np.random.default_rng(modes)
    H = 3
    consts, ops, x = _identity_then_readout(H, modes, scale, rng)
    B = x.shape[1]
    feeds = {"state:xr": x[0], "state:xi": x[1], "state:u": np.zeros((B, H, 1), np.int8)}
    feeds["v"] = rng.choice([-20, -2, -1, 0, 1, 2, 20], (B, H)).astype(np.float64)
    env = {k[6:] if k.startswith("state:") else k: v.astype(np.int64) for k, v in feeds.items()}
    b = intref.Numpy(env, consts)
    for op in ops:
        env[op.out] = op.eval(b)
    assert np.array_equal(env["xr'"], env["xr"])  # the updates hand the codes on
    e = onnx_export.Emitter(consts, name_ops=False, shapes={"xr'": (H, modes), "y": (H,)})
    for s in ("xr", "xi", "u"):
        e.set(e.from_code(f"state:{s}", 0, np.int8, s), s)
    e.ops(ops)
    e.output(e.get("y"), "y")
    int8, double = TensorProto.INT8, TensorProto.DOUBLE
    inputs = {"state:xr": (int8, (H, modes)), "state:xi": (int8, (H, modes))}
    inputs |= {"state:u": (int8, (H, 1)), "v": (double, (H,))}
    out, kinds = _run(e, inputs, {"y": (double, (H,))}, feeds)
    assert np.array_equal(out["y"], env["y"])
    levels = modes.bit_length() - 1
    assert kinds.count("MatMul") == min(levels, 6) and kinds.count("QuantizeLinear") == 2
    p = [x[k].astype(np.float32) * consts[f"h{k}"] for k in range(2)]  # exact products
    t = p[0] + p[1]
    sequential = np.zeros(t.shape[:-1], np.float32)
    for m in range(modes):
        sequential += t[..., m]
    for other in (sequential, t.astype(np.float64).sum(-1)):
        codes = np.clip(np.rint((other + env["v"]) / np.float32(scale)), -8, 7)
        assert (codes != env["y"]).mean() > 0.05  # a wrong order would show
    if scale == 2.0:  # odd sums tie: to even, not up; and codes beyond [−8, 7] saturate
        w = (t.astype(np.float64).sum(-1) + env["v"]) / 2
        assert (np.floor(w + 0.5) != np.rint(w)).any() and (np.abs(w) > 8).any()


@pytest.mark.parametrize("lo, hi", [(-8, 7), (0, 15), (-128, 127), (-7, 7), (0, 255), (-9, 300)])
def test_requantizing_by_quantizelinear_divides_rounds_to_even_and_saturates(lo, hi):
    # rint(v / s) clipped to [lo, hi] (a Float32Update's rounding) as one QuantizeLinear to the
    # 8-bit type holding [lo, hi] and a Clip unless that is the whole type, on ties and their
    # float32 neighbours (× (1 / s) or rounding halves up would give other codes); a Lut reads
    # the saturated codes through a table over the type, clipped as the reference clips; past
    # 8 bits the op's own nodes
    s = np.float32(0.497314453125)
    op = Float32Update(
        out="y", terms=(), shift=0, lo=lo, hi=hi, factors=(), scales=(), out_scale="s"
    )
    lut = Lut(out="z", src="y", table="T", offset=lo - 2, channels=1)
    consts = {"s": s, "T": np.random.default_rng(1).normal(0, 1, hi - lo + 5)}
    e = onnx_export.Emitter(consts, name_ops=False)
    codes = onnx_export._requantized(e, op, e.get("x"))
    if hi > 255:
        assert codes is None
        return
    e.set(codes, "y")
    e.op(lut)
    e.output(e.get("z"), "z")
    e.output(codes, "y")
    ties = ((np.arange(lo - 150, hi + 151, dtype=np.float32) + 0.5) * s).astype(np.float32)
    x = np.concatenate([ties, np.nextafter(ties, np.float32(-1e9)), np.nextafter(ties, 1e9)])
    x = np.random.default_rng(0).permuted(np.resize(x, (len(x) // 8 + 1) * 8)).reshape(-1, 8)
    double = (TensorProto.DOUBLE, (8,))
    out, kinds = _run(e, {"x": (TensorProto.FLOAT, (8,))}, {"z": double, "y": double}, {"x": x})
    env = {"x": x}
    env["y"] = op.rounded(intref.Numpy(env, consts), x)
    ref = env["y"]
    assert np.array_equal(out["y"], ref) and np.array_equal(
        out["z"], lut.eval(intref.Numpy(env, consts))
    )
    assert kinds.count("QuantizeLinear") == 1 and "Div" not in kinds and "Round" not in kinds
    assert ("Clip" in kinds) == ((lo, hi) not in ((-128, 127), (0, 255)))
    assert (np.clip(np.rint(x * (np.float32(1) / s)), lo, hi) != ref).any()
    assert (np.clip(np.floor(x / s + np.float32(0.5)), lo, hi) != ref).any()
    assert ref.min() == lo and ref.max() == hi and (np.abs(x / s) > 130).any()
