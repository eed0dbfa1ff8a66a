"""Memory footprint in bits: stored parameters, the per-sample recurrent state, and mGRADE's delay
buffer, against the same model in float32, two ways: as trained (every float parameter — an S4D's
continuous A, dt and B — and the float state and buffers) and as a float32 deployment would store
it (what the quantized model stores, at 32 bits and without quantizer scales: discrete Ā, B̄
folded into C under ``quant.fold_b``, no dt).

Every quantized layer says what it stores (``Quantized.stored``); LayerNorms stay float32.
Every quantizer scale counts, at the bits of its ``scale_dtype``: the S4D state's too.  One scale
per state element does fold into B̄ and C (x' = x / s), but then B̄ / s and C · s are per-element
real numbers, no longer the b-bit codes counted for ``ssm.B`` and ``ssm.C`` (the integer lowering
stores them as fixed-point multipliers), so the scales are information the model must store."""

from torch import nn

from .layers import Quantized, Stored
from .wrap import quantizers

FLOAT = 32
SCALES = "quantizer scales"


def _stored(model: nn.Module, table: dict):
    """Every :class:`Stored` of the quantized ``model``, module by module."""
    scales: dict[str, list] = {}
    for key, q in quantizers(model).items():
        scales.setdefault(key.rpartition(":")[0], []).append(q)
    for name, m in model.named_modules():

        def bits(site: str | int, name=name) -> int:
            if isinstance(site, int):  # fixed: a binary comparator output is 1 bit
                return site
            while site.startswith("../"):  # a site of the module above
                name, site = name.rpartition(".")[0], site[3:]
            spec = table.get(f"{name}:{site}")
            return spec["bit_width"] if spec else FLOAT

        if isinstance(m, Quantized):
            yield from m.stored(bits)
        elif isinstance(m, nn.LayerNorm):
            yield Stored("layernorm (float)", sum(p.numel() for p in m.parameters()), FLOAT)
        for q in scales.get(name, []):  # scales at their scale_dtype, zero points float32
            for part in q.parts:
                for n, b, _, _ in part.stored():
                    yield Stored(SCALES, n, b)


def footprint(model: nn.Module, table: dict, float_params: int) -> dict:
    """``float_params``: parameter count of the float model (its float32 storage)."""
    per_role: dict[str, dict] = {}
    totals = {"param": 0, "state": 0, "buffer": 0}
    float_extra = 0  # float32 state and buffer of the unquantized model
    for s in _stored(model, table):
        entry = per_role.setdefault(
            s.role, {"elements": 0, "bits_stored": 0, "bits": set(), "float32_bits": 0}
        )
        entry["elements"] += s.elements
        entry["bits_stored"] += s.elements * s.bits
        entry["bits"].add(s.bits)
        totals[s.kind] += s.elements * s.bits
        float_extra += s.float_elements * FLOAT
        if s.role != SCALES:  # the float model keeps state and buffers as it keeps them
            entry["float32_bits"] += (s.elements if s.kind == "param" else s.float_elements) * FLOAT
    for entry in per_role.values():
        entry["bits"] = sorted(entry["bits"])
    float32_bits = FLOAT * float_params + float_extra
    deploy = sum(e["float32_bits"] for e in per_role.values())
    total = sum(totals.values())
    return {
        "float32_bits": float32_bits,
        **{f"{kind}_bits": bits for kind, bits in totals.items()},  # param, state, buffer
        "total_bits": total,
        "reduction": float32_bits / total,
        "float32_deploy_bits": deploy,
        "reduction_deploy": deploy / total,
        "per_role": per_role,
    }
