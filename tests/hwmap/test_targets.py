"""Target files: the shipped ones load; a bad one names the field."""

import math

import numpy as np
import pytest

from hwmap.simulate import offset_draw
from hwmap.targets import TARGETS, TargetError, leak_fraction, load_target, residual_offset_mv


@pytest.mark.parametrize("name", ["minimalist_like", "generic_28nm"])
def test_shipped_targets_load_by_name_and_path(name):
    by_name = load_target(name)
    assert by_name.name == name
    assert load_target(TARGETS / f"{name}.yaml") == by_name


def test_literature_defaults_of_the_generic_target():
    t = load_target("generic_28nm")
    assert t.capacitor.unit_ff == 1.0 and t.capacitor.mismatch_pct_sqrt_ff == 0.66
    assert t.comparator.offset_mv == 5.0 and t.comparator.calibration == "trim"
    assert t.comparator.noise_mv == 0.5
    assert (t.parasitic.per_unit, t.parasitic.fixed_ff) == (0.3, 2.0)
    assert t.with_unit(4.0).capacitor.unit_ff == 4.0 and t.capacitor.unit_ff == 1.0


@pytest.mark.parametrize(
    "text, words",
    [
        ("name: x\ncapacitor: {unit_ff: -1}\n", ["capacitor.unit_ff", "-1"]),
        ("name: x\ncomparator: {offset: 5}\n", ["comparator.offset"]),
        ("name: x\ninputs: {encoding: thermometer}\n", ["inputs.encoding", "thermometer"]),
        ("name: x\ncomparator: {trimmed_offset_mv: 1}\n", ["comparator.trimmed_offset_mv"]),
        ("name: x\ncomparator: {calibration: magic}\n", ["comparator.calibration", "magic"]),
        ("name: x\ncomparator: {adc: pipeline}\n", ["comparator.adc", "pipeline"]),
        ("name: x\nparasitic: {spread_global_pct: 150}\n", ["parasitic.spread_global_pct"]),
        ("name: x\nleakage: {droop_per_step: 0.1}\n", ["leakage.droop_per_step"]),
        ("name: x\nprocess: {vdd_v: 1.0, vcm_v: 1.2}\n", ["process.vcm_v", "vdd_v"]),
        ("capacitor: {unit_ff: 1}\n", ["name"]),
        ("[1, 2]\n", ["mapping of sections"]),
    ],
)
def test_bad_target_files_name_the_field(tmp_path, text, words):
    path = tmp_path / "chip.yaml"
    path.write_text(text)
    with pytest.raises(TargetError) as err:
        load_target(path)
    for word in words:
        assert word in str(err.value)


def test_unknown_target_lists_the_shipped_ones():
    with pytest.raises(TargetError, match="minimalist_like"):
        load_target("no_such_chip")


@pytest.mark.parametrize(
    "calibration, expected_mv",
    [  # hand-computed from σ_o = 5 mV, 4 trim bits, 0.5 mV noise, 64 samples, A = 100
        ("none", 5.0),
        ("trim", 6 * 5.0 / 16 / math.sqrt(12)),  # 0.541 mV
        ("foreground", 0.5 / 8),
        ("autozero", 5.0 / 101),
    ],
)
def test_residual_offset_follows_the_calibration_and_the_drawn_chips(calibration, expected_mv):
    """The stated σ (the docstring's physics) against 20,000 offsets drawn and corrected the way
    the simulator corrects them (a trim DAC's nearest code, a noisy measurement, a loop)."""
    c = load_target("minimalist_like").comparator.model_copy(update={"calibration": calibration})
    assert residual_offset_mv(c) == pytest.approx(expected_mv)
    kept, corrected = offset_draw(np.random.default_rng(0), c, (20_000,))
    assert 1e3 * np.std(kept - corrected) == pytest.approx(expected_mv, rel=0.05)


def test_leakage_from_current_step_time_and_temperature():
    t = load_target("minimalist_like")  # 5 fA at 300 K, doubling every 10 K, 0.6 V swing
    assert leak_fraction(t, 80.0, 200e-9) == pytest.approx(5e-15 * 200e-9 / (80e-15 * 0.6))
    hot = t.model_copy(update={"process": t.process.model_copy(update={"temperature_k": 330})})
    assert leak_fraction(hot, 80.0, 200e-9) == pytest.approx(8 * leak_fraction(t, 80.0, 200e-9))
