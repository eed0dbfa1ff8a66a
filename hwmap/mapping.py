"""Mapping a lowered integer graph onto a switched-capacitor (SC) in-memory-computing target.

For each hardware record of the graph (``hwmap.graph``: the tensors and constants of a layer's
analog parts) it decides their physical realization:

- a **MAC** (an integer matrix product x @ W): differential unit-capacitor counts per weight code
  (positive codes on the + line, negative on the − line), every cell padded with dummy units to
  the same total so each column line has the same capacitance; multi-bit inputs applied
  bit-serially (two's complement planes combined by binary weighting); fan-in split into tiles
  of ``array.rows``.  Its voltage per accumulator unit is V_swing·C_u / (C_line·2^(B−1)).
- an **ADC / comparator bank** after a MAC (a requantization): one threshold per output code
  boundary, where the integer graph's fixed-point sum crosses k·2^S − 2^(S−1) — bias, scale and
  the hard-sigmoid offset folded in — in volts and in threshold-DAC codes.
- a **gated state** (minGRU): a bank of charge-sharing units; gate code k switches k unit
  capacitors of a bank whose total is 1/s_gate units (the remainder as one fixed capacitor), so
  h ← (1 − k·s) h + k·s h̃ exactly as the integer graph computes it.
- an **S4D-Real state**: retention z = 1 − Ā = code·s as k units of a 1/s-unit bank.
- a **comparator** (hardware minGRU output): threshold at V_cm.

What cannot be mapped raises :class:`MappingError` with the reason and the recipe change that
fixes it.  Totals: capacitance, area, switches, energy per timestep with a breakdown, time per
timestep.
"""

import math

import numpy as np

from . import intref
from .graph import Adc, DelayLine, Graph, MinGRUHw, S4DRealHw
from .targets import Target

BOLTZMANN = 1.380649e-23
RANGE_MARGIN = 1.25  # headroom above the largest state seen on the calibration sequences
RANGE_SEQUENCES = 64  # training sequences that set each analog state's voltage range


class MappingError(ValueError):
    """The model cannot run on the target; the message names the layer, the reason, the fix."""


def swing(target: Target) -> float:
    """Largest signal excursion around V_cm (volts)."""
    return min(target.process.vcm_v, target.process.vdd_v - target.process.vcm_v)


def ktc_volts(target: Target, c_ff: float) -> float:
    return math.sqrt(BOLTZMANN * target.process.temperature_k / (c_ff * 1e-15))


def unit_sigma(target: Target) -> float:
    """σ(ΔC/C) of one unit capacitor."""
    c = target.capacitor
    return c.mismatch_pct_sqrt_ff / 100 / math.sqrt(c.unit_ff)


def mac(name: str, W: np.ndarray, in_bits: int, v_in: float | None, target: Target) -> dict:
    """A MAC array for integer weights W (K, O) applied to K inputs of ``in_bits`` bits, digital
    (bit-serial planes of the full swing) or, with ``v_in`` volts per input code, analog."""
    analog_input = v_in is not None
    K, n_out = W.shape
    pos, neg = np.maximum(W, 0), np.maximum(-W, 0)
    per_side = int(max(pos.max(), neg.max(), 1))
    if per_side > target.weights.max_units:
        raise MappingError(
            f"{name}: weight codes reach {per_side} units per side; {target.name} holds at most "
            f"{target.weights.max_units} (weights.max_units). Give this layer's weight role "
            f"fewer bits (at most {int(math.log2(target.weights.max_units + 1)) + 1} signed)"
        )
    tiles = math.ceil(K / target.array.rows) * math.ceil(n_out / target.array.cols)
    if tiles > 1 and not target.array.tiling:
        raise MappingError(
            f"{name}: fan-in {K} × {n_out} outputs exceed the {target.array.rows} × "
            f"{target.array.cols} array and {target.name} does not tile (array.tiling: false); "
            "use a smaller d_model"
        )
    if not analog_input and in_bits > 1 and target.inputs.encoding != "bit_serial":
        raise MappingError(
            f"{name}: {in_bits}-bit inputs need bit-serial input encoding; {target.name} takes "
            "binary inputs only (inputs.encoding). Quantize this layer's input to 1 bit"
        )
    if not analog_input and in_bits > target.inputs.max_bits:
        raise MappingError(
            f"{name}: {in_bits}-bit inputs exceed inputs.max_bits = {target.inputs.max_bits}; "
            "give the input activation fewer bits"
        )
    cu = target.capacitor.unit_ff
    units = K * per_side  # per column per side, dummies included
    c_par = target.parasitic.per_unit * units * cu + target.parasitic.fixed_ff
    c_line = units * cu + c_par
    cycles = 1 if analog_input else in_bits
    planes = 1 if analog_input or in_bits == 1 else 2 ** (in_bits - 1)  # MSB plane weight 1
    v_code = v_in if analog_input else swing(target) / planes  # volts per input code
    v_lsb = v_code * cu / c_line  # volts per accumulator unit
    plane_power = sum(4.0 ** (b - (cycles - 1)) for b in range(cycles))  # Σ (plane weight)²
    ktc = math.sqrt(2) * ktc_volts(target, c_line) * math.sqrt(plane_power)
    # half the units toggle per cycle on both lines: C (fF) · V² = energy (fJ)
    energy = cycles * 0.5 * 2 * units * n_out * cu * swing(target) ** 2
    return {
        "fan_in": K,
        "outputs": n_out,
        "units_per_side": per_side,
        "tiles": tiles,
        "input_bits": in_bits,
        "cycles": cycles,
        "c_line_ff": c_line,
        "c_parasitic_ff": c_par,
        "v_per_unit": v_lsb,
        "ktc_sigma_units": ktc / v_lsb,
        "capacitance_ff": 2 * units * n_out * cu,
        "switches": 2 * units * n_out,
        "energy_fj": energy,
        "pos_units": pos,  # (K, O) units on the + line
        "neg_units": neg,  # (K, O) units on the − line
        "dummy_pos": per_side - pos,  # dummies keep every cell, hence every line, equal
        "dummy_neg": per_side - neg,
    }


def thresholds(adc: Adc, consts: dict, target: Target, v_per_unit: float) -> dict:
    """Thresholds (accumulator units of the ADC's MAC) of its output codes: code ≥ c ⇔
    acc ≥ t_c, t_c = ⌈(c·2^S − 2^(S−1) − offset) / M⌉, placed at t_c − ½ (the offset folds in
    the constant terms: bias, offsets)."""
    S, lo, hi = adc.shift, adc.lo, adc.hi
    M = np.atleast_1d(consts[adc.M]).astype(np.float64)
    rest = np.asarray(consts[adc.offset], dtype=np.float64)
    M, rest = np.broadcast_arrays(M, rest)  # one row per output channel
    codes = np.arange(lo + 1, hi + 1)
    if np.any(M <= 0):
        raise MappingError(f"{adc.out}: a non-positive multiplier cannot become a threshold")
    t = np.ceil((codes[None, :] * 2.0**S - 2.0 ** (S - 1) - rest[:, None]) / M[:, None]) - 0.5
    volts = t * v_per_unit
    step = 2 * swing(target) / 2**target.comparator.dac_bits
    half = 2 ** (target.comparator.dac_bits - 1)
    dac = np.clip(np.rint(volts / step), -half, half - 1)
    return {
        "acc": t,  # (O, codes)
        "volts": volts,
        "dac_codes": dac.astype(np.int64),
        "dac_error_units": float(np.abs(dac * step - volts).max() / v_per_unit),
        "lo": lo,
    }


def bank(
    name: str, n_eff: np.ndarray, switchable: int, v_per_code: float, target: Target, strict=True
) -> dict:
    """A charge-sharing bank: ``switchable`` units of C_u plus a fixed capacitor of the remainder,
    total n_eff·C_u per state element, so that k switched units share k/n_eff of the charge."""
    n_eff = np.asarray(n_eff, dtype=np.float64)
    if strict and np.any(n_eff < switchable):
        raise MappingError(
            f"{name}: a gate code would switch more than the whole bank (z > 1); quantize the "
            "gate on [0, 1] (hard sigmoid) with its largest code at most 1"
        )
    if strict and switchable > target.state_bank.units:
        raise MappingError(
            f"{name}: codes switch up to {switchable} unit capacitors of a bank; {target.name} "
            f"switches at most {target.state_bank.units} (state_bank.units). Give the gate / Ā "
            "fewer bits"
        )
    cu = target.capacitor.unit_ff
    c_bank = n_eff * cu + target.parasitic.fixed_ff
    return {
        "switchable_units": int(switchable),
        "units_effective": n_eff,
        "remainder_ff": (n_eff - switchable) * cu,
        "v_per_code": v_per_code,
        "ktc_sigma_codes": ktc_volts(target, float(c_bank.min())) / v_per_code,
        "injection_codes": target.leakage.charge_injection_mv * 1e-3 / v_per_code,
        "capacitance_ff": float(c_bank.sum()),
        "switches": int(switchable * n_eff.size),
        "energy_fj": float(0.5 * c_bank.sum() * swing(target) ** 2),
    }


def _bits(codes) -> int:
    """Bits of the codes in [codes.lo, codes.hi] (a format or a record)."""
    return max(1, math.ceil(math.log2(codes.hi - codes.lo + 1)))


def state_range(graph: Graph, name: str, ranges: dict | None) -> float:
    """Largest |state code| the state's voltage range must hold: observed on data (×
    RANGE_MARGIN) when given, else the worst case the lowering assumed."""
    state = next(s for s in graph.states if s.next == name)
    worst = max(abs(state.lo), state.hi)
    if ranges is None or name not in ranges:
        return worst
    return min(worst, max(1.0, RANGE_MARGIN * ranges[name]))


def observed_ranges(graph: Graph, x: np.ndarray) -> dict[str, float]:
    """Largest |code| of every state over sequences ``x`` (integer reference)."""
    top = {s.next: 0.0 for s in graph.states}
    state = intref.init_state(graph, len(x))
    for t in range(x.shape[1]):
        env, state = intref.step(graph, x[:, t], state)
        for name in top:
            top[name] = max(top[name], float(np.abs(env[name]).max()))
    return top


def delay_line(graph: Graph, line: DelayLine, target: Target) -> dict:
    """A delay line as a digital ring buffer: depth (the longest used delay + 1) × the codes of
    one step; each step writes one step's codes and reads every tap.  A line behind the encoder
    holds the graph's input codes instead when they are fewer bits (one pixel against H
    channels) and recomputes the encoder for each tap (d_input more multiply-adds per tap)."""
    K = graph.consts[line.K]  # (H, J): tap weight codes at their delays, zero elsewhere
    H, used = K.shape[0], np.flatnonzero(np.abs(K).sum(0))
    depth, taps = int(used.max(initial=0)) + 1, int(np.count_nonzero(K))
    code_bits, recompute = _bits(graph.formats[line.x]), 0
    width = H * code_bits  # bits of one step
    if line.x == "encoder" and graph.d_input * _bits(graph.formats["input"]) < width:
        width, recompute = graph.d_input * _bits(graph.formats["input"]), taps * graph.d_input
    spec, storage = target.delay_line, depth * width
    if depth > spec.max_depth:
        raise MappingError(
            f"{line.buffer}: delays reach {depth - 1} steps; {target.name} holds at most "
            f"{spec.max_depth} (delay_line.max_depth). Train with model.max_delay ≤ "
            f"{spec.max_depth}"
        )
    read = width if recompute else taps * code_bits  # bits read per step
    return {
        "holds": "input" if recompute else line.x,
        "depth": depth,
        "bits_per_step": width,
        "taps": taps,
        "storage_bits": storage,
        "area_mm2": storage * spec.area_um2_per_bit / 1e6,
        "energy_fj": (width + read) * spec.access_fj_per_bit + (taps + recompute) * spec.tap_fj,
    }


def map_mingru_hw(graph: Graph, rec: MinGRUHw, target: Target, strict: bool = True, ranges=None):
    consts, gate, bank_ = graph.consts, rec.gate, rec.bank
    in_bits = _bits(graph.formats[gate.x])
    mac_z = mac(f"{rec.name}.Wz", consts[gate.W], in_bits, None, target)
    mac_h = mac(f"{rec.name}.Wh", consts[rec.cand.W], in_bits, None, target)
    th = thresholds(gate, consts, target, mac_z["v_per_unit"])
    s_gate = -float(consts[bank_.share]) / float(consts[bank_.keep])  # h − k·s·h + k·s·h̃
    v_h = swing(target) / state_range(graph, bank_.out, ranges)  # its range spans the swing
    n_eff = np.full(mac_z["outputs"], 1 / s_gate)
    return {
        "kind": "mingru_hw",
        "layer": rec.name,
        "gate_mac": mac_z,
        "cand_mac": mac_h,
        "gate_thresholds": th,
        "gate_to_units": list(range(gate.hi + 1)),
        "s_gate": s_gate,
        "bank": bank(f"{rec.name}.state", n_eff, gate.hi, v_h, target, strict),
        "comparators": mac_z["outputs"] * (len(th["acc"][0]) + 1),
        "adc_bits": _bits(gate),
        **({"delay_line": delay_line(graph, rec.line, target)} if rec.line else {}),
    }


def map_s4d_real(graph: Graph, rec: S4DRealHw, target: Target, ranges=None) -> dict:
    consts, ret, y = graph.consts, rec.retention, rec.readout
    if ret.deficit is None:
        raise MappingError(
            f"{rec.name}: the retention 1 − Ā must be on a unit grid; quantize ssm.A with "
            "complex: polar (the retention-deficit grid)"
        )
    s_d = consts[ret.deficit]  # (H,) or (1,)
    H, n = consts[ret.keep].shape
    A = consts[ret.keep].astype(np.float64) / 2.0**ret.shift
    k = np.rint((1 - A) / s_d.reshape(-1, 1))  # retention 1 − Ā in units of the bank
    W = consts[y.C]  # (H, n): the readout weights, one column per channel
    if np.abs(W).max() > target.weights.max_units:
        raise MappingError(
            f"{rec.name}.C: readout weights need {int(np.abs(W).max())} levels per side "
            "(per-element state scales fold into them as 16-bit fixed point); "
            f"{target.name} holds {target.weights.max_units}. Set ssm.state granularity: "
            "per_tensor or per_channel"
        )
    v_x = swing(target) / state_range(graph, ret.out, ranges)  # the range spans the swing
    n_eff = np.broadcast_to(1 / s_d.reshape(-1, 1), (H, n))
    return {
        "kind": "s4d_real",
        "layer": rec.name,
        "retention_units": k.astype(np.int64),
        "readout_mac": mac(f"{rec.name}.C", W.T, 1, v_x, target),  # analog inputs: the state
        "bank": bank(f"{rec.name}.state", n_eff, int(k.max()), v_x, target),
        "output_levels": y.hi - y.lo + 1,
        "comparators": H * (y.hi - y.lo),
        "adc_bits": _bits(y),
    }


def check_mappable(graph: Graph, target: Target) -> None:
    family = graph.family
    if family == "s4d" and target.state_bank.passive:
        raise MappingError(
            "complex S4D modes rotate the state (Ā has an imaginary part); a passive "
            f"charge-sharing core ({target.name}: state_bank.passive) only shares charge. Use "
            "model.family: s4d_real (its update x ← (1 − z) x + z v is charge sharing)"
        )
    if family not in ("mingru_hw", "mgrade_hw", "s4d_real"):
        raise MappingError(
            f"{family} blocks hold LayerNorm, MLP and residual paths that have no SC-IMC "
            "mapping here; map a mingru_hw, mgrade_hw or s4d_real model (the digital parts "
            "of those — encoder, pooling, decoder, the S4D block's GELU/GLU — stay in the "
            "periphery)"
        )
    if not graph.layers:
        raise MappingError(
            f"{family}: the quantized candidate (role gru.cand) leaves no analog MAC to map; "
            "disable gru.cand in the recipe's quant section"
        )


def map_graph(graph: Graph, target: Target, strict: bool = True, ranges=None) -> dict:
    """The mapping of every hardware layer of the graph; raises MappingError for what cannot be
    mapped.  Without ``strict`` the state-bank capacity is not checked (hardware-aware QAT needs
    only the noise magnitudes, before training has settled the gate scale).  ``ranges`` (from
    :func:`observed_ranges`) scales each state's voltage to the range it takes on data, as a
    designer sets the bank's reference; without it the worst-case range spans the swing."""
    check_mappable(graph, target)
    layers = [
        map_mingru_hw(graph, rec, target, strict, ranges)
        if isinstance(rec, MinGRUHw)
        else map_s4d_real(graph, rec, target, ranges)
        for rec in graph.layers
    ]
    return {"target": target.name, "layers": layers, "totals": totals(layers, target)}


def totals(layers: list[dict], target: Target) -> dict:
    cap = switches = comparators = cycles = 0.0
    breakdown = {"mac": 0.0, "state_banks": 0.0, "comparators": 0.0, "switches": 0.0}
    lines = [layer["delay_line"] for layer in layers if "delay_line" in layer]
    if lines:
        breakdown["delay_lines"] = sum(d["energy_fj"] for d in lines)
        if (bits := sum(d["storage_bits"] for d in lines)) > target.delay_line.max_bits:
            raise MappingError(
                f"the delay lines hold {bits} bits; {target.name} has "
                f"{target.delay_line.max_bits} (delay_line.max_bits). Use fewer channels "
                "(model.d_model), a shorter model.max_delay or fewer bits for their inputs"
            )
    for layer in layers:
        for m in (v for k, v in layer.items() if k.endswith("_mac")):
            cap += m["capacitance_ff"]
            switches += m["switches"]
            breakdown["mac"] += m["energy_fj"]
            cycles = max(cycles, m["cycles"])
        cap += layer["bank"]["capacitance_ff"]
        switches += layer["bank"]["switches"]
        breakdown["state_banks"] += layer["bank"]["energy_fj"]
        comparators += layer["comparators"]
    breakdown["comparators"] = comparators * target.energy.comparator_fj
    breakdown["switches"] = switches * 0.5 * target.energy.switch_fj
    step_ns = cycles * target.timing.phases_per_step / target.timing.clock_mhz * 1e3
    return {
        "capacitance_pf": cap / 1e3,
        "area_mm2": cap * target.capacitor.area_um2_per_ff / 1e6
        + sum(d["area_mm2"] for d in lines),
        "delay_line_bits": sum(d["storage_bits"] for d in lines),
        "switches": int(switches),
        "comparators": int(comparators),
        "energy_per_step_pj": sum(breakdown.values()) / 1e3,
        "energy_breakdown_pj": {k: v / 1e3 for k, v in breakdown.items()},
        "time_per_step_ns": step_ns,
    }
