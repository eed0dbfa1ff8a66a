"""Hardware-aware QAT through the hooks the CLI passes in (here stand-ins, not hwmap)."""

import contextlib

import numpy as np
import pytest
import torch

from qssm.recipe import RecipeError, parse_recipe
from qssm.runs import Hardware, check_quant, load_data, open_run, quantize_run


def hardware_recipe(tiny_recipe, family="mingru_hw"):
    r = tiny_recipe(family, {"family": family, "d_model": 4}, {"default": {"bits": 4}})
    r = r.model_dump(mode="json")
    r["qat"]["hardware"] = {"target": "some_chip"}
    return parse_recipe(r)


def test_the_target_is_checked_by_the_hook(tiny_recipe):
    r = hardware_recipe(tiny_recipe)
    with pytest.raises(RecipeError, match="qat.hardware needs a hardware package"):
        check_quant(r)
    seen = []
    check_quant(r, hardware=Hardware(check=seen.append, noise=None))
    assert seen == [r.qat.hardware]

    def unknown(cfg):
        raise ValueError(f"no target {cfg.target!r}")

    with pytest.raises(RecipeError, match="qat.hardware.target: no target 'some_chip'"):
        check_quant(r, hardware=Hardware(check=unknown, noise=None))
    with pytest.raises(RecipeError, match="mingru_hw"):
        check_quant(hardware_recipe(tiny_recipe, "mingru"), hardware=Hardware(seen.append, None))


def test_qat_trains_inside_the_noise_hook(tiny_recipe, tmp_path):
    r = hardware_recipe(tiny_recipe)
    calls = []

    @contextlib.contextmanager
    def noise(model, cfg, x):
        gru = model.blocks[0].gru
        gru.noise = {"gate": np.full(4, 0.1), "cand": 0.1, "out": 0.1}  # numpy and floats
        calls.append((cfg.target, type(x), gru.noise["gate"].dtype))
        yield {"target": cfg.target}
        gru.noise = None

    out = open_run(tmp_path / "run", r, force=False)
    metrics = quantize_run(r, load_data(r), out, progress=False, hardware=Hardware(None, noise))
    assert calls == [("some_chip", np.ndarray, torch.float32)]
    assert metrics["hardware_noise"] == {"target": "some_chip"} and "qat" in metrics
