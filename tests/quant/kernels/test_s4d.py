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
            # loop does it in float32 with cancellation, the kernel each step in float32 and
            # the steps in float64
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
    u = 3 * torch.randn(3, 41, 4)  # wider than calibration: some clamp; blocks 16, 16, 9

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


@pytest.mark.parametrize("real", [False, True])
def test_float32_backward_stays_near_a_float64_bptt(real):
    """785 steps with long memory (|Ā| up to 0.9995) and some states clamping: the kernel's
    float32 backward against torch's autograd of the same straight-through BPTT in float64,
    through the forward's own codes: every gradient within 1e-6 of its largest element (the
    kernel's float32 arithmetic reaches 4e-7 here)."""
    from qssm.models.s4d import recurrence
    from qssm.quant.kernels.s4d import S4DScan

    g = torch.Generator().manual_seed(0)
    H, n, Bsz, L, qmin, qmax = 2, 4, 3, 785, -128, 127  # 49 blocks of 16 steps and one of 1
    dt = torch.logspace(-3, -1, n, dtype=torch.float64).expand(H, n)
    B = torch.randn(H, n, generator=g, dtype=torch.float64) * dt
    C = torch.randn(H, n, generator=g, dtype=torch.float64)
    if real:
        A = torch.exp(-0.5 * dt)
    else:
        A = torch.exp(dt * torch.complex(torch.tensor(-0.5), torch.pi * torch.arange(n)))
        B, C = B * (1 + 1j), C * (1 - 0.5j)
    u = torch.randn(Bsz, L, H, generator=g, dtype=torch.float64)
    states = []
    recurrence(u, A, B, C, states=states)  # the float recurrence: scales that clamp its peaks
    parts = torch.stack(states) if real else torch.view_as_real(torch.stack(states))
    peak = parts.abs().amax((0, 1)).reshape(H, n, -1)[..., :1]  # per element, both parts
    scale = 2.0 ** torch.floor(torch.log2(0.8 * peak / qmax))  # powers of two, as hetero_4_8
    scale = scale[..., 0] if real else scale
    zp = torch.zeros_like(scale)

    leaves = [t.float() if t.is_floating_point() else t.to(torch.complex64) for t in (u, A, B, C)]
    leaves = [t.requires_grad_() for t in (*leaves, scale.float())]
    y = S4DScan.apply(*leaves, zp.float(), qmin, qmax)
    codes = torch.cat(y.grad_fn.saved_tensors[6:]).double()  # (L, H, P, n, B)
    clamped = ((codes < qmin) | (codes > qmax)).double().mean().item()
    assert 1e-4 < clamped < 0.05
    gy = torch.randn(y.shape, generator=g)
    threads, runs = torch.get_num_threads(), []
    try:  # channels run in parallel, each summed on its own: the same bits on one thread or two
        for k in (1, 2):
            torch.set_num_threads(k)
            y = S4DScan.apply(*leaves, zp.float(), qmin, qmax)
            runs.append(torch.autograd.grad(y, leaves, gy))
    finally:
        torch.set_num_threads(threads)
    kernel = runs[0]
    assert all(torch.equal(a, b) for a, b in zip(*runs, strict=True))

    ref = [
        t.detach().to(w.dtype).requires_grad_()
        for t, w in zip(leaves, (u, A, B, C, scale), strict=True)
    ]
    s = ref[4][..., None] if real else ref[4]  # (H, n, 1) against the parts (B, H, n, P)
    codes = iter(codes.permute(0, 4, 1, 3, 2).unbind())  # per step (B, H, n, P)

    def step(p):  # Brevitas' fake-quant (zp = 0) with the forward's rounding
        v = (p[..., None] if real else torch.view_as_real(p)) / s
        r = v + (next(codes) - v).detach()  # round's straight-through gradient
        x = r.clamp(qmin, qmax) * s
        return x[..., 0] if real else torch.view_as_complex(x)

    y_ref = recurrence(*ref[:4], step=step)
    torch.testing.assert_close(y.double(), y_ref, rtol=1e-5, atol=1e-5 * y_ref.abs().max().item())
    expected = torch.autograd.grad(y_ref, ref, gy.double())
    for name, got, want in zip(("u", "A", "B", "C", "scale"), kernel, expected, strict=True):
        err = (got.to(want.dtype) - want).abs().max() / want.abs().max()
        assert err < 1e-6, f"{name}: {err.item():.2e}"
