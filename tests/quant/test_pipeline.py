"""Each model family through PTQ + QAT on a tiny slice of sdigits, saved, reloaded, re-evaluated."""

import json

import pytest
import torch

from qssm.runs import eval_run, load_data, load_run_model, open_run, quantize_run
from qssm.train import predict

MODELS = {
    "s4d": {"family": "s4d", "d_model": 8, "d_state": 8, "dt_min": 0.01, "dt_max": 0.5},
    "s4d_real": {"family": "s4d_real", "d_model": 8, "d_state": 8, "dt_min": 0.01, "dt_max": 0.5},
    "mingru_hw": {"family": "mingru_hw", "d_model": 8},
    "mgrade": {"family": "mgrade", "d_model": 8, "n_layers": 1, "max_delay": 8, "n_taps": 2},
}
QUANT = {
    "s4d": {  # B̄ folded into C; scales stored as float16, the state's as float8
        "fold_b": True,
        "default": {"bits": 4, "granularity": "per_channel", "complex": "polar"},
        "targets": [
            {"roles": ["ssm.A", "ssm.state"], "bits": 8, "scale_dtype": "float16"},
            {"roles": ["ssm.state"], "scale_dtype": "float8_e5m2"},
        ],
    },
    "s4d_real": {
        "parameterization": "discrete_cartesian",
        "default": {"bits": 6},
        "targets": [{"roles": ["ssm.state"], "granularity": "per_element"}],
    },
    "mingru_hw": {
        "default": {"bits": 2, "observer": "mse"},
        "targets": [
            {"roles": ["gru.bz", "gru.bh", "gru.gate"], "bits": 6},
            {"roles": ["gru.state"], "enabled": False},
        ],
    },
    "mgrade": {"default": {"bits": 8}},
}


@pytest.mark.parametrize("family", sorted(MODELS))
def test_quantize_save_reload_same_predictions(family, tmp_path, tiny_recipe):
    r = tiny_recipe(family, MODELS[family], QUANT[family], distill=0.5)  # from the float model
    out = open_run(tmp_path / "run", r, force=False)
    metrics = quantize_run(r, load_data(r), out, progress=False)
    for key in ("float", "ptq", "qat", "footprint"):
        assert key in metrics
    assert 0 <= metrics["qat"]["accuracy"] <= 1
    fp = metrics["footprint"]
    assert fp["reduction"] > 1
    assert (out / "report.md").read_text().count("footprint.png") == 1

    again = eval_run(out)
    assert again["accuracy"] == metrics["qat"]["accuracy"]
    model, _ = load_run_model(out)
    x = load_data(r).test
    first, _ = predict(model, x, 32, "recurrent")
    second, _ = predict(load_run_model(out)[0], x, 32, "recurrent")
    assert torch.equal(first, second)


def test_runs_saved_when_per_channel_meant_per_element_still_load(tmp_path, tiny_recipe):
    """Before quant format 2, ssm.state `per_channel` meant one scale per state element."""
    quant = {"default": {"bits": 6, "granularity": "per_channel"}}
    quant["targets"] = [{"roles": ["ssm.state"], "granularity": "per_element"}]
    r = tiny_recipe("s4d", MODELS["s4d"], quant)
    out = open_run(tmp_path / "run", r, force=False)
    quantize_run(r, load_data(r), out, progress=False)
    x = load_data(r).test
    expected, _ = predict(load_run_model(out)[0], x, 32, "recurrent")
    header = json.loads((out / "model.json").read_text())
    del header["quant_format"]  # as an old run: the state's per-element scales said per_channel
    header["quant"]["targets"] = []
    header["sites"]["blocks.0.ssm:state"]["granularity"] = "per_channel"
    (out / "model.json").write_text(json.dumps(header))
    model, _ = load_run_model(out)
    assert model.blocks[0].ssm._quantizer("state").spec.granularity == "per_element"
    assert torch.equal(predict(model, x, 32, "recurrent")[0], expected)
