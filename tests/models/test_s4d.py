import pytest
import torch

from qssm.models.s4d import S4D


@pytest.mark.parametrize("real,init", [(False, "lin"), (False, "inv"), (True, "lin")])
def test_convolution_mode_equals_recurrence_float64(real, init):
    torch.manual_seed(0)
    ssm = S4D(d_model=4, d_state=8, real=real, init=init).double()
    u = torch.randn(3, 50, 4, dtype=torch.float64)
    torch.testing.assert_close(ssm(u, "parallel"), ssm(u, "recurrent"), rtol=1e-9, atol=1e-9)


def test_recurrence_matches_hand_rolled_complex_reference():
    """Independent float64 reference: explicit loops over channels and modes."""
    torch.manual_seed(1)
    ssm = S4D(d_model=2, d_state=4).double()
    u = torch.randn(1, 6, 2, dtype=torch.float64)
    A = (-torch.exp(ssm.log_A_real) + 1j * ssm.A_imag).detach()
    dt = torch.exp(ssm.log_dt).detach()
    B = torch.view_as_complex(ssm.B.detach())
    C = torch.view_as_complex(ssm.C.detach())
    y_ref = torch.zeros(6, 2, dtype=torch.float64)
    for h in range(2):
        for n in range(2):
            a_bar = torch.exp(dt[h] * A[h, n])
            b_bar = (a_bar - 1) / A[h, n] * B[h, n]
            x = 0
            for t in range(6):
                x = a_bar * x + b_bar * u[0, t, h]
                y_ref[t, h] += 2 * (C[h, n] * x).real
        y_ref[:, h] += ssm.D[h].detach() * u[0, :, h]
    torch.testing.assert_close(ssm(u, "recurrent")[0].detach(), y_ref)


@pytest.mark.parametrize("mode", ["parallel", "recurrent"])
def test_causal(mode):
    torch.manual_seed(2)
    ssm = S4D(d_model=3, d_state=8).double()
    u = torch.randn(2, 40, 3, dtype=torch.float64)
    v = u.clone()
    v[:, 25:] = torch.randn(2, 15, 3, dtype=torch.float64)
    torch.testing.assert_close(ssm(u, mode)[:, :25], ssm(v, mode)[:, :25])
    assert not torch.allclose(ssm(u, mode)[:, 25:], ssm(v, mode)[:, 25:])


def test_discretized_state_matrix_is_stable_and_real_variant_is_charge_sharing():
    ssm = S4D(d_model=4, d_state=8, real=True)
    A_bar, B_bar, _ = ssm.discretize()
    assert (A_bar.abs() < 1).all() and (A_bar > 0).all()
    z = 1 - A_bar  # x ← (1 - z) x + z v  with  v = B̄ u / z
    x, u = torch.randn(4, 8), torch.randn(4, 1)
    torch.testing.assert_close(A_bar * x + B_bar * u, (1 - z) * x + z * (B_bar * u / z))
    assert (S4D(d_model=4, d_state=8).discretize()[0].abs() < 1).all()


def test_published_small_model_size():
    """H=16, N=64: S4D layer has 2,080 parameters (3,850 in the published classifier)."""
    assert sum(p.numel() for p in S4D(16, 64).parameters()) == 1024 + 1024 + 16 + 512 + 512 + 16
