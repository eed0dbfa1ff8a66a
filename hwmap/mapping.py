"""Mapping a lowered integer graph onto a switched-capacitor (SC) in-memory-computing target.

For each hardware record of the graph (``hwmap.graph``: the tensors and constants of a layer's
analog parts) it decides their physical realization:

- a **MAC** (an integer matrix product x @ W): differential unit-capacitor counts per weight code
  (positive codes on the + line, negative on the − line), every cell padded with dummy units to
  the same total so each column line has the same capacitance; multi-bit inputs applied by a
  row DAC (``inputs.encoding: dac``, one cycle, code·V_swing/2^(B−1)) or bit-serially (two's
  complement planes combined by binary weighting); fan-in split into tiles of ``array.rows``.
  Its voltage per accumulator unit is V_swing·C_u / (C_line·2^(B−1)) either way.
- an **ADC** after a MAC (a requantization): one threshold per output code boundary, where the
  integer graph's fixed-point sum crosses k·2^S − 2^(S−1) — bias, scale and the hard-sigmoid
  offset folded in — in volts and in threshold-DAC codes.  The DAC spans each column's observed
  signal range (× RANGE_MARGIN), as a designer sets a column's reference; a SAR converts with one
  comparator in ⌈log2 codes⌉ decisions, a flash with one comparator per threshold.
- a **gated state** (minGRU): a bank of charge-sharing units; gate code k switches k unit
  capacitors of a bank whose total is 1/s_gate units (the remainder as one fixed capacitor,
  less the bank node's fixed parasitic), so h ← (1 − k·s) h + k·s h̃ as the integer graph
  computes it.  The k units sample the candidate line, so a state code is worth the line's
  volts per candidate code: no amplifier between them.  A latch per column enables the output
  comparator once the gate has switched a unit: a state whose gate never opened is exactly 0 in
  the integer model and reads 0 (Heaviside(0) = 0) — about 8 % of the MINIMALIST model's
  states (the blank first pixels) — where a comparator at V_cm would read its own offset.
- an **S4D-Real state**: retention z = 1 − Ā = code·s as k units of a 1/s-unit bank.
- a **comparator** (hardware minGRU output): threshold at V_cm.

What cannot be mapped raises :class:`MappingError` with the reason and the recipe change that
fixes it.  Totals: capacitance, area, switches, energy per timestep with a breakdown, time per
timestep.
"""

import math
import warnings

import numpy as np

from . import intref
from .graph import Adc, DelayLine, Graph, MinGRUHw, S4DRealHw
from .targets import Target, residual_offset_mv, swing

BOLTZMANN = 1.380649e-23
RANGE_MARGIN = 1.25  # headroom above the largest signal seen on the calibration sequences
RANGE_SEQUENCES = 64  # training sequences that set each analog signal's voltage range
STARVED = 5  # warn when a gate LSB is worth less than this many residual offsets


class MappingError(ValueError):
    """The model cannot run on the target; the message names the layer, the reason, the fix."""


def ktc_volts(target: Target, c_ff: float) -> float:
    return math.sqrt(BOLTZMANN * target.process.temperature_k / (c_ff * 1e-15))


def unit_sigma(target: Target) -> float:
    """σ(ΔC/C) of one unit capacitor."""
    c = target.capacitor
    return c.mismatch_pct_sqrt_ff / 100 / math.sqrt(c.unit_ff)


def mac(
    name: str, W: np.ndarray, in_bits: int, v_in: float | None, target: Target, x_abs=None
) -> dict:
    """A MAC array for integer weights W (K, O) applied to K inputs of ``in_bits`` bits, digital
    (a row DAC or bit-serial planes of the full swing) or, with ``v_in`` volts per input code,
    analog.  ``x_abs`` (K,): the mean |input code| on data, for the energy (default: half the
    full scale)."""
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
    if not analog_input and in_bits > 1 and target.inputs.encoding == "binary":
        raise MappingError(
            f"{name}: {in_bits}-bit inputs need a row DAC or bit-serial input encoding; "
            f"{target.name} takes binary inputs only (inputs.encoding). Quantize this layer's "
            "input to 1 bit"
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
    serial = not analog_input and in_bits > 1 and target.inputs.encoding == "bit_serial"
    cycles = in_bits if serial else 1
    planes = 1 if analog_input or in_bits == 1 else 2 ** (in_bits - 1)  # MSB plane weight 1
    v_code = v_in if analog_input else swing(target) / planes  # volts per input code
    v_lsb = v_code * cu / c_line  # volts per accumulator unit
    plane_power = sum(4.0 ** (b - (cycles - 1)) for b in range(cycles))  # Σ (plane weight)²
    ktc = math.sqrt(2) * ktc_volts(target, c_line) * math.sqrt(plane_power)
    # C·V_DD·ΔV: every row drives its n_out cells (per_side units on each line) from V_cm to
    # V_cm ± |x|·v_code, charged from V_DD; bit-serially each plane toggles half of the time
    x_abs = np.full(K, planes / 2) if x_abs is None else np.asarray(x_abs, dtype=np.float64)
    dv = x_abs * v_code if not serial else np.full(K, 0.5 * swing(target) * 2 / cycles)
    row_ff = 2 * per_side * n_out * cu
    energy = cycles * float(np.sum(row_ff * target.process.vdd_v * dv))
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
        "macs": K * n_out,
        "weight_bits": max(1, math.ceil(math.log2(int(W.max()) - int(W.min()) + 1))),
        "pos_units": pos,  # (K, O) units on the + line
        "neg_units": neg,  # (K, O) units on the − line
        "dummy_pos": per_side - pos,  # dummies keep every cell, hence every line, equal
        "dummy_neg": per_side - neg,
    }


def dac_code(volts, step, bits: int) -> np.ndarray:
    """The threshold-DAC code nearest to ``volts`` in steps of ``step`` volts (both broadcast),
    clipped to the ``bits``-bit DAC's signed range: what the mapping programs and the simulator
    reads back (its foreground correction subtracted first)."""
    half = 2 ** (bits - 1)
    return np.clip(np.rint(volts / step), -half, half - 1)


def thresholds(adc: Adc, consts: dict, target: Target, v_per_unit: float, span=None) -> dict:
    """Thresholds (accumulator units of the ADC's MAC) of its output codes, placed midway
    between the two accumulator values the integer graph separates.

    The integer ADC gives code ≥ c ⇔ acc·M + offset + 2^(S−1) ≥ c·2^S (the offset folds in the
    constant terms: bias, offsets), i.e. acc ≥ τ_c = (c·2^S − 2^(S−1) − offset) / M; the
    accumulator is an integer, so every threshold in (⌈τ_c⌉ − 1, ⌈τ_c⌉] gives the same codes.
    On the chip the accumulator is a charge: the column's units share it onto the line,
    ΔV = acc·v_per_unit with v_per_unit = V_code·C_u / C_line, and every error (mismatch,
    kT/C, offset, the DAC's step) makes it continuous.  A comparator threshold at ⌈τ_c⌉ would
    sit on the integer value that must read ≥ c, so an error of any size below zero flips it;
    at t_c = ⌈τ_c⌉ − ½ — midway between the codes, as a designer places a threshold — both
    neighbours keep their decision under any error below ½ LSB (½·v_per_unit volts).

    The threshold DAC of each column spans ±``span`` (O,) accumulator units (its observed
    range; default the whole swing), plus ±3σ of the raw comparator offset when a foreground
    calibration corrects it through the DAC, in 2^dac_bits steps (``dac_code``)."""
    S, lo, hi = adc.shift, adc.lo, adc.hi
    M = np.atleast_1d(consts[adc.M]).astype(np.float64)
    rest = np.asarray(consts[adc.offset], dtype=np.float64)
    M, rest = np.broadcast_arrays(M, rest)  # one row per output channel
    codes = np.arange(lo + 1, hi + 1)
    if np.any(M <= 0):
        raise MappingError(f"{adc.out}: a non-positive multiplier cannot become a threshold")
    t = np.ceil((codes[None, :] * 2.0**S - 2.0 ** (S - 1) - rest[:, None]) / M[:, None]) - 0.5
    volts = t * v_per_unit
    c = target.comparator
    # a foreground calibration subtracts the raw offset through this DAC: ±3σ more range
    headroom = 3 * c.offset_mv * 1e-3 if c.calibration == "foreground" else 0.0
    full = np.full(len(t), swing(target)) if span is None else np.asarray(span) * v_per_unit
    full = np.minimum(full + headroom, swing(target))
    step = 2 * full / 2**c.dac_bits  # (O,)
    dac = dac_code(volts, step[:, None], c.dac_bits)
    return {
        "acc": t,  # (O, codes)
        "volts": volts,
        "dac_step_v": step,
        "dac_codes": dac.astype(np.int64),
        "dac_error_units": float(  # inside the span: beyond it the DAC clips, unreached
            np.where(np.abs(volts) <= full[:, None], np.abs(dac * step[:, None] - volts), 0).max()
            / v_per_unit
        ),
        "lo": lo,
    }


def adc_cost(target: Target, n_thresholds: int) -> tuple[int, int]:
    """(comparators, decisions per conversion) of one column's gate ADC."""
    if target.comparator.adc == "sar":
        return 1, max(1, math.ceil(math.log2(n_thresholds + 1)))
    return n_thresholds, n_thresholds


def bank(
    name: str,
    n_eff: np.ndarray,
    switchable: int,
    v_per_code,
    target: Target,
    strict: bool = True,
    dv_v: float | None = None,
) -> dict:
    """A charge-sharing bank: ``switchable`` units of C_u plus a fixed capacitor of the remainder,
    total n_eff·C_u per state element, so that k switched units share k/n_eff of the charge.
    Every unit carries its switch's parasitic (per_unit·C_u: the ratio keeps it); the node's
    fixed parasitic is taken off the remainder capacitor, down to nothing — what is left of it
    (``parasitic_left_ff``) shrinks every z.  ``v_per_code``: volts per state code (scalar or per
    state element); ``dv_v``: the typical |h̃ − h| in volts the switched units move by, for the
    energy C·V_DD·ΔV (default half the swing)."""
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
    cu, fixed = target.capacitor.unit_ff, target.parasitic.fixed_ff
    cu_par = cu * (1 + target.parasitic.per_unit)  # a unit with its switch's parasitic
    remainder = np.maximum((n_eff - switchable) * cu_par - fixed, 0.0)
    c_bank = switchable * cu_par + remainder + fixed  # = n_eff·cu_par where the remainder fits
    v_per_code = np.asarray(v_per_code, dtype=np.float64)
    return {
        "switchable_units": int(switchable),
        "units_effective": n_eff,
        "unit_ff": cu_par,
        "remainder_ff": remainder,
        "parasitic_ff": fixed,
        "parasitic_left_ff": c_bank - n_eff * cu_par,
        "v_per_code": v_per_code,
        "ktc_sigma_codes": float(np.max(ktc_volts(target, float(c_bank.min())) / v_per_code)),
        "injection_codes": target.leakage.charge_injection_mv * 1e-3 / v_per_code,
        "capacitance_ff": float(c_bank.sum()),
        "switches": int(switchable * n_eff.size),
        # the switched units (on average half of them) move by ΔV, charged from V_DD
        "energy_fj": float(0.5 * switchable * cu_par * n_eff.size * target.process.vdd_v)
        * (0.5 * swing(target) if dv_v is None else dv_v),
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


def observed_ranges(graph: Graph, x: np.ndarray) -> dict:
    """What the integer reference shows on sequences ``x``: the largest |code| of every state
    (by its next tensor), and for every hardware minGRU the largest |accumulator| of its gate MAC
    per column (``<gate>.acc``) and the mean |x| and x² of its MAC inputs per row
    (``<x>.abs``, ``<x>.square``)."""
    top = {s.next: 0.0 for s in graph.states}
    mins = [r for r in graph.layers if isinstance(r, MinGRUHw)]
    acc = {r.gate.out: 0.0 for r in mins}
    sums = {r.gate.x: [0.0, 0.0] for r in mins}
    state = intref.init_state(graph, len(x))
    for t in range(x.shape[1]):
        env, state = intref.step(graph, x[:, t], state)
        for name in top:
            top[name] = max(top[name], float(np.abs(env[name]).max()))
        for r in mins:
            xs = env[r.gate.x].astype(np.float64)
            acc[r.gate.out] = np.maximum(
                acc[r.gate.out], np.abs(xs @ graph.consts[r.gate.W]).max(0)
            )
            sums[r.gate.x][0] += np.abs(xs).mean(0)
            sums[r.gate.x][1] += (xs**2).mean(0)
    n = x.shape[1]
    out: dict = dict(top)
    out |= {f"{k}.acc": v for k, v in acc.items()}
    out |= {f"{k}.abs": v[0] / n for k, v in sums.items()}
    out |= {f"{k}.square": v[1] / n for k, v in sums.items()}
    return out


def starved(name: str, lsb_v: float, target: Target) -> None:
    """Warn when a gate LSB is worth less than STARVED residual comparator offsets."""
    offset = residual_offset_mv(target.comparator) * 1e-3
    if lsb_v < STARVED * offset:
        warnings.warn(
            f"{name}: a gate code step is {1e3 * lsb_v:.3f} mV, {lsb_v / offset:.1f}× the "
            f"residual comparator offset σ {1e3 * offset:.3f} mV (want ≥ {STARVED}×); calibrate "
            "the comparators (comparator.calibration) or give this layer's input fewer bits",
            stacklevel=2,
        )


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
    ranges = ranges or {}
    in_bits = _bits(graph.formats[gate.x])
    x_abs = ranges.get(f"{gate.x}.abs")
    mac_z = mac(f"{rec.name}.Wz", consts[gate.W], in_bits, None, target, x_abs)
    mac_h = mac(f"{rec.name}.Wh", consts[rec.cand.W], in_bits, None, target, x_abs)
    x_fmt = graph.formats[gate.x]
    worst = np.abs(consts[gate.W]).sum(0) * max(abs(x_fmt.lo), x_fmt.hi)  # (O,) units
    seen = ranges.get(f"{gate.out}.acc")
    span = worst if seen is None else np.minimum(worst, np.maximum(1.0, RANGE_MARGIN * seen))
    th = thresholds(gate, consts, target, mac_z["v_per_unit"], span)
    M = np.broadcast_to(np.asarray(consts[gate.M], dtype=np.float64), th["acc"].shape[:1])
    starved(f"{rec.name}.gate", float(np.median(2.0**gate.shift / M)) * mac_z["v_per_unit"], target)
    s_gate = -float(consts[bank_.share]) / float(consts[bank_.keep])  # h − k·s·h + k·s·h̃
    # the k units sample the candidate line: a state code is −M_share/M_cand candidate units
    per_code = -float(consts[bank_.share]) / np.asarray(consts[bank_.cand], dtype=np.float64)
    v_h = np.broadcast_to(mac_h["v_per_unit"] * per_code, (mac_z["outputs"],)).copy()
    n_eff = np.full(mac_z["outputs"], 1 / s_gate)
    h_range = state_range(graph, bank_.out, ranges) * float(np.mean(v_h))
    comparators, decisions = adc_cost(target, th["acc"].shape[1])
    return {
        "kind": "mingru_hw",
        "layer": rec.name,
        "gate_mac": mac_z,
        "cand_mac": mac_h,
        "gate_thresholds": th,
        "gate_to_units": list(range(gate.hi + 1)),
        "s_gate": s_gate,
        "bank": bank(f"{rec.name}.state", n_eff, gate.hi, v_h, target, strict, 0.5 * h_range),
        "comparators": mac_z["outputs"] * (comparators + 1),  # the ADC's and the output's
        "decisions": mac_z["outputs"] * (decisions + 1),
        "dac_updates": mac_z["outputs"] * (decisions if target.comparator.adc == "sar" else 0),
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
        "comparators": H * adc_cost(target, y.hi - y.lo)[0],
        "decisions": H * adc_cost(target, y.hi - y.lo)[1],
        "dac_updates": H * adc_cost(target, y.hi - y.lo)[1] * (target.comparator.adc == "sar"),
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


PUBLISHED_FJ_PER_BIT_OP = (1.0, 5.0)  # charge-domain IMC macros, energy per 1-bit operation


def totals(layers: list[dict], target: Target) -> dict:
    """Capacitance, area, switches, comparators and the energy per timestep: C·V_DD·ΔV of the
    MAC rows and the switched bank units, comparator decisions, threshold-DAC updates (a SAR's
    decisions), switch drivers (half the switches toggle), the clock (per column and phase) and
    the static references over the step; per MAC and per 1-bit operation (2 per 1-bit MAC)."""
    cap = switches = comparators = decisions = dac = cycles = columns = macs = bit_ops = 0.0
    breakdown = dict.fromkeys(("mac", "state_banks", "comparators", "threshold_dac"), 0.0)
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
            columns += m["outputs"]
            macs += m["macs"]
            bit_ops += 2 * m["macs"] * m["input_bits"] * m["weight_bits"]
        cap += layer["bank"]["capacitance_ff"]
        switches += layer["bank"]["switches"]
        breakdown["state_banks"] += layer["bank"]["energy_fj"]
        comparators += layer["comparators"]
        decisions += layer["decisions"]
        dac += layer["dac_updates"]
    e, step_ns = (
        target.energy,
        cycles * target.timing.phases_per_step / target.timing.clock_mhz * 1e3,
    )
    breakdown["comparators"] = decisions * e.comparator_fj
    breakdown["threshold_dac"] = dac * e.dac_fj
    breakdown["switches"] = switches * 0.5 * e.switch_fj
    breakdown["clock"] = columns * target.timing.phases_per_step * cycles * e.clock_fj
    breakdown["references"] = e.reference_uw * 1e-6 * step_ns * 1e-9 * 1e15
    energy = sum(breakdown.values())
    return {
        "capacitance_pf": cap / 1e3,
        "area_mm2": cap * target.capacitor.area_um2_per_ff / 1e6
        + sum(d["area_mm2"] for d in lines),
        "delay_line_bits": sum(d["storage_bits"] for d in lines),
        "switches": int(switches),
        "comparators": int(comparators),
        "decisions_per_step": int(decisions),
        "energy_per_step_pj": energy / 1e3,
        "energy_breakdown_pj": {k: v / 1e3 for k, v in breakdown.items()},
        "macs_per_step": int(macs),
        "fj_per_mac": energy / macs,
        "fj_per_bit_op": energy / bit_ops,
        "published_fj_per_bit_op": list(PUBLISHED_FJ_PER_BIT_OP),
        "time_per_step_ns": step_ns,
    }
