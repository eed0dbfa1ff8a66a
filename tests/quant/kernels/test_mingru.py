"""The minGRU kernel (one autograd node per sequence) against the plain Brevitas step loop:
identical forward values and equal gradients, per-channel and per-tensor state scales."""

import math

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


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("cap_grad", [False, True])
def test_at_most_is_torch_minimum(dtype, cap_grad):
    """AtMost against torch.minimum with a one-element cap: values and both gradients bit for
    bit — the cap's as the float64 sum of torch.minimum's per-element terms — with ties (half
    the gradient each way), values above and below, a NaN and -0."""
    from qssm.quant.kernels.mingru import AtMost

    g = torch.Generator().manual_seed(3)
    z = torch.rand(4, 50, 6, generator=g, dtype=dtype)
    z[0, :10] = 0.75  # ties with the cap
    z[1, 0, 0] = float("nan")
    z = z.requires_grad_()
    cap = torch.tensor(0.75, dtype=dtype, requires_grad=cap_grad)
    w = torch.randn(4, 50, 6, generator=g, dtype=dtype)
    w[2, 0, 0] = -0.0
    results = []
    for fn in (AtMost.apply, torch.minimum):
        c = cap if fn is not torch.minimum else cap.expand(z.shape).clone()  # per element
        out = fn(z, c)
        inputs = (z, c) if cap_grad else (z,)
        results.append([out, *torch.autograd.grad((out * w).sum(), inputs)])
    if cap_grad:  # the exact sum of the terms, rounded once
        exact = math.fsum(results[1][2].flatten().tolist())
        results[1][2] = torch.tensor(exact, dtype=dtype)
        if dtype == torch.float64:  # float64 sums carry a few ulps of rounding
            torch.testing.assert_close(results[0][2], results[1][2], rtol=1e-13, atol=0)
            results[0][2] = results[1][2]
    for got, want in zip(*results, strict=True):
        assert got.dtype == want.dtype and got.shape == want.shape
        assert torch.equal(got.nan_to_num(7.0), want.nan_to_num(7.0))
        assert torch.equal(got.isnan(), want.isnan())
    assert (results[0][1][0, :10] == w[0, :10] / 2).all()  # a tie sends half each way


@pytest.mark.parametrize("gate", [{"bits": 6, "granularity": "per_tensor"}, {"enabled": False}])
def test_fused_hardware_layer_is_bit_identical_to_its_nodes(gate, monkeypatch):
    """The hardware minGRU with an analog state runs as one kernel (HardGateScan with its gate
    on a per-tensor grid, HardGRUScan without one); against the separate nodes (hard sigmoid,
    the gate's fake-quant, the cap, gru_scan, comparator): outputs and the weights' and
    biases' gradients bit for bit, the gate's scale's (the same terms, summed in another order)
    to float32 rounding, with gates at the cap."""
    from qssm.models.kernels import HardGRUScan, gru_scan
    from qssm.quant.kernels.mingru import HardGateScan

    torch.manual_seed(1)
    quant = {
        "default": {"bits": 4},
        "targets": [{"roles": ["gru.gate"], **gate}, {"roles": ["gru.state"], "enabled": False}],
    }
    m = quantized(MinGRU(3, 6, hardware=True), quant, 3 * torch.randn(8, 40, 3), "recurrent")
    x = 3 * torch.randn(4, 40, 3)  # pre-activations beyond ±2: gates at 0 and at the cap

    def nodes():
        z = m._at_most_one(m.q("gate", m.gate(m.Wz(x))))
        return m.output(gru_scan(z, m.q("cand", m.Wh(x))))

    calls = []
    for cls in (HardGateScan, HardGRUScan):
        spy = lambda *a, cls=cls, apply=cls.apply: calls.append(cls) or apply(*a)  # noqa: E731
        monkeypatch.setattr(cls, "apply", spy)
    fused = grads(m, lambda: m(x, "recurrent"))
    assert calls == [HardGateScan if "bits" in gate else HardGRUScan]
    (y, g), (y_ref, g_ref) = fused, grads(m, nodes)
    assert torch.equal(y, y_ref) and g.keys() == g_ref.keys()
    assert ("bits" in gate) == any("qz.gate" in k for k in g)  # the gate's scale learns
    for name in g:
        if "qz.gate" in name:  # the scale: the same terms, summed in another order
            torch.testing.assert_close(g[name], g_ref[name], rtol=1e-6, atol=0)
        else:
            assert torch.equal(g[name], g_ref[name]), name
    if "bits" in gate:
        gates = m._at_most_one(m.q("gate", m.gate(m.Wz(x))))
        assert (gates == m._at_most_one(None)).any() and (gates == 0).any()
