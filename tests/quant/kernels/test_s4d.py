"""The fused S4D kernel (one autograd node per sequence) against the plain Brevitas step loop:
identical forward values (so identical state codes) and equal gradients, clamping included."""

import pytest
import torch
from brevitas.graph.calibrate import calibration_mode

from qssm.models.s4d import S4D
from qssm.quant.wrap import wrap
from qssm.recipe import QuantConfig


def quantized(module, quant: dict, calib: torch.Tensor, *args):
    module, _ = wrap(module, QuantConfig.model_validate(quant))
    module.train()
    with calibration_mode(module), torch.no_grad():
        module(calib, *args)
    return module


def grads(module, run) -> tuple[torch.Tensor, dict]:
    module.zero_grad()
    y = run()
    (y * torch.linspace(-1, 1, y.numel()).reshape(y.shape)).sum().backward()
    return y.detach(), {
        n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None
    }


def assert_same(fast, loop):
    (y_fast, g_fast), (y_loop, g_loop) = fast, loop
    assert torch.equal(y_fast, y_loop)  # same ops on the same values: bit-identical
    assert g_fast.keys() == g_loop.keys() and any("qz" in k for k in g_fast)  # scales learn
    for name in g_fast:
        atol = 1e-5
        if "scaling_impl" in name:  # a scale's gradient sums every element of every step; the
            # loop does it in float32 with cancellation, the kernel in float64
            atol += 1e-3 * g_loop[name].abs().max().item()
        torch.testing.assert_close(g_fast[name], g_loop[name], rtol=1e-4, atol=atol, msg=name)


S4D_QUANT = [
    {"default": {"bits": 8, "granularity": "per_channel", "complex": "polar"}},
    {"parameterization": "discrete_cartesian", "default": {"bits": 4}},
    {"default": {"bits": 6}, "targets": [{"roles": ["ssm.state"], "granularity": "per_element"}]},
    {
        "fold_b": True,
        "default": {"bits": 6},
        "targets": [{"roles": ["ssm.state"], "granularity": "per_channel"}],
    },
]


@pytest.mark.parametrize("real", [False, True])
@pytest.mark.parametrize("quant", S4D_QUANT)
def test_s4d_scan_matches_step_loop(real, quant):
    if real and quant["default"].get("complex") == "polar":
        quant = {"default": {**quant["default"], "complex": "cartesian"}}
    torch.manual_seed(0)
    m = quantized(
        S4D(4, 8, real=real, dt_min=0.01, dt_max=0.3), quant, torch.randn(8, 40, 4), "recurrent"
    )
    u = 3 * torch.randn(3, 40, 4)  # wider than calibration: some state codes clamp

    def loop():
        A, B, C, D = m.quantized()
        return m.q("output", m.step_loop(u, A, B, C) + u * D)

    assert_same(grads(m, lambda: m(u, "recurrent")), grads(m, loop))


def test_kernel_sums_modes_in_the_readout_order():
    """The fused kernel's readout adds the modes in ``halving_sum``'s order: bit-identical for
    every length, odd ones included (float32 addition is not associative, so order matters)."""
    from qssm.models.s4d import halving_sum
    from qssm.quant.kernels.s4d import _halving_sum

    g = torch.Generator().manual_seed(0)
    differs = 0  # lengths where a left-to-right sum gives another float32: order is visible
    for n in range(1, 41):
        t = torch.randn(n, generator=g) * torch.logspace(-4, 4, n)
        assert halving_sum(t).item() == _halving_sum(t.numpy().reshape(n, 1).copy())[0]
        left = torch.zeros(())
        for v in t:
            left = left + v
        differs += left.item() != halving_sum(t).item()
    assert differs > 5
