import subprocess
import sys

import pytest
import torch

from qssm.models.backbone import Classifier

CONFIGS = {
    "s4d": dict(d_state=64, init="lin", dt_min=1e-3, dt_max=1e-1),
    "s4d_real": dict(d_state=8, init="lin", dt_min=1e-3, dt_max=1e-1),
    "mingru": dict(mlp_ratio=2),
    "mingru_hw": dict(mlp_ratio=2),
    "mgrade": dict(max_delay=8, n_taps=2, sigma=0.5, mlp_ratio=2),
    "mgrade_hw": dict(max_delay=8, n_taps=2, sigma=0.5, mlp_ratio=2),
}


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_shapes_and_modes_agree(family):
    torch.manual_seed(0)
    cfg = dict(family=family, d_model=16, n_layers=2, pool="mean", **CONFIGS[family])
    model = Classifier(cfg, d_input=1, n_classes=10).double().eval()
    x = torch.randn(3, 40, 1, dtype=torch.float64)
    out = model(x, "parallel")
    assert out.shape == (3, 10)
    torch.testing.assert_close(out, model(x, "recurrent"), rtol=1e-7, atol=1e-7)


def test_published_small_s4d_has_3850_parameters():
    cfg = dict(family="s4d", d_model=16, n_layers=1, pool="mean", **CONFIGS["s4d"])
    assert sum(p.numel() for p in Classifier(cfg, 1, 10).parameters()) == 3850


def test_last_step_pooling_ignores_nothing_before_the_end():
    torch.manual_seed(1)
    cfg = dict(family="mingru", d_model=8, n_layers=1, pool="last", mlp_ratio=2)
    model = Classifier(cfg, 1, 3).double()
    x = torch.randn(1, 10, 1, dtype=torch.float64)
    y = x.clone()
    y[:, 0] += 5  # an early change still reaches the last step through the state
    assert not torch.allclose(model(x), model(y))


def test_float_model_imports_no_quantization():
    """qssm.models is float only: importing every family loads nothing of qssm.quant."""
    code = "import sys, qssm.models.backbone; print([m for m in sys.modules if 'quant' in m])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "qssm.quant" not in out.stdout and "brevitas" not in out.stdout
