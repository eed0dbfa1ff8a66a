"""wrap: the float model's layers swapped for quantized ones, quantizers on the chosen sites,
and runs saved by earlier versions still loading."""

from pathlib import Path

import pytest
import torch

from qssm.io import load_tensors
from qssm.models.backbone import Classifier
from qssm.quant.layers import QuantLinear
from qssm.quant.mingru import QuantMinGRU
from qssm.quant.quantizers import SiteQuantizer
from qssm.quant.s4d import QuantS4D
from qssm.quant.wrap import quantizers, wrap
from qssm.recipe import QuantConfig
from qssm.runs import load_run_model

OLD_RUNS = Path(__file__).parent / "data" / "runs_e6a4da4"
MODELS = {
    "s4d": dict(family="s4d", d_state=8, init="lin", dt_min=1e-2, dt_max=1e-1),
    "mingru": dict(family="mingru", mlp_ratio=2),
    "mingru_hw": dict(family="mingru_hw", mlp_ratio=2),
    "mgrade": dict(family="mgrade", max_delay=6, n_taps=2, sigma=0.5, mlp_ratio=2),
}


def classifier(family: str) -> Classifier:
    torch.manual_seed(0)
    return Classifier(dict(d_model=4, n_layers=2, pool="mean", **MODELS[family]), 2, 3)


def test_layers_are_swapped_and_keep_the_float_parameters():
    model = classifier("s4d")
    C, weight = model.blocks[0].ssm.C, model.encoder.weight
    quant, table = wrap(model, QuantConfig.model_validate({"default": {"bits": 8}}))
    assert quant is model and isinstance(model.encoder, QuantLinear)
    assert isinstance(model.blocks[1].ssm, QuantS4D) and model.blocks[0].ssm.C is C
    assert model.encoder.weight is weight
    assert isinstance(model.blocks[0].taps.gelu, SiteQuantizer)  # an activation tap
    assert set(quantizers(model)) == set(table)
    assert table["blocks.0:gelu"]["role"] == "act.output"


def test_a_single_layer_is_returned_quantized():
    gru, table = wrap(classifier("mingru").blocks[0].gru, QuantConfig.model_validate({}))
    assert isinstance(gru, QuantMinGRU) and set(table) >= {":gate", "Wz:weight"}


@pytest.mark.parametrize("family", sorted(MODELS))
def test_nothing_quantized_computes_the_float_model(family):
    """With every site disabled the quantized model is the float model, bit for bit."""
    model = classifier(family)
    x = torch.randn(3, 12, 2)
    with torch.no_grad():
        expected = model(x, "recurrent")
        off = QuantConfig.model_validate({"default": {"enabled": False}})
        quant, table = wrap(model, off)
        assert table == {} and torch.equal(quant(x, "recurrent"), expected)


@pytest.mark.parametrize("run", sorted(p.name for p in OLD_RUNS.iterdir()))
def test_runs_saved_by_earlier_versions_load(run):
    """Written by qssm at commit e6a4da4 (activation quantizers under ``qz``; a discrete S4D
    with its unused continuous parameters): the same logits today."""
    model, _ = load_run_model(OLD_RUNS / run)
    saved = load_tensors(OLD_RUNS / run / "expected.safetensors")
    with torch.no_grad():
        assert torch.equal(model(saved["x"], "recurrent"), saved["logits"])
