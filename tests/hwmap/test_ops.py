"""Every op kind on hand-computed cases, run by its three backends: numpy (the integer
reference), onnxruntime (the ONNX emission) and numba (the compiled source) agree bit for bit."""

import math

import numpy as np
import onnx
from onnx import TensorProto, helper

from hwmap import compiled, onnx_export, ops, verify
from hwmap.intref import Numpy
from hwmap.ops import Term

L3 = math.log(3.0)
CONSTS = {
    "s": np.float32(0.5),
    "M": np.int64(3),
    "half": np.float64(0.5),
    "b": np.int64([4, 4, 4, 4]),
    "quarter": np.float64(0.25),
    "ratio": np.float64(1.0),
    "table": np.int64([10, 20, 30]),
    "table2": np.int64([1, 2, 3, 4]),  # code 0: channels (1, 2); code 1: (3, 4)
    "zero": np.float64(0.0),
    "one": np.float64([1.0, 1.0, 1.0]),
    "none": np.float64([0.0, 0.0, 0.0]),
    # hetero_4_8's S4D state update x_re' = Ā_re·x_re − Ā_im·x_im + u, two modes (float32)
    "a0": np.float32([0.984375, 0.9671022295951843]),  # Ā_re; mode 0: 1 − 2^−6, phase 0
    "na1": np.float32([-0.0, 0.060522712767124176]),  # −Ā_im
    "unit": np.float32(1.0),  # B̄ folded into C
    "sx": np.float32([2.0, 0.5]),  # per-element state scales
    "su": np.float32(0.0625),
    # a readout over three modes: factors 2·C_re, −2·C_im and D
    "cr": np.float32([[0.5, 0.25, 1.0]]),
    "ci": np.float32([[1.0, 7.0, 0.5]]),
    "D": np.float32([0.5]),
}
S = 40  # the same sums as fixed point: multipliers (factor · input scale / output scale)·2^S


def _fixed(v) -> np.ndarray:
    return np.rint(np.asarray(v, dtype=np.float64) * 2.0**S).astype(np.int64)


CONSTS |= {
    "M0": _fixed(CONSTS["a0"]),
    "M1": _fixed(CONSTS["na1"]),
    "M2": _fixed(0.0625 / CONSTS["sx"].astype(np.float64)),
    "Mr": _fixed(CONSTS["cr"]),
    "Mi": _fixed(CONSTS["ci"]),
    "Mu": _fixed(0.5 * 0.5),  # D · the input scale 0.5
    "s_u": np.float32(0.5),
    "M_1": np.int64(1),
}
INPUTS = {  # tensor → value (B = 1): x the float32 input, float64 reals, int64 codes
    "x": np.float32([[1.3, -0.7, 0.25, 100.0]]),
    "v": np.float64([[0.0, L3]]),
    "g2": np.float64([[2.0, -1.0, 0.0, L3]]),
    "w": np.float64([[0.0, 1.0, -1.0]]),
    "r": np.float64([[1.24, -0.75, 10.0]]),
    "sum": np.int64([[10, -3]]),
    "count": np.int64([[4]]),
    "k": np.int64([[-1, 0, 1]]),
    "k2": np.int64([[0, 1]]),
    "n": np.int64([[1, 2, 3]]),
    "new": np.int64([[5, 6]]),
    "buf": np.int64([[[1, 2, 3], [4, 5, 6]]]),
    "xr": np.int64([[96, 30]]),
    "xi": np.int64([[0, -25]]),
    "u0": np.int64([[0, 0]]),
    "sr": np.int64([[[1, 2, 3]]]),
    "si": np.int64([[[1, 0, -1]]]),
    "uy": np.int64([[8]]),
}
UPDATE = tuple(Term("mul", (i,), M) for i, M in (("xr", "M0"), ("xi", "M1"), ("u0", "M2")))
READOUT = (
    Term("dot", ("sr", "Mr"), "M_1"),
    Term("dot", ("si", "Mi"), "M_1"),
    Term("mul", ("uy",), "Mu"),
)
FLOATS = {k: v if k == "x" else v.astype(np.float64) for k, v in INPUTS.items()}  # ONNX, numba
FLOAT_KINDS = {"real", "sigmoid", "glu", "gelu", "layernorm"}
CASES = [  # (op, its output computed by hand)
    # rint(2.6, −1.4, 0.5, 200) = 3, −1, 0 (half to even, as QuantizeLinear), 200 → clipped to 7
    (ops.Quantize(out="c", src="x", scale="s", zp=0, lo=-8, hi=7), [[3, -1, 0, 7]]),
    # (3c + 2) >> 2: 11 >> 2 = 2, −1 >> 2 = −1 (round half up), 2 >> 2 = 0, 23 >> 2 = 5
    (ops.Affine(out="y", terms=(Term("mul", ("c",), "M"),), shift=2, lo=-8, hi=7), [[2, -1, 0, 5]]),
    # an exact accumulator: 3c + 4 (the constant broadcast over the batch)
    (
        ops.Affine(
            out="acc",
            terms=(Term("mul", ("c",), "M"), Term("const", ("b",), "M")),
            shift=0,
            lo=None,
            hi=None,
        ),
        [[21, 9, 12, 33]],
    ),
    (
        ops.Real(out="re", terms=(Term("mul", ("y",), "half"), Term("const", ("b",), "quarter"))),
        [[2.0, 0.5, 1.0, 3.5]],
    ),
    (ops.Sigmoid(out="sg", src="v"), [[0.5, 0.75]]),
    (ops.Glu(out="glu", src="g2"), [[1.0, -0.75]]),
    (ops.Gelu(out="ge", src="w"), [[0.0, 0.8413447460685429, -0.15865525393145707]]),
    # floor(v / 0.5 + 1/2): floor(2.98) = 2, floor(−1.0) = −1, floor(20.5) = 20 → clipped to 7
    (ops.Round(out="rd", src="r", scale="half", lo=-8, hi=7), [[2, -1, 7]]),
    # floor(10/4 + 1/2) = 3, floor(−3/4 + 1/2) = −1
    (ops.Mean(out="mean", src="sum", count="count", ratio="ratio", lo=-8, hi=7), [[3, -1]]),
    (ops.Lut(out="lut", src="k", table="table", offset=-1, channels=1), [[10, 20, 30]]),
    (ops.Lut(out="lut2", src="k2", table="table2", offset=0, channels=2), [[1, 4]]),
    # (3x − Σx) / sqrt(3·Σx² − (Σx)²) = (−3, 0, 3) / √6
    (
        ops.LayerNorm(out="ln", src="n", H=3, eps="zero", gamma="one", beta="none"),
        [[-3 / math.sqrt(6), 0.0, 3 / math.sqrt(6)]],
    ),
    (ops.Shift(out="sh", src="new", buffer="buf"), [[[5, 1, 2], [6, 4, 5]]]),
    (ops.Heaviside(out="hv", src="k"), [[0, 0, 1]]),
    (ops.Unsqueeze(out="us", src="new"), [[[5], [6]]]),
    # the exact sum rounds half up where fake-quant's float32 rounds half to even: 96·63/64 =
    # 94.5 → 95 (fake-quant 94); 27.49999907 → 27, which float32 makes 27.5 → 28 (fake-quant 28)
    (ops.Affine(out="x_exact", terms=UPDATE, shift=S, lo=-128, hi=127), [[95, 27]]),
    (
        ops.Float32Update(
            out="x_f32",
            terms=UPDATE,
            shift=S,
            lo=-128,
            hi=127,
            factors=("a0", "na1", "unit"),
            scales=("sx", "sx", "su"),
            out_scale="sx",
        ),
        [[94, 28]],
    ),
    # per mode C·x: 0.5 + 1, 0.5 + 0, 3 − 0.5; halving: (1.5 + 0.5) + 2.5 = 4.5; + D·u =
    # 0.5·(8·0.5) = 2 → 6.5 (output scale 1): half to even 6 (the exact sum, half up: 7)
    (ops.Affine(out="y_exact", terms=READOUT, shift=S, lo=-8, hi=7), [[7]]),
    (
        ops.Float32Readout(
            out="y_f32",
            terms=READOUT,
            shift=S,
            lo=-8,
            hi=7,
            factors=("cr", "ci", "D"),
            scales=("unit", "unit", "s_u"),
            out_scale="unit",
            modes=3,
        ),
        [[6]],
    ),
]


def _numpy() -> dict:
    env = dict(INPUTS)
    b = Numpy(env, CONSTS)
    for op, _ in CASES:
        env[op.out] = op.eval(b)
    return env


def _onnxruntime() -> dict:
    e = onnx_export.Emitter(CONSTS)
    for op, _ in CASES:
        e.op(op)
    info = helper.make_tensor_value_info
    inputs = [
        info(k, TensorProto.FLOAT if k == "x" else TensorProto.DOUBLE, v.shape)
        for k, v in INPUTS.items()
    ]
    outputs = [info(op.out, TensorProto.DOUBLE, np.shape(value)) for op, value in CASES]
    graph = helper.make_graph(e.nodes, "ops", inputs, outputs, list(e.inits.values()))
    model = onnx_export._model(graph)
    onnx.checker.check_model(model)
    sess = verify.session(model.SerializeToString())
    return dict(zip([op.out for op, _ in CASES], sess.run(None, FLOATS), strict=True))


def test_each_op_gives_the_hand_computed_value_in_all_three_backends():
    ref = _numpy()
    outs = [op.out for op, _ in CASES]
    fn, _ = compiled.compile_ops([op for op, _ in CASES], CONSTS, list(FLOATS), outs)
    fast = dict(zip(outs, fn(*FLOATS.values()), strict=True))
    onnx_out = _onnxruntime()
    for op, expected in CASES:
        got = ref[op.out]
        if op.kind in FLOAT_KINDS:
            assert np.allclose(got, expected, rtol=0, atol=2e-7), op.kind
        else:  # codes: exactly, as int64
            assert got.dtype == np.int64 and np.array_equal(got, expected), op.kind
        assert np.array_equal(onnx_out[op.out], got), f"onnxruntime: {op.kind}"
        assert np.array_equal(fast[op.out], got), f"numba: {op.kind}"


def test_every_op_kind_is_covered():
    assert {op.kind for op, _ in CASES} == set(ops.OPS)
