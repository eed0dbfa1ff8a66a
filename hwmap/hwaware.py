"""Hardware-aware QAT: the analog errors of a mapped switched-capacitor target as training noise.

For every hardware minGRU layer the mapping gives, in accumulator units of its MACs, the kT/C
noise, the comparator offset and noise (input-referred) and the capacitor mismatch (σ_u·√(Σ|w|·
E[x²]) per column).  Converted to the real units of the gate pre-activation W_z x, the candidate
W_h x and the comparator input h, they become Gaussian noise added during QAT's forward passes
(``QuantMinGRU._noisy``).  Mismatch is static on a chip; here it is drawn anew for every sample and
step — training against many chips at once.
"""

import contextlib
import math

import numpy as np

from .graph import Graph, MinGRUHw
from .lower import lower, set_noise
from .mapping import RANGE_SEQUENCES, map_graph, observed_ranges, unit_sigma
from .targets import load_target, residual_offset_mv


def layer_sigmas(graph: Graph, rec: MinGRUHw, layer: dict, target) -> dict[str, np.ndarray]:
    consts, formats, gate, bank = graph.consts, graph.formats, rec.gate, rec.bank
    s_g = float(np.max(formats[gate.out].scale))
    s_h = float(np.max(formats[bank.out].scale))
    comparator = target.comparator  # its offset and noise, both input-referred
    comparator_v = math.hypot(residual_offset_mv(comparator), comparator.noise_mv) * 1e-3
    out = {}
    for key, mac_key in (("gate", "gate_mac"), ("cand", "cand_mac")):
        m = layer[mac_key]
        w = m["pos_units"] + m["neg_units"]  # (K, O)
        mean_square = (2 ** (m["input_bits"] - 1)) ** 2 / 3 if m["input_bits"] > 1 else 0.5
        mismatch = unit_sigma(target) * np.sqrt(w.sum(0) * mean_square)
        units = m["ktc_sigma_units"] ** 2 + mismatch**2
        if key == "gate":  # the ADC's comparators; s_W·s_x = 4·s_g·M/2^S (hard sigmoid's /4)
            units = units + (comparator_v / m["v_per_unit"]) ** 2
            real = 4 * s_g * np.asarray(consts[gate.M], float) / 2.0**gate.shift
        else:  # the state update's z·acc term: M = s_g·s_W·s_x/s_h·2^S
            M = np.asarray(consts[bank.cand], float)
            real = M * s_h / (2.0**bank.shift * s_g)
        out[key] = np.sqrt(units) * real
    out["out"] = np.asarray(comparator_v / layer["bank"]["v_per_code"] * s_h)
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
    sigmas = {rec.name: layer_sigmas(graph, rec, layer, target) for rec, layer in layers}
    set_noise(model, sigmas)
    summary = {"target": target.name, "unit_ff": target.capacitor.unit_ff}
    summary["layers"] = [{k: float(np.mean(v)) for k, v in s.items()} for s in sigmas.values()]
    try:
        yield summary
    finally:
        set_noise(model, dict.fromkeys(sigmas))
