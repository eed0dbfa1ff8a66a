"""Verification is a gate: an export whose checks miss their thresholds raises VerifyError naming
the check and its figure, and keeps the earlier good results."""

import dataclasses
import json

import pytest

from hwmap import export, onnx_export, verify
from hwmap.export import export_run
from hwmap.lower import lower
from hwmap.verify import VerifyError


def test_gate_holds_each_figure_to_its_threshold():
    result = {
        "fakequant_vs_intref": {
            "prediction_agreement": 0.995,
            "max_code_diff": 1,
            "unmatched_sites": 0,
        },
        "onnx_vs_intref": {"code_agreement": 1.0, "logits_identical": True},
    }
    verify.gate(result)
    assert not result["passed"]
    assert [k for k, c in result["checks"].items() if not c["passed"]] == [
        "fakequant_vs_intref.prediction_agreement"
    ]
    assert verify.failure(result) == (
        "verification failed: fakequant_vs_intref.prediction_agreement = 0.995 (needs ≥ 0.999)"
    )
    result["fakequant_vs_intref"].update(prediction_agreement=0.999, max_code_diff=2)
    verify.gate(result)
    assert "max_code_diff = 2 (needs ≤ 1)" in verify.failure(result)
    result["fakequant_vs_intref"].update(max_code_diff=0, unmatched_sites=1)  # a site unseen
    verify.gate(result)
    assert verify.failure(result).endswith("unmatched_sites = 1 (needs ≤ 0)")


def _broken_lowering(model):
    """The encoder requantized with one shift too few: codes twice too large."""
    graph = lower(model)
    graph.step = [
        dataclasses.replace(op, shift=op.shift - 1) if op.out == "encoder" else op
        for op in graph.step
    ]
    return graph


def test_a_broken_lowering_fails_export_and_keeps_the_good_results(tiny_run, tmp_path, monkeypatch):
    run, out = tiny_run("s4d_real"), tmp_path / "hw"
    good = export_run(run, out, limit=8, progress=False)
    assert good["passed"] and all(c["passed"] for c in good["checks"].values())
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    monkeypatch.setattr(export, "lower", _broken_lowering)
    with pytest.raises(VerifyError, match="fakequant_vs_intref.max_code_diff = "):
        export_run(run, out, limit=8, progress=False)
    failed = json.loads((out / "verify.failed.json").read_text())
    assert failed["passed"] is False
    assert failed["checks"]["onnx_vs_intref.code_agreement"]["passed"]  # the same broken graph
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name in before} == before
    assert sorted(p.name for p in out.iterdir()) == sorted([*before, "verify.failed.json"])

    with pytest.raises(VerifyError):  # --keep-failed: the failing files, for debugging
        export_run(run, out, limit=8, progress=False, keep_failed=True)
    assert json.loads((out / "verify.json").read_text())["passed"] is False
    assert (out / "graph.json").read_bytes() != before["graph.json"]


def test_an_onnx_emission_that_differs_from_intref_fails_export(tiny_run, tmp_path, monkeypatch):
    nodes = {**onnx_export.NODES, "floor": onnx_export._node("Round")}  # half to even
    monkeypatch.setattr(onnx_export, "NODES", nodes)
    with pytest.raises(
        VerifyError, match=r"onnx_vs_intref.code_agreement = 0\.\d+ \(needs ≥ 1.0\)"
    ):
        export_run(tiny_run("s4d_real"), tmp_path / "hw", limit=8, progress=False)
    assert not (tmp_path / "hw" / "graph.json").exists()


def test_qssm_export_exits_1_naming_the_failed_check(tiny_run, tmp_path, monkeypatch, capsys):
    from qssm.cli import main

    run, out = tiny_run("s4d_real"), tmp_path / "hw"
    monkeypatch.setattr(export, "lower", _broken_lowering)
    assert main(["export", str(run), "--out", str(out), "--limit", "8", "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("qssm: error: verification failed: fakequant_vs_intref.")
    assert "fakequant_vs_intref.max_code_diff = " in err
    assert f"--keep-failed keeps its files; see {out}/verify.failed.json" in err
    assert len(err.splitlines()) == 1 and not (out / "verify.json").exists()


def test_a_new_export_replaces_every_file_of_the_earlier_one(tiny_run, tmp_path):
    run, out = tiny_run("s4d_real"), tmp_path / "hw"
    export_run(run, out, limit=8, progress=False)
    assert (out / "step.onnx").exists() and (out / "sequence.onnx").exists()
    export_run(run, out, fmt="qonnx", limit=8, progress=False)
    names = {p.name for p in out.iterdir()}
    assert {"step_qonnx.onnx", "verify.json"} <= names
    assert not names & {"step.onnx", "sequence.onnx"}  # they described the earlier export
