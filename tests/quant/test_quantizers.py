"""The site quantizers against independent expectations and against Brevitas itself."""

import pytest
import torch
from brevitas.graph.calibrate import calibration_mode
from hypothesis import given, settings
from hypothesis import strategies as st

from qssm.quant.quantizers import (
    PolarQuantizer,
    Site,
    SiteQuantizer,
    quantize_complex,
    stored_scale,
)
from qssm.quant.roles import ResolvedSpec, grid


def spec(
    bits=8,
    levels=None,
    signed=True,
    symmetric=True,
    granularity="per_tensor",
    observer="minmax",
    scale="learned",
    scale_dtype="float32",
):
    bit_width, narrow, n_levels = grid(bits if levels is None else None, levels, False)
    return ResolvedSpec(
        bit_width=bit_width,
        narrow=narrow,
        levels=n_levels,
        signed=signed,
        symmetric=symmetric,
        granularity=granularity,
        observer=observer,
        percentile=99.99,
        scale=scale,
        complex="cartesian",
        scale_dtype=scale_dtype,
    )


def calibrated(q, *xs):
    q.train()
    with calibration_mode(q):
        for x in xs:
            q(x)
    return q


SITE = Site("ssm.state", (1, 6, 1), 1)  # (B, 6, 4) tensors, channels on axis 1


@pytest.mark.parametrize(
    "signed,symmetric,granularity",
    [
        (True, True, "per_tensor"),
        (True, True, "per_channel"),
        (False, True, "per_tensor"),
        (False, False, "per_channel"),
    ],
)
def test_per_step_form_equals_brevitas_values_and_gradients(signed, symmetric, granularity):
    torch.manual_seed(0)
    x = torch.randn(5, 6, 4) * torch.linspace(0.2, 2, 6)[None, :, None]
    q = calibrated(
        SiteQuantizer(
            spec(4, signed=signed, symmetric=symmetric, granularity=granularity), SITE, signed
        ),
        x,
    )
    x_test = (torch.randn(5, 6, 4) * 1.5).requires_grad_()
    ref = q.quant(x_test).value  # Brevitas itself
    ref.pow(2).sum().backward()
    grads_ref = [x_test.grad.clone()] + [p.grad.clone() for p in q.parameters()]
    x_test.grad = None
    q.zero_grad()
    fast = q(x_test)  # FakeQuant, the site's forward (and its per-step form)
    fast.pow(2).sum().backward()
    grads_fast = [x_test.grad.clone()] + [p.grad.clone() for p in q.parameters()]
    assert torch.equal(ref, fast)
    torch.testing.assert_close(grads_ref[0], grads_fast[0])
    for a, b in zip(grads_ref[1:], grads_fast[1:], strict=True):  # the scale's parameters:
        # FakeQuant sums their terms in float64, Brevitas in float32, and the terms (code − z)
        # and −x/s nearly cancel, so the two agree to float32's cancellation error
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_minmax_calibration_matches_hand_computed_scale():
    x = torch.tensor([[-3.0, 0.5, 1.0, 2.0]])
    q = calibrated(SiteQuantizer(spec(8), Site("act.output", (1, 4), 1), True), x)
    scale = q.qparams()[0]
    assert torch.isclose(scale, torch.tensor(3.0 / 128))  # Brevitas: threshold / 2^(b-1)
    q.eval()
    torch.testing.assert_close(q(x), torch.round(x / scale) * scale)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float8_e5m2"])
def test_scales_are_the_values_their_dtype_stores(dtype):
    """scale_dtype rounds the learned value (threshold = scale · 2^(b−1)) to the dtype: the
    model computes with what is stored; the gradient passes the rounding (STE)."""
    torch.manual_seed(0)
    x = torch.randn(50, 6, 4) * torch.logspace(-3, 1, 6)[None, :, None]
    f32 = calibrated(SiteQuantizer(spec(8, granularity="per_channel"), SITE, True), x)
    q = calibrated(
        SiteQuantizer(spec(8, granularity="per_channel", scale_dtype=dtype), SITE, True), x
    )
    threshold = f32.qparams()[0] * 128  # max |x| per channel, in float32
    stored = threshold.to(getattr(torch, dtype)).float()
    assert not torch.equal(stored, threshold)  # the rounding is visible at this dtype
    torch.testing.assert_close(q.qparams()[0] * 128, stored, rtol=0, atol=0)
    q(x).pow(2).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in q.parameters())


def test_power_of_two_scales_keep_k_bit_exponents_below_the_largest():
    """po2_2bit: round(log2 s), raised to at least (largest − 3); hand-computed."""
    s = torch.tensor([1.0, 0.3, 3.1, 0.01])  # log2: 0, −1.74, 1.63, −6.64
    assert torch.equal(stored_scale(s, "po2_2bit"), torch.tensor([1.0, 0.5, 4.0, 0.5]))
    torch.manual_seed(0)
    x = torch.randn(50, 6, 4) * torch.logspace(-3, 1, 6)[None, :, None]
    q = calibrated(
        SiteQuantizer(spec(8, granularity="per_channel", scale_dtype="po2_3bit"), SITE, True), x
    )
    e = torch.log2(q.qparams()[0] * 128)
    assert torch.equal(e, e.round()) and e.max() - e.min() <= 7
    for signed, levels in ((False, 16), (True, 15)):  # unsigned, narrow signed: not 2^b − 1
        s = spec(levels=levels, signed=signed, granularity="per_channel", scale_dtype="po2_3bit")
        scale = calibrated(SiteQuantizer(s, SITE, signed), x.abs()).qparams()[0]
        assert torch.equal(torch.log2(scale), torch.log2(scale).round())
    assert [n * b for n, b, _, _ in q.stored()] == [6 * 3, 8]  # exponents, then their offset
    one = calibrated(SiteQuantizer(spec(8, scale_dtype="po2_3bit"), SITE, True), x)
    assert [n * b for n, b, _, _ in one.stored()] == [8]  # a single scale: the offset alone
    q(x).pow(2).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in q.parameters())


def test_scale_that_underflows_its_dtype_is_a_recipe_error():
    from qssm.models.backbone import Classifier
    from qssm.quant.calibrate import CalibrationError, check_scales
    from qssm.quant.wrap import wrap
    from qssm.recipe import QuantConfig

    cfg = dict(family="s4d", d_model=2, d_state=4, n_layers=1, pool="mean", init="lin")
    model = Classifier({**cfg, "dt_min": 1e-3, "dt_max": 1e-1}, 1, 2)
    model, _ = wrap(
        model, QuantConfig.model_validate({"default": {"scale_dtype": "float8_e4m3fn"}})
    )
    model.train()
    with calibration_mode(model):
        model(torch.full((2, 5, 1), 1e-6), "recurrent")  # e4m3's smallest value is 2^-9
    with pytest.raises(CalibrationError, match="wider scale_dtype"):
        check_scales(model)


@pytest.mark.parametrize("granularity", ["per_tensor", "per_channel"])
def test_two_bits_give_at_most_four_values_per_scale_group(granularity):
    torch.manual_seed(1)
    w = torch.randn(6, 10)
    q = calibrated(
        SiteQuantizer(spec(2, granularity=granularity), Site("linear.weight", (6, 1), 0), True), w
    )
    out = q(w)
    groups = [out] if granularity == "per_tensor" else list(out)
    for g in groups:
        assert g.unique().numel() <= 4
    assert out.unique().numel() > 4 or granularity == "per_tensor"


def test_three_levels_is_ternary():
    w = torch.randn(4, 8)
    q = calibrated(SiteQuantizer(spec(levels=3), Site("linear.weight", (4, 1), 0), True), w)
    values = q(w).unique()
    s = q.qparams()[0]
    assert set((values / s).round().tolist()) <= {-1.0, 0.0, 1.0}


def _slow_modes(n=64):
    """Ā with |Ā| within 1e-4 … 0.2 of the unit circle, at every angle."""
    r = 1 - torch.logspace(-4, -0.7, n)
    return torch.polar(r, torch.linspace(-3.1, 3.1, n)).reshape(8, n // 8)


@pytest.mark.parametrize("bits", [2, 3, 4, 6, 8])
@pytest.mark.parametrize("mode", ["cartesian", "polar"])
def test_quantized_state_matrix_stays_inside_unit_circle(bits, mode):
    A = _slow_modes()
    site = Site("ssm.A", (8, 1) if mode == "polar" else (8, 1, 1), 0)
    s = spec(bits, granularity="per_channel")
    q = PolarQuantizer(s, site, unit_disk=True) if mode == "polar" else SiteQuantizer(s, site, True)
    q.train()
    with calibration_mode(q):
        quantize_complex(q, A, unit_disk=True)
    A_q = quantize_complex(q, A, unit_disk=True)
    assert A_q.abs().max() < 1
    if bits >= 4:  # still a quantization of A, not a collapse toward 0
        assert (A_q - A).abs().max() < 2 * 3.1416 / 2**bits + 0.05


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_real_state_matrix_on_deficit_grid(bits):
    A = 1 - torch.logspace(-4, -1, 32).reshape(4, 8)
    q = PolarQuantizer(spec(bits, granularity="per_channel"), Site("ssm.A", (4, 1), 0), True)
    q.train()
    with calibration_mode(q):
        q(A)
    A_q = q(A)
    assert (A_q < 1).all() and (A_q > 0).all()
    deficit = (1 - A_q) / q.magnitude.qparams()[0]
    assert (deficit - deficit.round()).abs().max() < 0.05  # 1 - Ā on an integer grid (float32)
    assert deficit.round().min() >= 1


@settings(max_examples=40, deadline=None)
@given(
    bits=st.integers(2, 10),
    mode=st.sampled_from(["cartesian", "polar"]),
    log_deficit=st.lists(st.floats(-6, -0.01), min_size=4, max_size=4),
    phase=st.lists(st.floats(-3.14, 3.14), min_size=4, max_size=4),
)
def test_any_stable_state_matrix_stays_stable(bits, mode, log_deficit, phase):
    """Property: whatever Ā inside the unit circle and whatever the bit-width, |Ā_q| < 1."""
    A = torch.polar(1 - torch.tensor(log_deficit).exp(), torch.tensor(phase)).reshape(2, 2)
    site = Site("ssm.A", (2, 1) if mode == "polar" else (2, 1, 1), 0)
    s = spec(bits, granularity="per_channel")
    q = PolarQuantizer(s, site, unit_disk=True) if mode == "polar" else SiteQuantizer(s, site, True)
    q.train()
    with calibration_mode(q):
        quantize_complex(q, A, unit_disk=True)
    assert quantize_complex(q, A, unit_disk=True).abs().max() < 1
