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
