"""Target files: the shipped ones load; a bad one names the field."""

import pytest

from hwmap.targets import TARGETS, TargetError, load_target


@pytest.mark.parametrize("name", ["minimalist_like", "generic_28nm"])
def test_shipped_targets_load_by_name_and_path(name):
    by_name = load_target(name)
    assert by_name.name == name
    assert load_target(TARGETS / f"{name}.yaml") == by_name


def test_literature_defaults_of_the_generic_target():
    t = load_target("generic_28nm")
    assert t.capacitor.unit_ff == 1.0 and t.capacitor.mismatch_pct_sqrt_ff == 0.66
    assert t.comparator.offset_mv == 5.0 and t.comparator.trimmed_offset_mv == 1.0
    assert t.comparator.noise_mv == 0.5
    assert (t.parasitic.per_unit, t.parasitic.fixed_ff) == (0.3, 2.0)
    assert t.with_unit(4.0).capacitor.unit_ff == 4.0 and t.capacitor.unit_ff == 1.0


@pytest.mark.parametrize(
    "text, words",
    [
        ("name: x\ncapacitor: {unit_ff: -1}\n", ["capacitor.unit_ff", "-1"]),
        ("name: x\ncomparator: {offset: 5}\n", ["comparator.offset"]),
        ("name: x\ninputs: {encoding: thermometer}\n", ["inputs.encoding", "thermometer"]),
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
