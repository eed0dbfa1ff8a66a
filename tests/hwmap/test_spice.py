"""ngspice cross-check (hwmap/spice.py, `qssm map-to-hw --spice`): netlists checked against the
mapping without ngspice; hand-computed charge-sharing cases and the behavioural formulas in
ngspice."""

import json
import re
import shutil

import numpy as np
import pytest

from hwmap import spice
from hwmap.mapping import bank as mapping_bank
from hwmap.mapping import mac, swing
from hwmap.targets import load_target
from qssm.cli import main

needs_ngspice = pytest.mark.skipif(
    shutil.which("ngspice") is None,
    reason="ngspice is not on PATH (Debian: apt-get install ngspice; .ci/run installs it)",
)
TARGET = load_target("minimalist_like")  # 1 fF units, V_cm 0.6 V, 12-bit threshold DAC


def caps(text: str) -> list[tuple[str, str, str, float]]:
    """(name, node, node, fF) of every capacitor of a netlist."""
    found = re.findall(r"^(c\S+) (\S+) (\S+) ([-0-9.e+]+)f$", text, flags=re.M)
    return [(n, a, b, float(v)) for n, a, b, v in found]


def test_column_netlist_holds_the_mapped_units_dummies_and_parasitic():
    W = np.random.default_rng(0).integers(-2, 3, (5, 3))
    m = mac("t", W, 8, None, TARGET)
    d = spice.column_draws(m, None, TARGET, np.random.default_rng(1), 4, mismatch=False)
    text, vectors = spice.column_netlist(m, TARGET, d)
    assert vectors == [f"v(l{s}{j})" for j in range(4) for s in "pn"]
    assert "dac" not in text  # no thresholds given: no DAC, no comparator
    c = caps(text)
    for j, col in enumerate(d["col"]):
        for s, signal in (("p", np.maximum(W, 0)), ("n", np.maximum(-W, 0))):
            line = [x for x in c if x[1] == f"l{s}{j}"]
            assert sum(x[3] for x in line) == pytest.approx(m["c_line_ff"])  # units + C_par
            driven = [x for x in line if x[2] not in ("vcm", "0")]
            assert len(driven) == signal[:, col].sum()  # the others are dummies at V_cm
            for name, _, rail, _ in driven:
                row = int(name.split("_")[1])
                assert rail == f"x{d['x'][j, row]}".replace("-", "m")
    v_code = swing(TARGET) / 128  # 8-bit bit-serial input: the MSB plane spans the swing
    for code in np.unique(d["x"]):
        src = re.search(rf"^vx{code}".replace("-", "m") + r" \S+ 0 pwl\((.*)\)$", text, re.M)
        last = float(src.group(1).split()[-1])
        assert last == pytest.approx(TARGET.process.vcm_v + code * v_code, abs=1e-12)
    # the behavioural column is the integer product when ideal
    assert np.array_equal(spice.column_model(m, d), (d["x"] * W[:, d["col"]].T).sum(1))


def test_bank_netlist_gates_k_units_of_the_bank():
    """Six switchable units of C_u with their switch parasitic (0.3 C_u), the remainder of an
    8.5-unit bank less the node's 2 fF parasitic, and that parasitic: 8.5 · 1.3 fF in all."""
    bank = mapping_bank("b", np.array([8.5, 8.5]), 6, 1e-4, TARGET)
    d = spice.bank_draws(bank, TARGET, np.random.default_rng(2), 5, mismatch=True)
    text, vectors = spice.bank_netlist(bank, TARGET, d)
    assert vectors == [f"v(b{j})" for j in range(5)]
    c = caps(text)
    for j, k in enumerate(d["k"]):
        mine = [x for x in c if re.fullmatch(rf"c\D+{j}(_\d+)?", x[0])]
        units = 1.3 * (6 + d["eps"][j].sum())
        total = units + (2.5 * 1.3 - 2.0) * (1 + d["rem_eps"][j]) + 2.0
        assert sum(x[3] for x in mine) == pytest.approx(total)
        assert len(re.findall(rf"^sg{j}_\d+ ", text, re.M)) == k  # one gate switch per unit
        assert len(re.findall(rf"^sc{j}_\d+ .* smp 0 swm$", text, re.M)) == k


@needs_ngspice
def test_two_capacitor_charge_sharing_by_hand():
    """One gated unit (1 fF) against a 1 fF remainder and the 2 fF bank parasitic: k = 1 gives
    (3 fF · h + 1 fF · h̃) / 4 fF, k = 0 keeps h."""
    bank = {"switchable_units": 1, "units_effective": np.array([2.0]), "unit_ff": 1.0}
    bank |= {"remainder_ff": np.array([1.0]), "parasitic_ff": 2.0}
    d = {"col": np.zeros(3, int), "k": np.array([1, 0, 1]), "h": np.array([100, 100, -200])}
    d |= {"cand": np.array([300, 300, 400]), "eps": np.zeros((3, 1)), "rem_eps": np.zeros(3)}
    d["v"] = np.full(3, 1e-3)
    v = spice.run_ngspice(*spice.bank_netlist(bank, TARGET, d)) - TARGET.process.vcm_v
    assert v == pytest.approx([0.150, 0.100, -0.050], abs=1e-6)


@needs_ngspice
def test_mac_column_and_threshold_dac_by_hand():
    """Rows x = (3, −1) on weights (+1, −2), 2 units per side: C_line = 4 C_u + 0.3·4 C_u +
    2 fF = 7.2 fF; ΔV+ − ΔV− = (3·1 + 1·2) · (0.6 V / 128) · 1 fF / 7.2 fF = 3.2552 mV, which
    DAC code 11 (3.2227 mV) is below and code 12 (3.5156 mV) above."""
    m = mac("t", np.array([[1], [-2]]), 8, None, TARGET)
    assert m["c_line_ff"] == pytest.approx(7.2)
    d = {"col": np.zeros(2, int), "x": np.array([[3, -1], [3, -1]]), "dac": np.array([11, 12])}
    d |= {"eps": np.zeros((2, 2, 2, 2)), "dac_eps": np.zeros((2, 13))}
    v = spice.run_ngspice(*spice.column_netlist(m, TARGET, d)).reshape(2, 4)
    vcm, step = TARGET.process.vcm_v, 1.2 / 4096
    assert v[:, 0] - v[:, 1] == pytest.approx([5 * 0.6 / 128 / 7.2] * 2, abs=1e-7)
    assert v[:, 2] - vcm == pytest.approx([11 * step, 12 * step], abs=1e-7)
    assert v[0, 3] > 1.1 and v[1, 3] < 0.1  # comparator: above, then below the threshold


def check_pieces(result: dict, out, target, c_line_ff: float) -> None:
    """Each piece against the behavioural formulas, within the tolerance its physics allows;
    ``c_line_ff``: the smallest line capacitance (the leakage through the open reset switch,
    ≤ swing · t / (R_off · C_line) per line, is the column's floor)."""
    step_mv = 2e3 * swing(target) / 2**target.comparator.dac_bits
    t_float = spice.T_END - spice.T_DRIVE
    leak_mv = 2e3 * swing(target) * t_float / (spice.ROFF * c_line_ff * 1e-15) + 1e-6
    for p in result["pieces"]:
        assert (out / p["netlist"]).exists()
        if p["piece"].endswith("column") and not p["mismatch"]:  # exact: Σ x·w·v_per_unit
            assert p["max_diff_mv"] < leak_mv
        elif p["piece"].endswith("column"):  # the mismatch's change of C_line: second order
            assert p["max_diff_mv"] < 0.01 * p["max_signal_mv"]
        elif p["piece"] == "threshold DAC":
            check_decisions(p, step_mv)
        elif p["piece"] == "state bank":  # charge sharing, the bank parasitic in z: exact
            assert p["max_diff_mv"] < 0.01


def check_decisions(p: dict, step_mv: float) -> None:
    """ngspice's comparator against the integer model: on the draws whose integer accumulator
    is one of the two a boundary separates (at least a quarter of them), every decision agrees
    wherever the errors (mismatch, the DAC's step) stay below ½ LSB — which holds only for a
    threshold midway between the codes: at ⌈τ⌉ an error below zero flips an exact ⌈τ⌉.
    Without mismatch the DAC's quantization is the only difference, and the simulator's
    comparator (line ≥ DAC code's volts) decides as ngspice does."""
    assert p["critical_draws"] >= DRAWS // 4
    if p["max_error_lsb"] + p["dac_step_lsb"] / 2 < 0.5:
        assert p["integer_agreement"] == 1.0
    if not p["mismatch"]:
        assert p["max_diff_mv"] <= step_mv / 2 + 1e-6  # the DAC's quantization only
        assert p["decision_agreement"] == 1.0
    else:  # the DAC's capacitor errors and C_line's change, which the simulator leaves out
        assert p["decision_agreement"] >= 0.9


DRAWS = spice.DRAWS


@needs_ngspice
def test_map_to_hw_spice_matches_the_behavioural_model(tiny_run, tmp_path):
    out = tmp_path / "hw"
    args = ["map-to-hw", str(tiny_run("mingru_hw")), "--target", "minimalist_like"]
    args += ["--out", str(out), "--limit", "4", "--mc-seeds", "0", "--quiet"]
    assert main([*args, "--spice"]) == 0
    result = json.loads((out / "spice.json").read_text())
    layers = json.loads((out / "mapping.json").read_text())["layers"]
    c_line = min(layer["gate_mac"]["c_line_ff"] for layer in layers)
    check_pieces(result, out, TARGET, c_line)
    pieces = [(p["piece"], p["mismatch"]) for p in result["pieces"]]
    assert pieces == 2 * [(k, m) for m in (False, True) for k in PIECES]  # two layers
    # layer 2 (binary inputs, DAC step ≪ 1 LSB): mismatch errors of ≈ 0.03 LSB never flip
    second = [p for p in result["pieces"][6:] if p["piece"] == "threshold DAC"]
    assert all(p["integer_agreement"] == 1.0 for p in second)
    assert "ngspice cross-check" in (out / "report.md").read_text()
    assert main(args) == 0  # mapped again without --spice: no stale cross-check is left
    assert not (out / "spice.json").exists() and not (out / "spice").exists()


PIECES = ("gate_mac column", "threshold DAC", "state bank")


@needs_ngspice
def test_analog_inputs_and_a_per_element_bank(tmp_path):
    """An S4D-Real-style layer: a readout MAC driven by analog state codes, no thresholds, a
    bank whose effective units differ per state element (H × n)."""
    t = load_target("generic_28nm")
    W = np.random.default_rng(3).integers(-3, 4, (4, 2))
    m = mac("s.C", W, 1, swing(t) / 1000, t)  # state codes up to ±1000 span the swing
    n_eff = np.array([[20.0, 30.5], [40.25, 25.0]])
    bank = mapping_bank("s.state", n_eff, 12, swing(t) / 1000, t)
    layer = {"layer": "s", "readout_mac": m, "bank": bank}
    result = spice.cross_check({"layers": [layer]}, t, tmp_path, draws=12)
    check_pieces(result, tmp_path, t, m["c_line_ff"])
    assert [p["piece"] for p in result["pieces"]] == 2 * ["readout_mac column", "state bank"]


def test_spice_without_ngspice_is_refused_before_anything_is_written(
    tiny_run, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(spice.shutil, "which", lambda name: None)
    out = tmp_path / "hw"
    args = ["map-to-hw", str(tiny_run("mingru_hw")), "--target", "minimalist_like"]
    assert main([*args, "--out", str(out), "--spice"]) == 2
    assert "ngspice" in capsys.readouterr().err
    assert not out.exists()
