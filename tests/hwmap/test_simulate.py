"""The charge-domain simulator: the integer model when ideal (earned, in volts), each
non-ideality has an effect of the size physics gives it, chips are seeded."""

import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from hwmap import montecarlo, simulate
from hwmap.intref import Numpy, init_state, step
from hwmap.lower import lower
from hwmap.mapping import map_graph, unit_sigma
from hwmap.targets import leak_fraction, load_target, swing
from hwmap.verify import sim_ideal_vs_intref
from qssm.recipe import parse_recipe, recipe_path
from qssm.runs import load_data, load_run_model, open_run, quantize_run
from qssm.sweep import one_thread

CASES = [
    ("mingru_hw", "minimalist_like"),
    ("mgrade_hw", "minimalist_like"),
    ("s4d_real_hw", "generic_28nm"),
]
ONLY_MINGRU = {"dac", "kickback", "parasitic", "clipping"}  # the minGRU core's parts


def setup(tiny_run, recipe_of, family, target):
    graph, t = lower(load_run_model(tiny_run(family))[0]), load_target(target)
    test = load_data(recipe_of(family)).test
    return graph, map_graph(graph, t), t, test.x.numpy()[:16], test.y.numpy()[:16]


def with_fields(t, **sections):
    for name, fields in sections.items():
        t = t.model_copy(update={name: getattr(t, name).model_copy(update=fields)})
    return t


@pytest.mark.parametrize("family, target", CASES)
def test_ideal_simulator_is_the_integer_reference(tiny_run, recipe_of, family, target):
    graph, mapping, t, x, _ = setup(tiny_run, recipe_of, family, target)
    r = sim_ideal_vs_intref(graph, mapping, t, x)
    assert r["decisions"] > 0 and r["prediction_agreement"] == 1.0
    # every decision but those on a state the reference itself rounds to 0
    assert (
        r["decision_agreement"] * r["decisions"] + r["decision_agreement_unresolved"]
        == (r["decisions"])
    )
    assert r["dac_agreement"] >= 0.999


@pytest.mark.parametrize("family, target", CASES)
def test_every_nonideality_moves_the_outputs_and_chips_are_seeded(
    tiny_run, recipe_of, family, target
):
    graph, _, t, x, y = setup(tiny_run, recipe_of, family, target)
    t = with_fields(  # exaggerated, so every effect shows on 16 sequences
        t.with_unit(0.1).with_offset(20.0),
        leakage={"current_fa": 1e7, "charge_injection_mv": 50.0},
        comparator={"kickback_fc": 5.0, "dac_bits": 4},
    )
    mapping = map_graph(graph, t)
    _, ideal = simulate.Simulator(graph, mapping, t, on=[], seeds=[0]).run(x, trace=True)
    skip = {"clipping"} | (ONLY_MINGRU if family == "s4d_real_hw" else set())
    for name in set(simulate.NONIDEALITIES) - skip:  # each moves some analog op's outputs
        # kickback acts where comparators decide at once on one line: a flash gate ADC
        tn = with_fields(t, comparator={"adc": "flash"}) if name == "kickback" else t
        m = map_graph(graph, tn) if name == "kickback" else mapping
        ideal_n = ideal if name != "kickback" else None
        if ideal_n is None:
            _, ideal_n = simulate.Simulator(graph, m, tn, on=[], seeds=[0]).run(x, trace=True)
        _, trace = simulate.Simulator(graph, m, tn, on=[name], seeds=[0]).run(x, trace=True)
        assert any(not np.array_equal(trace[k], ideal_n[k]) for k in ideal_n), name
    if family == "mingru_hw":  # clipping holds the lines and the state inside the rails
        rail = with_fields(t, leakage={"charge_injection_mv": 2000.0})
        for on, inside in ((["injection"], False), (["injection", "clipping"], True)):
            sim = simulate.Simulator(graph, mapping, rail, on=on, seeds=[0])
            _, trace = sim.run(x, trace=True)
            assert (np.abs(trace["blocks.0.gru.h'"]).max() <= swing(rail) + 1e-6) == inside
    sims = [simulate.Simulator(graph, mapping, t, simulate.NONIDEALITIES, [1, 2]) for _ in "ab"]
    (a, trace), (b, _) = (sim.run(x, trace=True) for sim in sims)
    assert np.array_equal(a, b)  # same seeds, same chips, same noise
    assert any(not np.array_equal(v[0], v[1]) for v in trace.values())  # two chips differ
    static = ["mismatch", "offset"]  # chip 2 is chip 2 whichever batch it is simulated in
    alone = simulate.Simulator(graph, mapping, t, static, [2]).run(x)[0]
    assert np.array_equal(
        alone[0], simulate.Simulator(graph, mapping, t, static, [1, 2]).run(x)[0][1]
    )
    acc = simulate.accuracy(simulate.Simulator(graph, mapping, t, ["offset"], [0, 1, 2]), x, y)
    assert acc.shape == (3,) and np.all((0 <= acc) & (acc <= 1))


def first_layer_inputs(graph, x):
    """The first minGRU layer's MAC inputs at step 0 (the integer reference)."""
    env, _ = step(graph, x[:, 0], init_state(graph, len(x)))
    return env[graph.layers[0].gate.x]


@pytest.mark.parametrize("adc", ["sar", "flash"])
def test_gate_adc_counts_the_thresholds_its_line_passes(tiny_run, recipe_of, adc):
    """The gate ADC kernel against a brute-force count of the chip's thresholds (offsets, DAC
    steps, mismatch and parasitic on; a flash's offsets reorder nothing the count needs)."""
    graph, _, t, x, _ = setup(tiny_run, recipe_of, "mingru_hw", "minimalist_like")
    t = with_fields(t.with_offset(3.0), comparator={"adc": adc, "dac_bits": 6})
    mapping = map_graph(graph, t)
    on = ["mismatch", "parasitic", "offset", "dac"]
    sim = simulate.Simulator(graph, mapping, t, on, seeds=[0, 1], dtype=np.float64)
    rec, layer, draws = graph.layers[0], mapping["layers"][0], sim.chips.layers[0]
    got = sim.run(x[:, :1], trace=True)[1][rec.gate.out][:, :, 0]  # (S, B, O) at step 0
    units = np.matmul(first_layer_inputs(graph, x).astype(np.float64), draws["gate_mac"]["W"])
    v = units * np.float64(layer["gate_mac"]["v_per_unit"]) * draws["gate_mac"]["gain"]
    theta = draws["thresholds"].reshape(2, v.shape[-1], -1)  # (S, O, padded)
    want = layer["gate_thresholds"]["lo"] + (theta[:, None] <= v[..., None]).sum(-1)
    assert np.array_equal(got, want)


def test_a_sar_comparator_kicks_back_no_charge_it_keeps(tiny_run, recipe_of):
    """A SAR's comparator is reset between decisions and the output comparator before the bank
    shares again: the charge a decision kicks onto a floating node flows back (charge
    conservation on a capacitive node), so kickback changes no code of a SAR chip, however
    large."""
    graph, _, t, x, _ = setup(tiny_run, recipe_of, "mingru_hw", "minimalist_like")
    t = with_fields(t, comparator={"kickback_fc": 50.0})
    mapping = map_graph(graph, t)
    runs = [
        simulate.Simulator(graph, mapping, t, on, [0]).run(x, trace=True)
        for on in ([], ["kickback"])
    ]
    assert all(np.array_equal(runs[0][1][k], runs[1][1][k]) for k in runs[0][1])


def test_gated_state_kernel_is_the_charge_sharing_formula(tiny_run, recipe_of):
    """The fused kernel against the numpy expressions, bit for bit in float32: h + z_k(h̃ − h)
    with the chip's z, kT/C of the k sampled units (the same noise draws), injection where
    k > 0, leakage and the rails."""
    graph, _, t, _, _ = setup(tiny_run, recipe_of, "mingru_hw", "minimalist_like")
    t = with_fields(t, leakage={"current_fa": 1e6, "charge_injection_mv": 5.0})
    mapping = map_graph(graph, t)
    on = ["mismatch", "parasitic", "ktc", "injection", "leakage", "clipping"]
    sim, ref = (simulate.Simulator(graph, mapping, t, on, [0, 1]) for _ in "ab")
    rec, layer = graph.layers[0], mapping["layers"][0]
    bank, z = layer["bank"], ref.chips.layers[0]["z"]  # (S, O, K+1)
    rng = np.random.default_rng(5)
    cols = z.shape[1]
    h = rng.normal(0, 0.4, (2 * 30, cols)).astype(np.float32)
    cand = rng.normal(0, 0.4, h.shape).astype(np.float32)
    k = rng.integers(0, bank["switchable_units"] + 1, h.shape)
    sim.armed = {}
    env = {rec.bank.h: h, rec.bank.z: k, rec.bank.acc: cand}
    got = sim._gated_state(rec, layer, sim.chips.layers[0], None, Numpy(env, graph.consts))
    zk = np.take_along_axis(z, k.reshape(2, 30, cols).transpose(0, 2, 1), 2).transpose(0, 2, 1)
    want = (cand - h) * zk.reshape(h.shape) + h
    c_bank = bank["unit_ff"] * bank["units_effective"] * 1e-15
    sigma = np.sqrt(ref.kT * k * bank["unit_ff"] * 1e-15) / c_bank
    want += sigma.astype(np.float32) * ref.noise(h.shape)
    want += np.float32(t.leakage.charge_injection_mv * 1e-3) * (k > 0)
    c_ff = float(bank["unit_ff"] * bank["units_effective"].mean())
    want *= np.float32(1 - leak_fraction(t, c_ff, ref.step_s))
    want = np.clip(want, -swing(t), swing(t))
    assert got.dtype == np.float32 and np.array_equal(got, want)


def test_mismatch_and_parasitic_spread_have_their_physical_size(tiny_run, recipe_of):
    """Over 400 chips: the line error of unit mismatch is σ_u·√(Σ_j x_j²·|w_j|) units, and the
    gain spread of the parasitic is C_par/C_line·√(σ_global² + σ_local²) — on the gate line,
    read against a replica's references, only the local part."""
    graph, mapping, t, x, _ = setup(tiny_run, recipe_of, "mingru_hw", "minimalist_like")
    rec, m = graph.layers[0], mapping["layers"][0]["gate_mac"]
    xs = first_layer_inputs(graph, x)[:1].astype(np.float64)  # one sequence
    W = graph.consts[rec.gate.W]
    sim = simulate.Simulator(graph, mapping, t, ["mismatch"], list(range(400)), np.float64)
    v = sim._units(np.tile(xs, (400, 1)), sim.chips.layers[0]["gate_mac"]["W"])[:, 0]
    v = v * m["v_per_unit"]
    units = v / m["v_per_unit"] - xs @ W  # (chips, O)
    want = unit_sigma(t) * np.sqrt((xs.T**2 * np.abs(W)).sum(0))
    assert np.allclose(units.std(0), want, rtol=0.2)
    sim = simulate.Simulator(graph, mapping, t, ["parasitic"], list(range(400)), np.float64)
    ratio, p = m["c_parasitic_ff"] / m["c_line_ff"], t.parasitic
    gain = sim.chips.layers[0]["cand_mac"]["gain"][:, 0]  # (chips, O)
    spread = np.hypot(p.spread_global_pct, p.spread_local_pct) / 100
    assert np.std(gain) == pytest.approx(spread * ratio, rel=0.2)
    local = np.std(gain - gain.mean(1, keepdims=True))  # columns of one chip share the global
    assert local == pytest.approx(p.spread_local_pct / 100 * ratio, rel=0.2)
    gate = sim.chips.layers[0]["gate_mac"]["gain"][:, 0]  # against a replica's references
    assert np.std(gate) == pytest.approx(p.spread_local_pct / 100 * ratio, rel=0.2)


def test_unknown_nonideality_is_refused(tiny_run, recipe_of):
    graph, mapping, t, _, _ = setup(tiny_run, recipe_of, "mingru_hw", "minimalist_like")
    with pytest.raises(ValueError, match="mismatch"):
        simulate.Simulator(graph, mapping, t, on=["gremlins"])


MINIMALIST_QUANT = yaml.safe_load(recipe_path("minimalist").read_text())["quant"]

GOLDEN_MC = Path(__file__).resolve().parents[1] / "golden" / "sdigits_mingru_hw_mc.csv"
GOLDEN_COLUMNS = ("id", "chips", "sequences", "ideal", "mean", "p50", "yield_4", "agreement")
GOLDEN_RECIPE = {  # a small hardware minGRU on sdigits (near chance: the table's sensitive
    # figure is the agreement of the chips' predictions with the integer model's)
    "name": "golden_mingru_hw",
    "seed": 0,
    "data": {"name": "sdigits", "options": {"limit_train": 512, "limit_test": 64}},
    "model": {"family": "mingru_hw", "d_model": 16, "n_layers": 2},
    "float": {"epochs": 12, "batch_size": 32, "lr": 0.01, "mode": "recurrent"},
    "quant": MINIMALIST_QUANT,  # the MINIMALIST recipe's bits
    "ptq": {"calibration_batches": 4, "batch_size": 32},
    "qat": {"epochs": 2, "batch_size": 32},
    "eval": {"batch_size": 64},
}


def test_golden_monte_carlo_table(tmp_path):
    """A small sdigits hardware minGRU on minimalist_like: 4 chips × 64 test sequences for the
    nominal chip and a few settings around it, against tests/golden/sdigits_mingru_hw_mc.csv
    (accuracies within one sequence in 64, yields within one chip). Regenerate on purpose with
    QSSM_WRITE_GOLDEN_MC=1 pytest tests/hwmap/test_simulate.py -k golden."""
    recipe = parse_recipe(GOLDEN_RECIPE)
    data = load_data(recipe)
    run = open_run(tmp_path / "run", recipe, force=False)
    with one_thread():  # binary outputs: the trained model depends on torch's thread count
        quantize_run(recipe, data, run, progress=False)
    graph, t = lower(load_run_model(run)[0]), load_target("minimalist_like")
    x, y = data.test.x.numpy(), data.test.y.numpy()
    rows = montecarlo.settings(t, [0.25], [1.0], [2.0], ablation=False)
    rows += [r for r in montecarlo.settings(t, [], [], [], True) if r["id"] == "without=noise"]
    fit = lambda target: map_graph(graph, target)  # noqa: E731
    got = montecarlo.run(graph, fit, t, x, y, 4, rows, tmp_path / "mc")
    table = [
        [str(r[c]) if c in GOLDEN_COLUMNS[:3] else f"{r[c]:.6f}" for c in GOLDEN_COLUMNS]
        for r in got
    ]
    if os.environ.get("QSSM_WRITE_GOLDEN_MC"):
        GOLDEN_MC.write_text("\n".join(",".join(r) for r in [list(GOLDEN_COLUMNS), *table]) + "\n")
    want = [line.split(",") for line in GOLDEN_MC.read_text().splitlines()[1:]]
    assert [r[:3] for r in table] == [r[:3] for r in want]
    for row, ref in zip(table, want, strict=True):
        for c, a, b in zip(GOLDEN_COLUMNS[3:], row[3:], ref[3:], strict=True):
            tol = 1 / 4 if c == "yield_4" else 1 / 64  # one chip of four, one sequence of 64
            assert abs(float(a) - float(b)) <= tol + 1e-9, f"{row[0]} {c}: {a} (golden {b})"


def test_a_sweep_point_at_the_nominal_chip_is_not_simulated_again(
    tiny_run, recipe_of, tmp_path, monkeypatch
):
    """C_u = the target's own in the C_u sweep is the nominal chip: one simulation, two rows."""
    graph, _, t, x, y = setup(tiny_run, recipe_of, "mingru_hw", "minimalist_like")
    calls, simulate_chips = [], montecarlo.accuracies
    monkeypatch.setattr(
        montecarlo, "accuracies", lambda *a: calls.append(a[3]) or simulate_chips(*a)
    )
    rows = montecarlo.settings(t, [t.capacitor.unit_ff, 0.5], [], [], ablation=False)
    fit = lambda target: map_graph(graph, target)  # noqa: E731
    got = montecarlo.run(graph, fit, t, x, y, 2, rows, tmp_path / "mc")
    assert [r["id"] for r in got] == ["nominal", "unit_ff=1", "unit_ff=0.5"] and len(calls) == 2
    assert got[1]["accuracies"] == got[0]["accuracies"] and got[1]["sweep"] == "unit_ff"
    assert (tmp_path / "mc" / "unit_ff=1.json").exists()


def test_a_stored_setting_of_other_code_or_another_model_is_simulated_again(
    tiny_run, recipe_of, tmp_path, monkeypatch
):
    """Results carry a fingerprint of the simulator's code, the target and the model: a file
    another version wrote (here: its fingerprint changed) is recomputed, a matching one reused."""
    graph, _, t, x, y = setup(tiny_run, recipe_of, "mingru_hw", "minimalist_like")
    calls, simulate_chips = [], montecarlo.accuracies
    monkeypatch.setattr(
        montecarlo, "accuracies", lambda *a: calls.append(a[3]) or simulate_chips(*a)
    )
    rows = montecarlo.settings(t, [], [], [], ablation=False)
    fit = lambda target: map_graph(graph, target)  # noqa: E731
    first = montecarlo.run(graph, fit, t, x, y, 2, rows, tmp_path / "mc")
    montecarlo.run(graph, fit, t, x, y, 2, rows, tmp_path / "mc")
    assert len(calls) == 1
    path = tmp_path / "mc" / "nominal.json"
    path.write_text(path.read_text().replace(first[0]["fingerprint"], "0" * 16))
    again = montecarlo.run(graph, fit, t, x, y, 2, rows, tmp_path / "mc")
    assert len(calls) == 2 and again[0]["fingerprint"] == first[0]["fingerprint"]
    other = montecarlo.run(graph, fit, t.with_noise(0.25), x, y, 2, rows, tmp_path / "mc")
    assert len(calls) == 3 and other[0]["fingerprint"] != first[0]["fingerprint"]
