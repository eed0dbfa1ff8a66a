"""The minGRU kernel (one autograd node per sequence) against the plain Brevitas step loop:
identical forward values and equal gradients, per-channel and per-tensor state scales."""

import pytest
import torch

from qssm.models.mingru import MinGRU

from .test_s4d import assert_same, grads, quantized


@pytest.mark.parametrize("hardware", [False, True])
@pytest.mark.parametrize("state", [{"bits": 8, "granularity": "per_channel"}, {"bits": 4}])
def test_gate_scan_matches_step_loop(hardware, state):
    torch.manual_seed(0)
    quant = {"default": {"bits": 6}, "targets": [{"roles": ["gru.state"], **state}]}
    m = quantized(MinGRU(3, 5, hardware=hardware), quant, torch.randn(8, 30, 3), "recurrent")
    x = 2 * torch.randn(4, 30, 3)

    def loop():
        z = m.q("gate", m.gate(m.Wz(x)))
        z = m._at_most_one(z) if hardware else z
        return m.output(m.step_loop(1 - z, z * m.q("cand", m.Wh(x))))

    assert_same(grads(m, lambda: m(x, "recurrent")), grads(m, loop))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("per_channel", [False, True])
def test_quant_gate_scan_matches_fake_quant_loop(dtype, per_channel):
    """QuantGateScan against the step loop of fake_quant itself, in float32 and float64: the
    states bit for bit, gradients of gate, candidate and scale equal; codes clamp at both ends
    (scale too small for the states) and the zero point is not zero."""
    from qssm.models.mingru import gate_scan
    from qssm.quant.kernels.mingru import QuantGateScan
    from qssm.quant.quantizers import fake_quant

    g = torch.Generator().manual_seed(8)
    z = torch.rand(3, 40, 5, generator=g, dtype=dtype).requires_grad_()
    cand = (3 * torch.randn(3, 40, 5, generator=g, dtype=dtype)).requires_grad_()
    shape = (1, 5) if per_channel else ()
    scale = torch.full(shape, 0.05, dtype=torch.float32).add_(
        0.01 * per_channel * torch.rand(shape)
    )
    scale.requires_grad_()
    zp = torch.full(shape, 3.0)
    qmin, qmax = -32, 31

    def run(fn):
        for t in (z, cand, scale):
            t.grad = None
        h = fn()
        (h * torch.linspace(-1, 1, h.numel(), dtype=dtype).reshape(h.shape)).sum().backward()
        return h.detach(), z.grad.clone(), cand.grad.clone(), scale.grad.clone()

    fast = run(lambda: QuantGateScan.apply(z, cand, scale, zp, qmin, qmax))
    loop = run(lambda: gate_scan(1 - z, z * cand, lambda p: fake_quant(p, scale, zp, qmin, qmax)))
    assert fast[0].dtype == dtype and torch.equal(fast[0], loop[0])
    codes = torch.round(loop[0] / scale + zp)
    assert (codes == qmin).any() and (codes == qmax).any()  # both clamps are exercised
    torch.testing.assert_close(fast[1], loop[1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fast[2], loop[2], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fast[3], loop[3], rtol=1e-4, atol=1e-3 * loop[3].abs().max().item())
