"""The per-tensor fake-quant kernels against torch's IntQuant arithmetic (the ops FakeQuant
makes for other scales): values and elementwise gradients bit for bit, signs of zero included;
the scale's and zero point's gradients against float64 sums of the same terms."""

import pytest
import torch

from qssm.quant.kernels import fakequant
from qssm.quant.quantizers import fake_quant


def torch_fake_quant(x, s, z, qmin, qmax, g):
    """Brevitas' IntQuant in torch ops and its straight-through gradients, term by term:
    (value, ∂L/∂x, ∂L/∂s, ∂L/∂z) for the output gradient g, the sums in float64 rounded once."""
    r = torch.round(x / s + z)
    codes = torch.clamp(r, qmin, qmax)
    inside = r == codes
    through = g * s * inside
    gs = ((g * (codes - z)).double() + (-through * x / (s * s)).double()).sum().float()
    gz = (g * s * (inside.float() - 1)).double().sum().float()
    return (codes - z) * s, g * inside, gs, gz


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().view(torch.int32)


@pytest.mark.parametrize("zero_point", [0.0, 3.0])
@pytest.mark.parametrize("qrange", [(-8, 7), (0, 255), (-32768, 32767)])
def test_per_tensor_kernel_equals_torch_arithmetic_bit_for_bit(zero_point, qrange):
    torch.manual_seed(0)
    qmin, qmax = qrange
    s0 = 0.37 if qmax < 100 else 0.011
    x = torch.randn(6, 50, 220) * (qmax - qmin) * s0 / 3  # ≥ fakequant.SMALL: the kernels
    x[0, :20, 0] = (torch.arange(20) - 10 + 0.5 - zero_point) * s0  # ties: half to even
    x[1, :2, 0] = torch.tensor([1e9, -1e9])  # clamped
    g = torch.randn(6, 50, 220)
    g[2, :10] = 0.0
    xs = x.clone().requires_grad_()
    s = torch.tensor(s0, requires_grad=True)
    z = torch.tensor(zero_point, requires_grad=True)
    assert fakequant.applies(xs, s, z)
    y = fake_quant(xs, s, z, qmin, qmax)
    y.backward(g)
    ref = torch_fake_quant(x, torch.tensor(s0), torch.tensor(zero_point), qmin, qmax, g)
    for a, b in zip((y, xs.grad, s.grad, z.grad), ref, strict=True):
        assert torch.equal(bits(a), bits(b))
    inside = (torch.round(x / s0 + zero_point) >= qmin) & (torch.round(x / s0 + zero_point) <= qmax)
    assert inside.any() and not inside.all()  # both gradient branches exercised


def test_kernel_sums_do_not_depend_on_the_thread_count():
    """The scale's gradient is summed in fixed chunks: one thread and two give the same bits,
    and it is closer to the exact sum than torch's float32 sum of the same terms."""
    torch.manual_seed(3)
    x, g = torch.randn(64, 784, 16) * 3, torch.randn(64, 784, 16)
    s, z = torch.tensor(0.05), torch.tensor(0.0)
    threads = torch.get_num_threads()
    try:
        got = []
        for n in (1, 2):
            torch.set_num_threads(n)
            got.append(fakequant.backward(g, x, s, z, -128, 127, (True, True, False))[1])
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(bits(got[0]), bits(got[1]))
    r = torch.round(x / s)
    inside = (r >= -128) & (r <= 127)
    terms = (g * r.clamp(-128, 127)).double() + (-(g * s * inside) * x / (s * s)).double()
    exact = terms.sum()  # float64: exact to far below float32's resolution here
    f32 = ((g * r.clamp(-128, 127)).sum() + (-(g * s * inside) * x / (s * s)).sum()).double()
    assert (got[0].double() - exact).abs() <= (f32 - exact).abs()
    assert (got[0].double() - exact).abs() <= exact.abs() * 2**-24
