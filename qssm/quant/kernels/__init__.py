"""Fast quantized recurrences for QAT: one autograd node per sequence instead of ~10 per step.

The plain recurrent loop builds an autograd graph of L × (complex multiply, add, divide, round,
clamp, multiply, readout) nodes and keeps every intermediate alive for the backward pass; at
L = 784 that costs seconds per batch and gigabytes.  These functions run the same forward
arithmetic — the same operations on the same values in the same order, so the state codes are
bit-identical (for S4D a numba kernel, ``s4d``; for minGRU torch ops under ``no_grad``,
``mingru``) — keep only the integer state codes (int8 up to 7 bits, int16 above), and run a
hand-written backward-through-time (for S4D a numba kernel, one pass over time in float32) with
the straight-through estimator of Brevitas' ``IntQuant``: the gradient passes the rounding
unchanged, the clamp where the code is inside [qmin, qmax], and the scale gets
∂x/∂s = (code − zp) − [inside]·p/s.

``tests/quant/kernels/`` checks forward codes and every gradient against the plain loops.
"""

import torch


def code_dtype(qmin: int, qmax: int) -> torch.dtype:
    for dtype in (torch.int8, torch.int16, torch.int32):
        info = torch.iinfo(dtype)
        if info.min <= qmin and qmax <= info.max:
            return dtype
    return torch.float32
