"""onnxruntime runs the exported graphs bit-exactly like the integer reference."""

import numpy as np
import onnx
import pytest

from hwmap import onnx_export, verify
from hwmap.lower import lower
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
