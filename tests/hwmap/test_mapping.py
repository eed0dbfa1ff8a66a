"""Mapping: physical realizations that reproduce the integer graph; clear refusals."""

import numpy as np
import pytest

from hwmap.intref import Numpy
from hwmap.lower import lower
from hwmap.mapping import MappingError, map_graph
from hwmap.ops import Affine, Term
from hwmap.targets import load_target
from qssm.runs import load_run_model


def mapped(tiny_run, family, target="minimalist_like", **changes):
    """The tiny run mapped onto ``target`` with some of its sections changed."""
    graph = lower(load_run_model(tiny_run(family))[0])
    t = load_target(target)
    for section, fields in changes.items():
        t = t.model_copy(update={section: getattr(t, section).model_copy(update=fields)})
    return graph, map_graph(graph, t), t


def test_differential_units_with_constant_column_totals(tiny_run):
    graph, mapping, _ = mapped(tiny_run, "mingru_hw")
    for layer in mapping["layers"]:
        for key in ("gate_mac", "cand_mac"):
            m = layer[key]
            assert np.all(m["pos_units"] + m["dummy_pos"] == m["units_per_side"])
            assert np.all(m["neg_units"] + m["dummy_neg"] == m["units_per_side"])
            assert np.all(np.minimum(m["pos_units"], m["neg_units"]) == 0)
    W = graph.consts["blocks.0.gru.Wz.W"]
    m = mapping["layers"][0]["gate_mac"]
    assert np.array_equal(m["pos_units"] - m["neg_units"], W)


def test_gate_thresholds_reproduce_the_integer_codes(tiny_run):
    """Exhaustively over every accumulator value the MAC can reach, and with any error below
    ½ LSB on it: the thresholds sit midway between the integer accumulators they separate."""
    graph, mapping, _ = mapped(tiny_run, "mingru_hw")
    op = next(o for o in graph.step if o.out == "blocks.0.gru.gate")
    layer = mapping["layers"][0]
    mac, *rest = op.terms
    W = graph.consts[mac.inputs[1]]  # (K, O)
    reach = int(np.abs(W).sum(0).max() * 128)
    acc = np.arange(-reach, reach + 1)[:, None] * np.ones((1, W.shape[1]), dtype=np.int64)
    # the gate op with its MAC's accumulator given as a tensor
    terms = (Term("mul", ("acc",), mac.weight), *rest)
    fake = Affine(out="gate", terms=terms, shift=op.shift, lo=op.lo, hi=op.hi)
    expected = fake.eval(Numpy({"acc": acc}, graph.consts))
    t = layer["gate_thresholds"]["acc"]  # (O, codes)
    for error in (-0.499, 0.0, 0.499):
        got = layer["gate_thresholds"]["lo"] + (acc[..., None] + error >= t).sum(-1)
        assert np.array_equal(got, expected)


def test_gate_bank_shares_exactly_the_gate_scale(tiny_run):
    _, mapping, _ = mapped(tiny_run, "mingru_hw")
    for layer in mapping["layers"]:
        bank = layer["bank"]
        assert np.allclose(layer["s_gate"] * bank["units_effective"], 1.0)
        assert bank["switchable_units"] == 63 and np.all(bank["remainder_ff"] >= 0)
    totals = mapping["totals"]
    assert totals["capacitance_pf"] > 0 and totals["energy_per_step_pj"] > 0
    parts = totals["energy_breakdown_pj"]
    assert abs(sum(parts.values()) - totals["energy_per_step_pj"]) < 1e-9


def test_s4d_real_retention_units(tiny_run):
    graph, mapping, t = mapped(tiny_run, "s4d_real_hw", "generic_28nm")
    layer = mapping["layers"][0]
    k, n_eff = layer["retention_units"], layer["bank"]["units_effective"]
    op = next(o for o in graph.step if o.out == "blocks.0.ssm.x_re'")
    M = graph.consts[op.terms[0].weight] / 2.0**op.shift
    assert np.all(k >= 1) and np.all(k <= n_eff)  # |Ā| < 1: at least one unit shares
    assert np.allclose(1 - k / n_eff, M, atol=1e-6)  # Ā = 1 − k/N


MINGRU_HW = ("mingru_hw", "minimalist_like")


@pytest.mark.parametrize(
    "family, target, changes, words",
    [
        ("s4d", "generic_28nm", {}, ["complex S4D", "s4d_real"]),
        ("mgrade", "generic_28nm", {}, ["mgrade", "mingru_hw"]),
        (*MINGRU_HW, {"weights": {"max_units": 1}}, ["blocks.0.gru.Wz", "weights.max_units"]),
        (*MINGRU_HW, {"inputs": {"encoding": "binary"}}, ["bit-serial", "inputs.encoding"]),
        (*MINGRU_HW, {"array": {"rows": 4, "tiling": False}}, ["array.tiling"]),
        (*MINGRU_HW, {"state_bank": {"units": 32}}, ["state_bank.units"]),
        ("s4d_real", "generic_28nm", {}, ["complex: polar"]),
    ],
)
def test_unmappable_models_are_refused_with_the_fix(tiny_run, family, target, changes, words):
    with pytest.raises(MappingError) as err:
        mapped(tiny_run, family, target, **changes)
    for word in words:
        assert word in str(err.value)


def test_delay_lines_are_sized_from_the_learned_delays(tiny_run):
    """mgrade_hw: a ring buffer per layer as deep as the longest learned delay; layer 0 holds
    the 8-bit input pixel (8 bits a step, not the encoder's 8 channels × 8 bits), layer 1 the
    8 comparator bits; its bits, area and energy in the totals; a target with shorter lines
    refuses it, naming the field."""
    model = load_run_model(tiny_run("mgrade_hw"))[0]
    graph, mapping, t = mapped(tiny_run, "mgrade_hw")
    expected_bits = 0
    holds = ("input", "blocks.0.gru.out")
    for block, layer, held in zip(model.blocks, mapping["layers"], holds, strict=True):
        depth = int(block.conv.taps().max()) + 1
        line = layer["delay_line"]
        assert (line["depth"], line["bits_per_step"], line["holds"]) == (depth, 8, held)
        expected_bits += 8 * depth
    totals = mapping["totals"]
    assert totals["delay_line_bits"] == expected_bits
    assert totals["energy_breakdown_pj"]["delay_lines"] > 0
    cap_area = totals["capacitance_pf"] * 1e3 * t.capacitor.area_um2_per_ff / 1e6
    assert totals["area_mm2"] == pytest.approx(cap_area + expected_bits * 0.25e-6)
    depth = mapping["layers"][0]["delay_line"]["depth"]
    with pytest.raises(MappingError, match=r"delay_line\.max_depth"):
        mapped(tiny_run, "mgrade_hw", delay_line={"max_depth": depth - 1})
    with pytest.raises(MappingError, match=r"delay_line\.max_bits"):
        mapped(tiny_run, "mgrade_hw", delay_line={"max_bits": expected_bits - 1})


def test_row_dac_inputs_and_the_voltage_per_unit(tiny_run):
    """Layer 1's 8-bit inputs through a row DAC: one cycle, V_swing/2^7 per code, and a unit of
    the accumulator is that times C_u / C_line (hand-computed from the target)."""
    _, mapping, t = mapped(tiny_run, "mingru_hw")
    m = mapping["layers"][0]["gate_mac"]
    assert m["input_bits"] == 8 and m["cycles"] == 1
    units = m["fan_in"] * m["units_per_side"]
    c_line = units * 1.0 * (1 + t.parasitic.per_unit) + t.parasitic.fixed_ff
    assert m["c_line_ff"] == pytest.approx(c_line)
    assert m["v_per_unit"] == pytest.approx(0.6 / 128 * 1.0 / c_line)
    serial = mapped(tiny_run, "mingru_hw", inputs={"encoding": "bit_serial"})[1]
    assert serial["layers"][0]["gate_mac"]["cycles"] == 8


def test_candidate_line_sets_the_state_voltage(tiny_run):
    """No amplifier between the candidate line and the bank: a state code is worth −M_share /
    M_cand candidate units, so h̃'s voltage on the line is its voltage in the bank."""
    graph, mapping, _ = mapped(tiny_run, "mingru_hw")
    for rec, layer in zip(graph.layers, mapping["layers"], strict=True):
        share, cand = graph.consts[rec.bank.share], graph.consts[rec.bank.cand]
        want = layer["cand_mac"]["v_per_unit"] * -share / cand
        assert np.allclose(layer["bank"]["v_per_code"], want)


@pytest.mark.parametrize("adc", ["sar", "flash"])
def test_gate_adc_is_costed_as_it_is_simulated(tiny_run, adc):
    _, mapping, t = mapped(tiny_run, "mingru_hw", comparator={"adc": adc})
    layer = mapping["layers"][0]
    thresholds, cols = layer["gate_thresholds"]["acc"].shape[1], layer["gate_mac"]["outputs"]
    per_column = 1 if adc == "sar" else thresholds  # + the output comparator
    assert layer["comparators"] == cols * (per_column + 1)
    decisions = int(np.ceil(np.log2(thresholds + 1))) if adc == "sar" else thresholds
    assert layer["decisions"] == cols * (decisions + 1)
    tot = mapping["totals"]
    assert tot["energy_breakdown_pj"]["comparators"] == pytest.approx(
        sum(L["decisions"] for L in mapping["layers"]) * t.energy.comparator_fj / 1e3
    )
    assert sum(tot["energy_breakdown_pj"].values()) == pytest.approx(tot["energy_per_step_pj"])
    assert tot["fj_per_mac"] == pytest.approx(
        1e3 * tot["energy_per_step_pj"] / tot["macs_per_step"]
    )


def test_a_starved_layer_is_named(tiny_run):
    with pytest.warns(UserWarning, match=r"blocks\.\d\.gru\.gate: a gate code step"):
        mapped(tiny_run, "mingru_hw", comparator={"calibration": "none", "offset_mv": 20.0})
