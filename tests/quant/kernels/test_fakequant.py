"""The per-tensor fake-quant kernels against torch's IntQuant arithmetic (the ops FakeQuant
makes for other scales): values and every gradient bit for bit, signs of zero included."""

import pytest
import torch

from qssm.quant.kernels import fakequant
from qssm.quant.quantizers import fake_quant


def torch_fake_quant(x, s, z, qmin, qmax, g):
    """Brevitas' IntQuant in torch ops and its straight-through gradients, term by term:
    (value, ∂L/∂x, ∂L/∂s, ∂L/∂z) for the output gradient g."""
    r = torch.round(x / s + z)
    codes = torch.clamp(r, qmin, qmax)
    inside = r == codes
    through = g * s * inside
    gs = (g * (codes - z)).sum_to_size(s.shape) + (-through * x / (s * s)).sum_to_size(s.shape)
    gz = (g * s * (inside.float() - 1)).sum_to_size(z.shape)
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
