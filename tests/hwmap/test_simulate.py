"""The behavioural simulator: exact when ideal, each non-ideality has an effect, seeded."""

import numpy as np
import pytest

from hwmap import simulate
from hwmap.lower import lower
from hwmap.mapping import map_graph
from hwmap.targets import load_target
from hwmap.verify import sim_ideal_vs_intref
from qssm.runs import load_data, load_run_model

CASES = [
    ("mingru_hw", "minimalist_like"),
    ("mgrade_hw", "minimalist_like"),
    ("s4d_real_hw", "generic_28nm"),
]


def setup(tiny_run, recipe_of, family, target):
    graph, t = lower(load_run_model(tiny_run(family))[0]), load_target(target)
    test = load_data(recipe_of(family)).test
    return graph, map_graph(graph, t), t, test.x.numpy()[:16], test.y.numpy()[:16]


@pytest.mark.parametrize("family, target", CASES)
def test_ideal_simulator_is_the_integer_reference(tiny_run, recipe_of, family, target):
    graph, mapping, t, x, _ = setup(tiny_run, recipe_of, family, target)
    r = sim_ideal_vs_intref(graph, mapping, t, x)
    assert r["decision_agreement"] == 1.0 and r["decisions"] > 0 and r["logits_identical"]


@pytest.mark.parametrize("family, target", CASES)
def test_every_nonideality_moves_the_outputs_and_chips_are_seeded(
    tiny_run, recipe_of, family, target
):
    graph, mapping, t, x, y = setup(tiny_run, recipe_of, family, target)
    t = t.with_unit(0.1).with_offset(20.0)  # exaggerated, so every effect shows on 16 sequences
    leakage = t.leakage.model_copy(update={"droop_per_step": 0.2, "charge_injection_mv": 50.0})
    t = t.model_copy(update={"leakage": leakage})
    _, ideal = simulate.Simulator(graph, mapping, t, on=[], seeds=[0]).run(x, trace=True)
    skip = {"parasitic", "clipping"} if family == "s4d_real_hw" else {"clipping"}
    for name in set(simulate.NONIDEALITIES) - skip:  # each moves some analog op's outputs
        _, trace = simulate.Simulator(graph, mapping, t, on=[name], seeds=[0]).run(x, trace=True)
        assert any(not np.array_equal(trace[k], ideal[k]) for k in ideal), name
    if family == "mingru_hw":  # clipping holds the state inside the rails injection pushes past
        leakage = t.leakage.model_copy(update={"charge_injection_mv": 2000.0})
        rail = t.model_copy(update={"leakage": leakage})
        for on, inside in ((["injection"], False), (["injection", "clipping"], True)):
            sim = simulate.Simulator(graph, mapping, rail, on=on, seeds=[0])
            _, trace = sim.run(x, trace=True)
            assert (np.abs(trace["blocks.0.gru.h'"]).max() <= 2**20) == inside
    sims = [simulate.Simulator(graph, mapping, t, simulate.NONIDEALITIES, [1, 2]) for _ in "ab"]
    (a, trace), (b, _) = (sim.run(x, trace=True) for sim in sims)
    assert np.array_equal(a, b)  # same seeds, same chips, same noise
    assert any(not np.array_equal(v[0], v[1]) for v in trace.values())  # two chips differ
    acc = simulate.accuracy(simulate.Simulator(graph, mapping, t, ["offset"], [0, 1, 2]), x, y)
    assert acc.shape == (3,) and np.all((0 <= acc) & (acc <= 1))


def test_unknown_nonideality_is_refused(tiny_run, recipe_of):
    graph, mapping, t, _, _ = setup(tiny_run, recipe_of, "mingru_hw", "minimalist_like")
    with pytest.raises(ValueError, match="mismatch"):
        simulate.Simulator(graph, mapping, t, on=["gremlins"])
