"""onnxruntime runs the exported graphs bit-exactly like the integer reference."""

import importlib.util

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from hwmap import intref, onnx_export, standard, verify
from hwmap.graph import Format, Graph
from hwmap.lower import fakequant, lower
from hwmap.ops import Affine, Quantize, Real, Term
from qssm.runs import load_data, load_run_model

FAMILIES = ["s4d", "s4d_real", "mingru_hw", "mingru", "mgrade", "mgrade_hw"]


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory):
    def make(family):
        graph = lower(load_run_model(tiny_run(family))[0])
        out = tmp_path_factory.mktemp(f"onnx_{family}")
        onnx_export.save_onnx(onnx_export.step_model(graph), out / "step.onnx")
        onnx_export.save_onnx(onnx_export.sequence_model(graph), out / "sequence.onnx")
        return graph, out

    return make


@pytest.mark.parametrize("family", FAMILIES)
def test_onnxruntime_matches_intref_and_step_matches_sequence(family, exported, recipe_of):
    graph, out = exported(family)
    x = load_data(recipe_of(family)).test.x.numpy()
    r = verify.onnx_vs_intref(graph, out / "sequence.onnx", x)
    assert r["code_agreement"] == 1.0 and r["logits_identical"]
    s = verify.step_vs_sequence(graph, out / "step.onnx", out / "sequence.onnx", x[:8])
    assert s["code_agreement"] == 1.0 and s["logits_identical"]


def test_hand_graph_in_onnxruntime(hand_graph, tmp_path):
    graph = hand_graph
    onnx_export.save_onnx(onnx_export.step_model(graph), tmp_path / "step.onnx")
    x = np.array([[1.3, -0.7, 0.25], [100, -100, 0]], dtype=np.float32)
    out = verify.session(tmp_path / "step.onnx").run(["logits"], {"x": x})
    assert out[0].tolist() == [[2, -1, 0], [5, -6, 0]]


def test_sequence_graph_is_a_scan_and_takes_any_length(exported, recipe_of):
    graph, out = exported("s4d")
    model = onnx.load(out / "sequence.onnx")
    assert [n.op_type for n in model.graph.node].count("Scan") == 1
    assert len(model.graph.node) < 100  # the step body is not unrolled
    types = {n.op_type for n in onnx.load(out / "step.onnx").graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= types
    x = load_data(recipe_of("s4d")).test.x.numpy()[:4]
    for length in (5, 64):
        r = verify.onnx_vs_intref(graph, out / "sequence.onnx", x[:, :length])
        assert r["code_agreement"] == 1.0


def test_qonnx_step_graph_has_quant_nodes(exported):
    graph, _ = exported("mingru_hw")
    model = onnx_export.step_model(graph, qonnx=True)
    ops = {(n.domain, n.op_type) for n in model.graph.node}
    assert (onnx_export.QONNX_DOMAIN, "Quant") in ops
    assert not any(op in ("QuantizeLinear", "DequantizeLinear") for _, op in ops)


def test_export_writes_deployable_graphs_with_provenance(tiny_run, tmp_path):
    import json

    from hwmap.export import export_run

    result = export_run(tiny_run("s4d"), tmp_path / "hw", limit=8, progress=False)
    assert result["deployed_vs_intref"] == {"logits_identical": True, "sequences": 8}
    assert result["checks"]["deployed_vs_intref.logits_identical"]["passed"]
    for name in ("step_deploy.onnx", "sequence_deploy.onnx", "step.onnx", "sequence.onnx"):
        model = onnx.load(tmp_path / "hw" / name)
        outputs = [o.name for o in model.graph.output]
        verification = name in ("step.onnx", "sequence.onnx")
        assert any(o.startswith("code") for o in outputs) == verification, name
        assert "logits" in outputs
        props = {p.key: p.value for p in model.metadata_props}
        assert props["qssm_version"] == "0.1.0" and props["initial_state"].startswith("zeros")
        pre = json.loads(props["preprocessing"])
        assert pre["divide"] == 16 and pre["std"] > 0  # sdigits: pixels/16, standardized
        assert json.loads(props["trained_with"])["threads"] >= 1
        assert model.doc_string.startswith("qssm ") and "raw / divide - mean" in model.doc_string
    deploy = onnx.load(tmp_path / "hw" / "step_deploy.onnx").graph
    assert len(deploy.node) < len(onnx.load(tmp_path / "hw" / "step.onnx").graph.node)


# ---- standard-form graphs (hwmap.standard): real scales, float32, not bit-exact

needs_qonnx = pytest.mark.skipif(
    importlib.util.find_spec("qonnx") is None,
    reason="qonnx is not installed (a dev dependency: pip install -e .[dev])",
)


def _standard_hand_graph():
    """x → codes at scale 0.5 (4 bits) → × 3/4 (M = 3, shift 2) at scale 0.25 → logits = codes."""
    step = [
        Quantize(out="c", src="x", scale="s", zp=0, lo=-8, hi=7),
        Affine(out="y", terms=(Term("mul", ("c",), "M"),), shift=2, lo=-8, hi=7, site="y"),
    ]
    head = [Real(out="logits", terms=(Term("mul", ("y",), "one"),))]
    consts = {"s": np.float32(0.5), "M": np.int64(3), "one": np.float64(1.0)}
    formats = {"c": Format(np.float64(0.5), 0, -8, 7), "y": Format(np.float64(0.25), 0, -8, 7)}
    return Graph("hand", 3, 3, "y", [], step, head, consts, formats)


def _runner(model, form, batch):
    if form == "qdq":
        return standard.onnxruntime_run(model)
    return standard.qonnx_run(model, batch)


@pytest.mark.parametrize("form", ["qdq", pytest.param("qonnx", marks=needs_qonnx)])
def test_standard_form_hand_graph(form):
    # c = rint(x / 0.5) = [3, -1, 0], [7, -8, 0] (0.5 / 0.5 ties to even); y = c · 3/4 rounded
    # at scale 0.25 as the real value c · 0.5 · 3/4 on a 0.25 grid: [2, -1, 0], [5, -6, 0]
    graph = _standard_hand_graph()
    model = standard.step_model(graph, form)
    x = np.array([[1.3, -0.7, 0.25], [100, -100, 0]], dtype=np.float32)
    out = _runner(model, form, 2)({"x": x})
    assert out["logits"].tolist() == [[2, -1, 0], [5, -6, 0]]
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    assert inits["c.scale"] == 0.5 and inits["y.scale"] == 0.25  # the real scales, not 1


def test_standard_form_refuses_an_unknown_form(hand_graph):
    with pytest.raises(ValueError, match="form 'qcdq'"):
        standard.step_model(hand_graph, "qcdq")


@pytest.mark.parametrize("family", FAMILIES)
def test_standard_qdq_in_onnxruntime_agrees_with_intref(family, exported, recipe_of):
    graph, _ = exported(family)
    model = standard.step_model(graph, "qdq")
    onnx.checker.check_model(model, full_check=True)
    types = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= types
    x = load_data(recipe_of(family)).test.x.numpy()[:64]
    ref = intref.run(graph, x)[0]
    r = standard.agreement(standard.stream(_runner(model, "qdq", len(x)), graph, x), ref)
    assert r["prediction_agreement"] >= 0.95, r
    assert r["max_logit_diff"] <= 0.1 * np.abs(ref).max(), r


@needs_qonnx
@pytest.mark.parametrize("family", ["s4d", pytest.param("mingru_hw", marks=pytest.mark.slow)])
def test_standard_qonnx_in_qonnx_executor_matches_fakequant(family, tiny_run, recipe_of):
    model_t = load_run_model(tiny_run(family))[0]
    graph = lower(model_t)
    model = standard.step_model(graph, "qonnx")
    quant = [n for n in model.graph.node if n.op_type == "Quant"]
    assert quant and all(n.domain == onnx_export.QONNX_DOMAIN for n in quant)
    x = load_data(recipe_of(family)).test.x.numpy()[:8]
    fq = fakequant(model_t, x)[0]
    logits = standard.stream(standard.qonnx_run(model, len(x)), graph, x)
    assert np.abs(logits - fq).max() <= 1e-3 * np.abs(fq).max()
    # the encoder's weights: Brevitas's quantized values, through a Quant node at their scale
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    with torch.no_grad():
        w = model_t.encoder.q("weight", model_t.encoder.weight).numpy().T
    assert np.allclose(inits["encoder.W.real"], w, rtol=1e-5, atol=0)
    scale = model_t.encoder._quantizer("weight").qparams()[0].detach().numpy().ravel()
    assert np.allclose(inits["encoder.W.scale"][0], scale, rtol=1e-5)


@needs_qonnx
def test_export_measures_the_standard_form_graphs_without_gating(tiny_run, tmp_path):
    from hwmap.export import export_run

    result = export_run(tiny_run("s4d"), tmp_path / "hw", fmt="qonnx", limit=4, progress=False)
    std = result["standard_form"]
    assert std["gating"] is False and not any(k.startswith("standard") for k in result["checks"])
    assert std["qonnx"]["executor"].startswith("qonnx ") and std["qonnx"]["sequences"] == 4
    assert std["qonnx"]["vs_fakequant"]["max_logit_diff"] < 1e-2
    assert std["qdq"]["vs_intref"]["prediction_agreement"] == 1.0
    for name in ("step_standard_qdq.onnx", "step_standard_qonnx.onnx"):
        assert onnx.load(tmp_path / "hw" / name).doc_string.startswith(
            "qssm step graph in standard"
        )
