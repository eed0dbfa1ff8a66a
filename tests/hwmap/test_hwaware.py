"""Hardware-aware QAT and `qssm map-to-hw`."""

import json

import pytest

from qssm.cli import HARDWARE, main
from qssm.recipe import RecipeError, parse_recipe
from qssm.runs import check_quant, load_data, open_run, quantize_run


def hw_recipe(recipe_of, family="mingru_hw"):
    r = recipe_of(family).model_dump(mode="json")
    r["qat"]["hardware"] = {"target": "minimalist_like", "unit_ff": 0.5}
    return parse_recipe(r)


def test_hardware_aware_qat_injects_the_mapped_noise_while_training(recipe_of, tmp_path):
    r = hw_recipe(recipe_of)
    check_quant(r, hardware=HARDWARE)
    out = open_run(tmp_path / "run", r, force=False)
    metrics = quantize_run(r, load_data(r), out, progress=False, hardware=HARDWARE)
    noise = metrics["hardware_noise"]
    assert noise["target"] == "minimalist_like" and noise["unit_ff"] == 0.5
    assert len(noise["layers"]) == 2
    assert all(v > 0 for layer in noise["layers"] for v in layer.values())
    assert {"gate_static", "cand_static", "out_static"} <= set(noise["layers"][0])
    assert "qat" in metrics


def test_hardware_aware_qat_needs_the_hardware_minigru(recipe_of):
    with pytest.raises(RecipeError, match="mingru_hw"):
        check_quant(hw_recipe(recipe_of, "s4d_real"), hardware=HARDWARE)
    r = recipe_of("mingru_hw").model_dump(mode="json")
    r["qat"]["hardware"] = {"target": "no_such_chip"}
    with pytest.raises(RecipeError, match="qat.hardware.target"):
        check_quant(parse_recipe(r), hardware=HARDWARE)


def test_map_to_hw_command(tiny_run, tmp_path, capsys):
    run = tiny_run("s4d_real_hw")
    out = tmp_path / "hw"
    args = ["--json", "map-to-hw", str(run), "--target", "generic_28nm", "--out", str(out)]
    args += "--limit 6 --mc-seeds 2 --mc-limit 4 --mc-units 0.5 4 --mc-offsets 1".split()
    args += "--mc-noises --no-mc-ablation --quiet".split()
    assert main(args) == 0
    files = "mapping.json arrays.npz step.onnx sequence.onnx verify.json report.md monte_carlo.png"
    for name in files.split():
        assert (out / name).exists(), name
    verify = json.loads((out / "verify.json").read_text())
    assert verify["sim_ideal_vs_intref"]["decision_agreement"] >= 0.99999
    mc = verify["monte_carlo"]
    assert [r["id"] for r in mc] == ["nominal", "unit_ff=0.5", "unit_ff=4", "offset_mv=1"]
    assert [r["unit_ff"] for r in mc] == [1.0, 0.5, 4.0, 1.0]
    assert all(len(r["accuracies"]) == 2 and r["sequences"] == 4 for r in mc)
    assert (out / "monte_carlo" / "nominal.json").exists()  # per setting: a rerun resumes
    mapping = json.loads((out / "mapping.json").read_text())
    assert mapping["totals"]["capacitance_pf"] > 0
    assert "Monte-Carlo" in (out / "report.md").read_text()

    refused = tmp_path / "refused"  # a complex S4D run: refused, nothing written
    args = ["map-to-hw", str(tiny_run("s4d")), "--target", "generic_28nm", "--out", str(refused)]
    assert main(args) == 2
    assert "s4d_real" in capsys.readouterr().err
    assert not (tmp_path / "refused").exists()
    assert main(["map-to-hw", str(run), "--target", "nowhere.yaml"]) == 2


def test_a_virtual_chip_per_sequence_holds_its_static_errors(tiny_run):
    """Static errors (mismatch, offsets) are one draw per sequence held over every step; the
    dynamic ones change every step."""
    import torch

    from qssm.quant.mingru import QuantMinGRU
    from qssm.runs import load_run_model

    model = load_run_model(tiny_run("mingru_hw"))[0]
    gru = next(m for m in model.modules() if isinstance(m, QuantMinGRU))
    gru.train()
    x = torch.zeros(4, 6, gru.Wz.out_features)
    gru.noise = {"gate": 0.0, "gate_static": 1.0}
    static = gru._noisy(x, "gate")
    assert torch.all(static == static[:, :1]) and not torch.all(static[0] == static[1])
    gru.noise = {"gate": 1.0}
    dynamic = gru._noisy(x, "gate")
    assert not torch.all(dynamic == dynamic[:, :1])
    gru.eval()
    assert torch.equal(gru._noisy(x, "gate"), x)  # inference: the chip itself, no noise
