"""Hardware-aware QAT: the analog errors of a mapped switched-capacitor target as training noise.

For every hardware minGRU layer the mapping gives, in accumulator units of its MACs, what a chip
adds to the gate pre-activation W_z x, the candidate W_h x and the comparator input h, split as
a chip has them:

- **static** (one draw per sequence, held over every step: a virtual chip per sequence):
  capacitor mismatch σ_u·√(Σ_j |w_jo|·E[x_j²]) per column with E[x²] of the layer's inputs on
  training data, the residual comparator offset (the target's calibration), and the gate
  line's local parasitic gain spread times its typical accumulator;
- **dynamic** (per step): kT/C of the lines and the comparator noise.

Converted to the real units of each tensor they become ``QuantMinGRU.noise`` (``gate``, ``cand``,
``out`` and their ``*_static`` twins), added in QAT's forward passes (straight-through).
"""

import contextlib

import numpy as np

from .graph import Graph, MinGRUHw
from .lower import lower, set_noise
from .mapping import RANGE_SEQUENCES, map_graph, observed_ranges, unit_sigma
from .targets import load_target, residual_offset_mv


def layer_sigmas(graph: Graph, rec: MinGRUHw, layer: dict, target, ranges: dict) -> dict:
    consts, formats, gate, bank = graph.consts, graph.formats, rec.gate, rec.bank
    s_g = float(np.max(formats[gate.out].scale))
    s_h = float(np.max(formats[bank.out].scale))
    c = target.comparator  # offset and noise, input-referred
    offset_v, noise_v = residual_offset_mv(c) * 1e-3, c.noise_mv * 1e-3
    square = ranges.get(f"{gate.x}.square")
    local = target.parasitic.spread_local_pct / 100
    out = {}
    for key, mac_key in (("gate", "gate_mac"), ("cand", "cand_mac")):
        m = layer[mac_key]
        w = m["pos_units"] + m["neg_units"]  # (K, O)
        if square is None:  # no data: inputs uniform over their codes
            square = np.full(len(w), (2 ** (m["input_bits"] - 1)) ** 2 / 3)
        mismatch = unit_sigma(target) * np.sqrt(square @ w)  # (O,) units
        static, dynamic = mismatch**2, np.full_like(mismatch, m["ktc_sigma_units"] ** 2)
        if key == "gate":  # the ADC's comparator; s_W·s_x = 4·s_g·M/2^S (hard sigmoid's /4)
            typical = np.sqrt(square @ np.abs(consts[gate.W]) ** 2)  # rms accumulator scale
            gain = local * m["c_parasitic_ff"] / m["c_line_ff"] * typical
            static = static + (offset_v / m["v_per_unit"]) ** 2 + gain**2
            dynamic = dynamic + (noise_v / m["v_per_unit"]) ** 2
            real = 4 * s_g * np.asarray(consts[gate.M], float) / 2.0**gate.shift
        else:  # the state update's z·acc term: M = s_g·s_W·s_x/s_h·2^S
            M = np.asarray(consts[bank.cand], float)
            real = M * s_h / (2.0**bank.shift * s_g)
        out[key], out[f"{key}_static"] = np.sqrt(dynamic) * real, np.sqrt(static) * real
    per_code = np.asarray(layer["bank"]["v_per_code"])
    out["out"], out["out_static"] = noise_v / per_code * s_h, offset_v / per_code * s_h
    return out


@contextlib.contextmanager
def hardware_noise(model, cfg, x: np.ndarray):
    """While inside, every hardware minGRU of ``model`` trains with the analog errors of the
    recipe's qat.hardware target (``QuantMinGRU.noise``); yields a summary of the magnitudes.  The
    state voltage ranges are set on the first training sequences ``x``, as map-to-hw does."""
    target = load_target(cfg.target)
    if cfg.unit_ff is not None:
        target = target.with_unit(cfg.unit_ff)
    if cfg.offset_mv is not None:
        target = target.with_offset(cfg.offset_mv)
    graph = lower(model)
    ranges = observed_ranges(graph, x[:RANGE_SEQUENCES])
    mapping = map_graph(graph, target, strict=False, ranges=ranges)
    layers = zip(graph.layers, mapping["layers"], strict=True)
    sigmas = {rec.name: layer_sigmas(graph, rec, L, target, ranges) for rec, L in layers}
    set_noise(model, sigmas)
    summary = {"target": target.name, "unit_ff": target.capacitor.unit_ff}
    summary["layers"] = [{k: float(np.mean(v)) for k, v in s.items()} for s in sigmas.values()]
    try:
        yield summary
    finally:
        set_noise(model, dict.fromkeys(sigmas))
