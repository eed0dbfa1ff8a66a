import torch

from qssm.models.mgrade import DelayConv, MGradeLayer


def test_small_sigma_with_integer_delays_is_a_delay_line():
    conv = DelayConv(channels=2, max_delay=10, n_taps=2, sigma=0.05).double()
    with torch.no_grad():
        conv.delay.copy_(torch.tensor([[0.0, 3.0], [2.0, 7.0]]))
        conv.weight.copy_(torch.tensor([[1.0, -2.0], [0.5, 4.0]]))
    u = torch.randn(3, 25, 2, dtype=torch.float64)
    y = conv(u)

    def shift(x, d):  # x delayed by d steps, zeros before the start
        return torch.cat([torch.zeros_like(x[:, :d]), x[:, : x.shape[1] - d]], 1)

    expect0 = 1.0 * u[..., 0] - 2.0 * shift(u[..., 0], 3)
    expect1 = 0.5 * shift(u[..., 1], 2) + 4.0 * shift(u[..., 1], 7)
    torch.testing.assert_close(y[..., 0], expect0)
    torch.testing.assert_close(y[..., 1], expect1)


def test_fractional_delay_interpolates_and_has_gradient():
    conv = DelayConv(channels=1, max_delay=8, n_taps=1, sigma=0.5)
    with torch.no_grad():
        conv.delay.fill_(2.5)
        conv.weight.fill_(1.0)
    k = conv.kernel()[0]
    assert torch.isclose(k[2], k[3]) and k[2] > k[1] and abs(k.sum().item() - 1) < 1e-6
    conv(torch.randn(1, 12, 1)).sum().backward()
    assert conv.delay.grad.abs().item() > 0


def test_layer_is_causal_and_modes_agree():
    torch.manual_seed(0)
    layer = MGradeLayer(4, max_delay=8, n_taps=3, sigma=0.5, mlp_ratio=2).double()
    x = torch.randn(2, 30, 4, dtype=torch.float64)
    y = x.clone()
    y[:, 18:] = 0
    torch.testing.assert_close(layer(x)[:, :18], layer(y)[:, :18])
    torch.testing.assert_close(layer(x, "parallel"), layer(x, "recurrent"))


def test_hardware_layer_is_delay_line_then_binary_minimalist_gru():
    """mgrade_hw: no LayerNorm, MLP or residual; the output is the comparator's bits of the
    minGRU driven by the delay convolution (checked against the two composed by hand)."""
    torch.manual_seed(0)
    layer = MGradeLayer(4, max_delay=8, n_taps=3, sigma=0.5, mlp_ratio=2, hardware=True).double()
    assert not hasattr(layer, "norm") and not hasattr(layer, "mlp")
    x = torch.randn(2, 30, 4, dtype=torch.float64)
    out = layer(x, "recurrent")
    assert set(out.unique().tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(out, layer.gru(layer.conv(x), "recurrent"))
    torch.testing.assert_close(layer(x, "parallel"), out)
