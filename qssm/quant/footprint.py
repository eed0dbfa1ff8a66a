"""Memory footprint in bits: stored parameters, the per-sample recurrent state, and mGRADE's delay
buffer, against the same model in float32.

Every quantizer scale counts, at the bits of its ``scale_dtype``: the S4D state's too.  One scale
per state element does fold into B̄ and C (x' = x / s), but then B̄ / s and C · s are per-element
real numbers, no longer the b-bit codes counted for ``ssm.B`` and ``ssm.C`` (the integer lowering
stores them as fixed-point multipliers), so the scales are information the model must store."""

import math

from torch import nn

from ..models.mgrade import DelayConv, MGradeLayer
from ..models.mingru import MinGRU
from ..models.quantizable import QLinear
from ..models.s4d import S4D

FLOAT = 32


def _bits(table: dict, name: str, site: str) -> int:
    spec = table.get(f"{name}:{site}")
    return spec["bit_width"] if spec else FLOAT


def _stored(model: nn.Module, table: dict):
    """Yield (role, elements, bits, kind) for every stored tensor; kind ∈ param, state, buffer."""
    for name, m in model.named_modules():
        if isinstance(m, QLinear):
            for site, tensor in (("weight", m.weight), ("bias", m.bias)):
                yield m.roles[site == "bias"], tensor.numel(), _bits(table, name, site), "param"
        elif isinstance(m, S4D):
            H, n = m.C.shape[:2]
            parts = 1 if m.real else 2  # complex values as real and imaginary parts
            sites = m.sites()  # B̄ is not there once folded into C
            for site in (s for s in ("A", "B", "C") if s in sites):
                yield f"ssm.{site}", H * n * parts, _bits(table, name, site), "param"
            yield "ssm.D", H, _bits(table, name, "D"), "param"
            yield "ssm.state", H * n * parts, _bits(table, name, "state"), "state"
        elif isinstance(m, MinGRU):
            yield "gru.state", m.Wz.out_features, _bits(table, name, "state"), "state"
        elif isinstance(m, DelayConv):
            H, taps = m.weight.shape
            yield "conv.weight", H * taps, _bits(table, name, "weight"), "param"
            delay_bits = math.ceil(math.log2(m.max_delay)) if f"{name}:delay" in table else FLOAT
            yield "conv.delay", H * taps, delay_bits, "param"
        elif isinstance(m, nn.LayerNorm):
            yield "layernorm (float)", sum(p.numel() for p in m.parameters()), FLOAT, "param"
        if isinstance(m, MGradeLayer):  # the delay line holds the last max-delay conv inputs
            H = m.norm.normalized_shape[0]
            depth = int(m.conv.taps().max()) + 1 if m.conv.integer_delays else m.conv.max_delay
            yield "conv.buffer", H * depth, _bits(table, name, "norm"), "buffer"
        qz = m._modules.get("qz")
        for q in (qz or {}).values():  # scales at their scale_dtype, zero points float32
            for part in q.parts:
                for n, bits, _, _ in part.stored():
                    yield "quantizer scales", n, bits, "param"


def footprint(model: nn.Module, table: dict, float_params: int) -> dict:
    """``float_params``: parameter count of the float model (its float32 storage)."""
    per_role: dict[str, dict] = {}
    totals = {"param": 0, "state": 0, "buffer": 0}
    float_extra = 0  # float32 state and buffer of the unquantized model
    for m in model.modules():
        if isinstance(m, MGradeLayer):  # the float model keeps the whole window
            float_extra += FLOAT * m.norm.normalized_shape[0] * m.conv.max_delay
    for role, n, bits, kind in _stored(model, table):
        entry = per_role.setdefault(role, {"elements": 0, "bits_stored": 0, "bits": set()})
        entry["elements"] += n
        entry["bits_stored"] += n * bits
        entry["bits"].add(bits)
        totals[kind] += n * bits
        if kind == "state":
            float_extra += n * FLOAT
    for entry in per_role.values():
        entry["bits"] = sorted(entry["bits"])
    float32_bits = FLOAT * float_params + float_extra
    total = sum(totals.values())
    return {
        "float32_bits": float32_bits,
        "param_bits": totals["param"],
        "state_bits": totals["state"],
        "buffer_bits": totals["buffer"],
        "total_bits": total,
        "reduction": float32_bits / total,
        "per_role": per_role,
    }
