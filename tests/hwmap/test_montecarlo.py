"""Monte-Carlo chip batches: the same per-chip results in one process or several, a run killed
between batches resumes after the last finished one, a failing batch names its setting."""

import json
from functools import partial

import numpy as np
import pytest

from hwmap import montecarlo
from hwmap.lower import lower
from hwmap.mapping import map_graph
from hwmap.targets import load_target
from qssm.runs import load_data, load_run_model


@pytest.fixture
def chips(tiny_run, recipe_of, monkeypatch):
    """mgrade_hw on 16 test sequences, chip batches of 2 chips; the nominal chip, C_u = the
    target's (the nominal chip again), a 20 mV offset and 10 mV noise (chips then differ)."""
    graph, t = lower(load_run_model(tiny_run("mgrade_hw"))[0]), load_target("minimalist_like")
    test = load_data(recipe_of("mgrade_hw")).test
    monkeypatch.setattr(montecarlo, "CHIP_BATCH", 2)
    fit = partial(map_graph, graph)  # picklable: the worker processes map the graph too
    rows = montecarlo.settings(t, [t.capacitor.unit_ff], [20.0], [10.0], ablation=False)
    return graph, fit, t, test.x.numpy()[:16], test.y.numpy()[:16], rows


BROKEN = r"setting broken, chips [02]–[13]: ValueError"  # whichever batch fails first


def counting(monkeypatch) -> list:
    calls, simulate_chips = [], montecarlo.accuracies
    monkeypatch.setattr(
        montecarlo, "accuracies", lambda *a: calls.append(list(a[4])) or simulate_chips(*a)
    )
    return calls


def test_two_worker_processes_give_the_chips_of_one(chips, tmp_path):
    """5 chips in batches of 2 (the last of one chip) over two spawned processes: every
    setting's per-chip accuracies equal those of this process, and those of one batch of all
    chips (the simulator run directly, as before there were batches)."""
    graph, fit, t, x, y, rows = chips
    one = montecarlo.run(graph, fit, t, x, y, 5, rows, tmp_path / "one")
    two = montecarlo.run(
        graph, fit, t, x, y, 5, rows, tmp_path / "two", pool=montecarlo.executor(2)
    )
    assert [r["accuracies"] for r in two] == [r["accuracies"] for r in one]
    assert [r["agreement"] for r in two] == [r["agreement"] for r in one]
    ref = montecarlo.intref.run(graph, x)[0].argmax(-1)
    for r in one[1:]:
        s = next(s for s in rows if s["id"] == r["id"])
        tr = montecarlo.chip_target(t, s)
        acc, _ = montecarlo.accuracies(graph, fit(tr), tr, s["effects"], list(range(5)), x, y, ref)
        assert r["accuracies"] == acc.tolist()
    assert all(len(set(r["accuracies"])) > 1 for r in one[2:])  # chips of 20 mV and 10 mV differ
    assert not (tmp_path / "two" / "batches").exists()  # the setting files hold it all


def test_a_killed_run_resumes_after_its_last_finished_batch(chips, tmp_path, monkeypatch):
    """Killed after its second chip batch, a Monte-Carlo keeps those two batches; the rerun
    simulates only the others and gives the rows of a run never stopped."""
    graph, fit, t, x, y, rows = chips
    whole = montecarlo.run(graph, fit, t, x, y, 4, rows, tmp_path / "whole")

    def killed(state, tasks):
        for task in tasks[:2]:
            yield montecarlo.simulate_batch(state, task)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        montecarlo.run(graph, fit, t, x, y, 4, rows, tmp_path / "mc", pool=killed)
    stored = sorted((tmp_path / "mc" / "batches").glob("*/*.json"))
    assert len(stored) == 2 and not list((tmp_path / "mc").glob("*.json"))
    assert all(json.loads(p.read_text())["seeds"] in ([0, 1], [2, 3]) for p in stored)
    calls = counting(monkeypatch)
    again = montecarlo.run(graph, fit, t, x, y, 4, rows, tmp_path / "mc")
    assert len(calls) == 4  # 3 distinct settings × 2 batches of 2 chips, 2 batches stored
    assert [{k: v for k, v in r.items() if k != "seconds" and "per_s" not in k} for r in again] == [
        {k: v for k, v in r.items() if k != "seconds" and "per_s" not in k} for r in whole
    ]


def test_a_failing_batch_names_its_setting_and_leaves_no_file(chips, tmp_path):
    graph, fit, t, x, y, rows = chips
    bad = [{**rows[0], "id": "broken", "effects": ["sparkles"]}]
    with pytest.raises(montecarlo.MonteCarloError, match=BROKEN):
        montecarlo.run(graph, fit, t, x, y, 4, bad, tmp_path / "mc", pool=montecarlo.executor(2))
    assert not [p for p in (tmp_path / "mc").rglob("*.json")]


def test_a_result_stored_per_setting_is_read_back_without_batches(chips, tmp_path, monkeypatch):
    """A setting file (what earlier versions stored, one per setting) is reused as it is."""
    graph, fit, t, x, y, rows = chips
    first = montecarlo.run(graph, fit, t, x, y, 3, rows, tmp_path / "mc")
    calls = counting(monkeypatch)
    assert montecarlo.run(graph, fit, t, x, y, 3, rows, tmp_path / "mc") == first and not calls
    assert np.isclose(first[0]["mean"], np.mean(first[0]["accuracies"]))


def test_ray_tasks_give_the_chips_of_one_process_and_name_a_failing_setting(chips, tmp_path):
    ray = pytest.importorskip("ray")
    graph, fit, t, x, y, rows = chips
    one = montecarlo.run(graph, fit, t, x, y, 5, rows, tmp_path / "one")
    bad = [{**rows[0], "id": "broken", "effects": ["sparkles"]}]
    on_ray = montecarlo.executor(kind="ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        got = montecarlo.run(graph, fit, t, x, y, 5, rows, tmp_path / "ray", pool=on_ray)
        with pytest.raises(montecarlo.MonteCarloError, match=BROKEN):
            montecarlo.run(graph, fit, t, x, y, 4, bad, tmp_path / "bad", pool=on_ray)
    finally:
        ray.shutdown()
    assert [r["accuracies"] for r in got] == [r["accuracies"] for r in one]
    assert not [p for p in (tmp_path / "bad").rglob("*.json")]


def test_map_to_hw_refuses_no_workers(tmp_path, capsys):
    from qssm.cli import main

    args = ["map-to-hw", str(tmp_path), "--target", "minimalist_like", "--workers", "0"]
    assert main(args) == 2
    assert "--workers must be at least 1" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
