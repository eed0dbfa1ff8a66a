"""The quantized layers built from their float layers: the same outputs before any site is
quantized, their own parameterizations, and what hardware-aware training sets on them."""

import numpy as np
import pytest
import torch
from brevitas.graph.calibrate import calibration_mode

from qssm.models.mingru import MinGRU
from qssm.models.s4d import S4D
from qssm.models.tags import tag
from qssm.quant.layers import QuantLinear
from qssm.quant.mingru import QuantMinGRU
from qssm.quant.s4d import QuantS4D
from qssm.quant.wrap import wrap
from qssm.recipe import QuantConfig


def config(**quant) -> QuantConfig:
    return QuantConfig.model_validate(quant)


PARAMETERIZATIONS = [
    (real, p, fold)
    for real in (False, True)
    for p in ("continuous", "discrete_cartesian", "discrete_polar")
    for fold in (False, True)
    if not (real and p == "discrete_polar")  # a polar Ā is for complex S4D
]


@pytest.mark.parametrize("real, parameterization, fold_b", PARAMETERIZATIONS)
def test_parameterizations_start_from_the_float_discretization(real, parameterization, fold_b):
    torch.manual_seed(3)
    ssm = S4D(d_model=3, d_state=8, real=real).double()
    u = torch.randn(2, 30, 3, dtype=torch.float64)
    with torch.no_grad():
        expected = ssm(u, "recurrent")
        q = QuantS4D(ssm, config(parameterization=parameterization, fold_b=fold_b))
        torch.testing.assert_close(q(u), expected, rtol=1e-12, atol=1e-12)
    names = {n for n, _ in q.named_parameters()}
    continuous = {"log_dt", "log_A_real"} | (set() if real else {"A_imag"})
    assert (continuous <= names) == (parameterization == "continuous")
    assert not names & {"B", "B_bar"} if fold_b else names & {"B", "B_bar"}
    if fold_b:  # the input enters the state unweighted; nothing of B̄ is a site
        assert (q.discretize()[1] == 1).all()
        assert "ssm.B" not in {s.role for s in q.sites().values()}


def test_discrete_polar_needs_complex_s4d():
    with pytest.raises(ValueError, match="discrete_polar needs complex S4D"):
        QuantS4D(S4D(2, 4, real=True), config(parameterization="discrete_polar"))


def test_quantized_recurrences_refuse_parallel_mode():
    for layer in (QuantS4D(S4D(2, 4), config()), QuantMinGRU(MinGRU(2, 3))):
        with pytest.raises(ValueError, match="runs in recurrent mode"):
            layer(torch.randn(1, 5, 2), "parallel")


def test_linear_roles_come_from_the_float_tags():
    tagged = QuantLinear(tag(torch.nn.Linear(2, 3), weight="gru.Wz", bias="gru.bz"))
    plain = QuantLinear(torch.nn.Linear(2, 3))
    assert [s.role for s in tagged.sites().values()] == ["gru.Wz", "gru.bz"]
    assert [s.role for s in plain.sites().values()] == ["linear.weight", "linear.bias"]


def test_hardware_gate_never_exceeds_one():
    """A gate scale s > 1/63 would round the clamped 1 to ⌊1/s + ½⌋·s > 1; the bank of a
    switched-capacitor core cannot share more than all of its charge."""
    torch.manual_seed(0)
    quant = {"default": {"bits": 6}, "targets": [{"roles": ["gru.gate"], "observer": "minmax"}]}
    gru, _ = wrap(MinGRU(3, 4, hardware=True), config(**quant))
    x = 10 * torch.randn(4, 20, 3)  # saturates the hard sigmoid
    gru.train()
    with calibration_mode(gru), torch.no_grad():
        gru(x, "recurrent")
    gru.eval()
    quantizer = gru.qz["gate"]
    with torch.no_grad():
        for p in quantizer.parameters():
            p.mul_(1.04)  # as QAT may move a learned scale
        s = quantizer.qparams()[0]
        assert torch.round(1 / s) * s > 1  # plain rounding would overshoot
        z = gru._at_most_one(gru.q("gate", gru.gate(gru.Wz(x))))
    assert z.max() <= 1 and torch.isclose(z.max(), torch.floor(1 / s) * s)


def test_noise_takes_numpy_floats_and_tensors_and_acts_only_in_training():
    torch.manual_seed(5)
    gru = QuantMinGRU(MinGRU(3, 4, hardware=True))
    x = torch.randn(2, 10, 3)
    quiet = gru(x)
    gru.noise = {"gate": np.full(4, 0.0), "cand": 0.0, "out": torch.tensor(0.0)}
    assert all(v.dtype == torch.float32 for v in gru.noise.values())
    gru.train()
    assert torch.equal(gru(x), quiet)  # σ = 0: the same outputs
    gru.noise = {"gate": np.full(4, 50.0), "cand": 50.0, "out": torch.tensor(50.0)}
    assert not torch.equal(gru(x), quiet)
    gru.eval()
    assert torch.equal(gru(x), quiet)
    gru.noise = None
    gru.train()
    assert torch.equal(gru(x), quiet)
