import pytest
import torch

from qssm.models.kernels import gru_scan
from qssm.models.mingru import Heaviside, MinGRU, gate_scan, hard_sigmoid, log_scan


@pytest.mark.parametrize("hardware", [False, True])
def test_parallel_scan_equals_step_float64(hardware):
    torch.manual_seed(0)
    gru = MinGRU(3, 5, hardware=hardware).double()
    x = torch.randn(4, 60, 3, dtype=torch.float64)
    # hardware: compare analog states (the comparator output is binary); the scan floors 1 - z at
    # 1e-6 where the hard-sigmoid gate saturates, so it agrees to 1e-6 relative there
    tol = 1e-5 if hardware else 1e-9
    step = gru_scan(gru.gate(gru.Wz(x)), gru.Wh(x))  # the recurrent mode's states
    if hardware:
        assert torch.equal(gru(x, "recurrent"), (step > 0).double())
        gru.output = lambda h: h
    torch.testing.assert_close(gru(x, "parallel"), step, rtol=tol, atol=tol)


def test_log_scan_against_loop_with_mixed_signs():
    torch.manual_seed(1)
    a = torch.rand(2, 30, 4, dtype=torch.float64) * 0.9 + 0.05
    b = torch.randn(2, 30, 4, dtype=torch.float64)
    h, ref = torch.zeros(2, 4, dtype=torch.float64), []
    for t in range(30):
        h = a[:, t] * h + b[:, t]
        ref.append(h)
    torch.testing.assert_close(log_scan(torch.log(a), b), torch.stack(ref, 1))


def test_log_scan_gradients_are_finite_when_b_has_zeros():
    log_a = torch.full((1, 5, 2), -0.5, requires_grad=True)
    b = torch.tensor(
        [[[0.0, -1.0], [0.0, 2.0], [1.0, 0.0], [0.0, 0.0], [-3.0, 1.0]]], requires_grad=True
    )
    log_scan(log_a, b).sum().backward()
    assert torch.isfinite(log_a.grad).all() and torch.isfinite(b.grad).all()


def test_parallel_gradients_match_step_gradients():
    torch.manual_seed(2)
    gru = MinGRU(2, 3).double()
    x = torch.randn(2, 20, 2, dtype=torch.float64)
    grads = []
    for mode in ("parallel", "recurrent"):
        gru.zero_grad()
        gru(x, mode).pow(2).sum().backward()
        grads.append(gru.Wz.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


@pytest.mark.parametrize("mode", ["parallel", "recurrent"])
def test_causal(mode):
    torch.manual_seed(3)
    gru = MinGRU(2, 4).double()
    x = torch.randn(1, 30, 2, dtype=torch.float64)
    y = x.clone()
    y[:, 20:] += 1.0
    torch.testing.assert_close(gru(x, mode)[:, :20], gru(y, mode)[:, :20])


def test_hardware_pieces():
    assert hard_sigmoid(torch.tensor([-5.0, 0.0, 5.0])).tolist() == [0.0, 0.5, 1.0]
    x = torch.tensor([-2.0, -0.5, 0.5, 2.0], requires_grad=True)
    out = Heaviside.apply(x)
    out.sum().backward()
    assert out.tolist() == [0.0, 0.0, 1.0, 1.0]
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 0.0]
    gru = MinGRU(3, 4, hardware=True)
    out = gru(torch.randn(2, 10, 3))
    assert set(out.unique().tolist()) <= {0.0, 1.0}


def _gate_and_candidate(dtype, shape=(3, 50, 7), seed=4):
    """A gate in [0, 1] with exact 0s and 1s (a saturated hard sigmoid) and a candidate large
    enough that states cross the comparator's window |h| < 1."""
    g = torch.Generator().manual_seed(seed)
    z = torch.rand(shape, generator=g, dtype=dtype)
    z[z < 0.1], z[z > 0.9] = 0.0, 1.0
    cand = 2 * torch.randn(shape, generator=g, dtype=dtype)
    return z.requires_grad_(), cand.requires_grad_()


def _values_and_grads(run, z, cand):
    z.grad = cand.grad = None
    y = run(z, cand)
    (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).reshape(y.shape)).sum().backward()
    return y.detach(), z.grad.clone(), cand.grad.clone()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("comparator", [False, True])
def test_fused_scan_is_bit_identical_to_the_step_loop(dtype, comparator):
    """Forward values and both gradients, bit for bit: the kernel makes the loop's operations
    (1 − z, z·h̃, multiply then add) on the same values; with the comparator behind it, its
    window passes some gradients and stops others."""
    z, cand = _gate_and_candidate(dtype)
    out = Heaviside.apply if comparator else (lambda h: h)
    fast = _values_and_grads(lambda z, c: out(gru_scan(z, c)), z, cand)
    ref = _values_and_grads(lambda z, c: out(gate_scan(1 - z, z * c)), z, cand)
    for a, b in zip(fast, ref, strict=True):
        assert a.dtype == dtype and torch.equal(a, b)
        assert torch.equal(a.signbit(), b.signbit())  # zeros' signs too
    assert (ref[1] != 0).any() and (ref[2] != 0).any()  # gradients flow


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_elementwise_kernels_match_torch_ops(dtype):
    """The one-pass hard sigmoid and comparator against the torch ops they replace: values and
    gradients bit for bit (zeros' signs included), at the edges (x = ±2 for the gate: inside,
    the gradient passes; |x| = 1 for the comparator: outside) and beyond."""
    edges = torch.tensor([-3.0, -2.0, -1.0, -0.0, 0.0, 1.0, 2.0, 2.5])
    x = torch.cat([edges, 3 * torch.randn(40_000, generator=torch.Generator().manual_seed(6))])
    x = x.to(dtype).requires_grad_()
    g = torch.randn(x.shape, dtype=dtype, generator=torch.Generator().manual_seed(7))
    refs = {
        hard_sigmoid: lambda v: torch.clamp(v / 4 + 0.5, 0.0, 1.0),
        Heaviside.apply: lambda v: (v > 0).to(v.dtype),
    }
    for ours, ref in refs.items():
        assert torch.equal(ours(x), ref(x))
    (ours,) = torch.autograd.grad(hard_sigmoid(x), x, g)
    (ref,) = torch.autograd.grad(refs[hard_sigmoid](x), x, g)
    assert torch.equal(ours, ref) and torch.equal(ours.signbit(), ref.signbit())
    assert ours[1] == g[1] / 4 and ours[0] == 0  # x = −2 inside, x = −3 outside
    (ours,) = torch.autograd.grad(Heaviside.apply(x), x, g)
    ref = g * (x.detach().abs() < 1).to(dtype)  # the comparator's straight-through window
    assert torch.equal(ours, ref) and torch.equal(ours.signbit(), ref.signbit())
    assert ours[2] == 0 and ours[3] == g[3]  # |x| = 1 outside, x = −0 inside


@pytest.mark.parametrize("hardware", [False, True])
def test_recurrent_model_matches_the_step_loop(hardware):
    """MinGRU's recurrent mode (the kernels) against the step loop built from torch ops: values
    and parameter gradients bit for bit."""
    torch.manual_seed(5)
    gru = MinGRU(3, 6, hardware=hardware)
    x = 3 * torch.randn(2, 40, 3)

    def loop():
        pre = gru.Wz(x)
        z = torch.clamp(pre / 4 + 0.5, 0.0, 1.0) if hardware else torch.sigmoid(pre)
        h = gate_scan(1 - z, z * gru.Wh(x))
        if not hardware:
            return h
        passed = h * (h.detach().abs() < 1).to(h.dtype)  # the comparator's window, by hand
        return (h > 0).to(h.dtype) + (passed - passed.detach())

    results = []
    for run in (lambda: gru(x, "recurrent"), loop):
        gru.zero_grad()
        y = run()
        (y * torch.linspace(-1, 1, y.numel()).reshape(y.shape)).sum().backward()
        results.append([y.detach()] + [p.grad.clone() for p in gru.parameters()])
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_hardware_layer_is_bit_identical_to_its_pieces(dtype):
    """HardGRUScan against hard sigmoid → gru_scan → comparator as three nodes (each tested
    against torch ops above): outputs and both gradients bit for bit, zeros' signs included;
    pre-activations beyond ±2 saturate the gate (gradient stopped) and states cross the
    comparator's window."""
    from qssm.models.kernels import HardGRUScan

    g = torch.Generator().manual_seed(5)
    pre = (3 * torch.randn(3, 60, 7, generator=g, dtype=dtype)).requires_grad_()
    cand = (2 * torch.randn(3, 60, 7, generator=g, dtype=dtype)).requires_grad_()
    fast = _values_and_grads(HardGRUScan.apply, pre, cand)
    ref = _values_and_grads(lambda p, c: Heaviside.apply(gru_scan(hard_sigmoid(p), c)), pre, cand)
    for a, b in zip(fast, ref, strict=True):
        assert a.dtype == dtype and torch.equal(a, b)
        assert torch.equal(a.signbit(), b.signbit())
    assert (ref[1] == 0).any() and (ref[1] != 0).any() and (ref[2] != 0).any()
