"""PTQ calibration: scales from the data, then frozen where the recipe says static."""

import pytest

from qssm.models.backbone import Classifier
from qssm.quant.calibrate import calibrate
from qssm.quant.wrap import quantizers, wrap
from qssm.runs import load_data

S4D = {"family": "s4d", "d_model": 4, "d_state": 4, "n_layers": 1, "pool": "mean"}


@pytest.mark.parametrize("scale", ["static", "learned"])
def test_static_scales_are_frozen_polar_parts_included(tiny_recipe, scale):
    quant = {"default": {"bits": 8, "complex": "polar", "scale": scale}}
    recipe = tiny_recipe("s4d", S4D, quant)
    model, _ = wrap(Classifier(recipe.model_dict(), 1, 10), recipe.quant)
    calibrate(model, load_data(recipe).train, recipe.ptq, seed=0, progress=False)
    qs = quantizers(model)
    assert any(len(q.parts) == 2 for q in qs.values())  # Ā, C polar: magnitude and phase
    trainable = {p.requires_grad for q in qs.values() for p in q.parameters()}
    assert trainable == {scale == "learned"}
