"""bench/montecarlo.py's throughput, which bench/run.py's Monte-Carlo figure runs too: the
nominal chips of the graph mapped as `qssm map-to-hw` maps it, and the figures of their timing."""

import importlib.util
import sys
from pathlib import Path

import pytest

from hwmap import intref, montecarlo, simulate
from hwmap.lower import lower
from hwmap.mapping import map_graph, observed_ranges
from hwmap.targets import load_target
from qssm.runs import load_data, load_run_model

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load(name: str):
    sys.path.insert(0, str(BENCH))  # bench/run.py imports bench/montecarlo.py as a script does
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCH))
    return module


@pytest.fixture
def graph(tiny_run, monkeypatch):
    monkeypatch.setattr(montecarlo, "CHIP_BATCH", 2)  # 5 chips: batches of 2, 2 and 1
    return lower(load_run_model(tiny_run("mgrade_hw"))[0])


def test_throughput_times_the_nominal_chips_of_map_to_hw(graph, recipe_of, monkeypatch):
    """Every chip batch simulates the nominal chip (every non-ideality) on the mapping of
    `qssm map-to-hw` (ranges observed on the training sequences), chips 0–4 once each; the
    figures are the chip·sequences over the batches' wall and CPU seconds."""
    data = load_data(recipe_of("mgrade_hw"))
    train = data.train.x.numpy()
    x, y = data.test.x.numpy()[:8], data.test.y.numpy()[:8]
    t = load_target("minimalist_like")
    calls, simulate_chips = [], montecarlo.accuracies
    monkeypatch.setattr(
        montecarlo, "accuracies", lambda *a: calls.append(a[1:5]) or simulate_chips(*a)
    )
    row = _load("montecarlo").throughput(graph, t, train, x, y, 5, 1)
    mapped = map_graph(graph, t, ranges=observed_ranges(graph, train[:64]))
    assert mapped["totals"] != map_graph(graph, t)["totals"]  # the ranges change the mapping
    assert [c[0]["totals"] for c in calls] == [mapped["totals"]] * 3
    assert [(c[2], list(c[3])) for c in calls] == [
        (list(simulate.NONIDEALITIES), seeds) for seeds in ([0, 1], [2, 3], [4])
    ]
    ref = intref.run(graph, x)[0].argmax(-1)
    acc, _ = simulate_chips(graph, mapped, t, simulate.NONIDEALITIES, list(range(5)), x, y, ref)
    assert row["mean_accuracy"] == pytest.approx(acc.mean(), abs=1e-12)
    assert (row["chips"], row["chip_batch"], row["sequences"]) == (5, 2, 8)
    assert (row["steps"], row["target"], row["family"]) == (x.shape[1], t.name, "mgrade_hw")
    assert row["chip_sequences_per_s"] == pytest.approx(40 / row["seconds"])
    assert row["chip_sequences_per_cpu_s"] == pytest.approx(40 / row["cpu_seconds"])


def test_run_py_times_random_full_length_sequences_and_reports_cpu_per_chip_sequence(graph):
    """bench/run.py's figure: MC_BATCHES chip batches over MC_SEQUENCES random 784-step
    sequences, the CPU milliseconds per chip·sequence, no accuracy (its labels are random)."""
    run = _load("run")
    row = run.montecarlo_figures(graph)
    chips = run.MC_BATCHES * 2
    assert (row["chips"], row["sequences"], row["steps"]) == (chips, run.MC_SEQUENCES, 784)
    assert row["target"] == run.MC_TARGET and "mean_accuracy" not in row
    per = row["cpu_seconds"] / (chips * run.MC_SEQUENCES)
    assert row["cpu_ms_per_chip_sequence"] == pytest.approx(1e3 * per)
