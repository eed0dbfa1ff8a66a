import itertools
import math

import numpy as np
import pytest
import scipy.stats
import yaml

from hwmap.targets import load_target
from qssm.cli import _chip, main
from qssm.io import read_json
from qssm.recipe import parse_recipe, recipe_path
from qssm.search import Config, Search, Space, measure_footprint, moves, spearman

RECIPE = {
    "name": "search_tiny",
    "seed": 0,
    "data": {"name": "sdigits"},
    "model": {"family": "s4d", "d_model": 16, "d_state": 16, "dt_min": 0.01, "dt_max": 0.5},
    "float": {"epochs": 6, "batch_size": 32, "ssm_lr": 0.01},  # 77 % in about 7 s
    "quant": {
        "default": {"granularity": "per_channel", "complex": "polar", "scale_dtype": "float16"}
    },
    "ptq": {"calibration_batches": 2},
    "qat": {"epochs": 1, "batch_size": 32},
    "eval": {"batch_size": 400},
}
SEARCH = ["--evaluations", "5", "--population", "3", "--short-epochs", "1", "--finalists", "2"]


def _search(path, out, *extra) -> int:
    args = ["search", "--recipe", str(path), "--budget-reduction", "3", "--bits", "2", "4", "8"]
    return main([*args, *SEARCH, "--out", str(out), "--quiet", *extra])


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """A finished tiny search (with a 3-configuration validation) and its recipe file."""
    tmp = tmp_path_factory.mktemp("search")
    path = tmp / "r.yaml"
    path.write_text(yaml.safe_dump(RECIPE))
    assert _search(path, tmp / "run", "--validate", "3") == 0
    return path, tmp / "run"


def test_spearman_matches_scipy_with_ties():
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 5, 30), rng.normal(size=30)
    assert spearman(a, b) == pytest.approx(scipy.stats.spearmanr(a, b).statistic, abs=1e-12)
    assert spearman([1, 2, 3], [30, 20, 10]) == pytest.approx(-1.0)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_search_fits_the_budget_and_reports(searched):
    _, out = searched
    m = read_json(out / "metrics.json")
    s = m["search"]
    assert m["footprint"]["total_bits"] <= s["budget_bits"]
    assert m["footprint"]["total_bits"] == s["predicted_total_bits"]
    assert set(s["chosen_bits"].values()) <= {2, 4, 8} and "ssm.A" in s["chosen_bits"]
    assert set(s["structure"]) == {"fold_b", "state", "scales", "act"}
    assert len(s["evaluated"]) == 5 and sum(e["longer"] is not None for e in s["evaluated"]) == 2
    assert all(e["bits"] <= s["budget_bits"] for e in s["evaluated"])
    v = s["validation"]
    assert len(v["configs"]) == 3
    est, measured = ([c[k] for c in v["configs"]] for k in ("estimate", "measured"))
    assert v["spearman_estimate"] == pytest.approx(scipy.stats.spearmanr(est, measured).statistic)
    report = (out / "report.md").read_text()
    assert (
        "Bit allocation" in report
        and "search.png" in report
        and (out / "search.png").stat().st_size
    )
    # the final QAT on the whole training split is the validation point of the same config
    same = [c for c in v["configs"] if c["config"] == s["chosen"]]
    for c in same:
        assert c["measured"] == pytest.approx(m["qat"]["accuracy"], abs=1e-6)


def test_a_rerun_reuses_every_point_and_chooses_the_same(searched, tmp_path):
    path, out = searched
    before = {p.name: p.stat().st_mtime_ns for p in (out / "points").iterdir()}
    chosen = read_json(out / "metrics.json")["search"]["chosen"]
    assert _search(path, out, "--validate", "3", "--force") == 0
    assert {p.name: p.stat().st_mtime_ns for p in (out / "points").iterdir()} == before
    assert read_json(out / "metrics.json")["search"]["chosen"] == chosen


def test_another_budget_in_the_same_dir_is_refused(searched, capsys):
    path, out = searched
    args = ["search", "--recipe", str(path), "--budget-reduction", "4", "--out", str(out)]
    assert main([*args, "--quiet"]) == 2
    assert "another budget" in capsys.readouterr().err


def test_an_impossible_budget_names_the_fix(searched, tmp_path, capsys):
    path, _ = searched
    args = ["search", "--recipe", str(path), "--budget-reduction", "100", "--bits", "2", "4"]
    assert main([*args, "--out", str(tmp_path / "r"), "--quiet"]) == 2
    assert "raise the budget or allow fewer bits" in capsys.readouterr().err


@pytest.fixture(scope="module")
def space(searched):
    _, out = searched
    return Space(parse_recipe(RECIPE), out, [2, 4, 8], [4, 8])


def test_predicted_footprint_is_the_measured_one(space):
    rng = np.random.default_rng(1)
    for _ in range(6):
        s = space.structures[rng.integers(len(space.structures))]
        config = Config(tuple(int(b) for b in rng.choice(space.widths, len(space.groups))), s)
        fp, _ = measure_footprint(space._model, space._float_params, space.quant(config), space._x)
        assert fp["total_bits"] == space.bits_of(config), config


def test_tight_set_is_every_full_configuration(space):
    """Brute force over every configuration: fits, and no group can go one width up."""
    budget = space.float32_bits / 3
    found = set(space.tight(budget))
    w = space.widths
    expected = set()
    for s in space.structures:
        stored = space.elements(s)
        for bits in itertools.product(w, repeat=len(space.groups)):
            c = Config(bits, s)
            empty = [not any(r in stored for r in g) for g in space.groups]
            if any(e and b != w[-1] for e, b in zip(empty, bits, strict=True)):
                continue
            if space.bits_of(c) > budget:
                continue
            up = [
                Config(bits[:i] + (w[w.index(b) + 1],) + bits[i + 1 :], s)
                for i, b in enumerate(bits)
                if b != w[-1] and not empty[i]
            ]
            if all(space.bits_of(u) > budget for u in up):
                expected.add(c)
    assert found == expected and found


def test_neighbours_are_one_move_away_on_the_tight_set(space):
    budget = space.float32_bits / 3
    finder = Search(space, None, budget, {})
    pool = set(finder.pool)
    for parent in finder.pool[:: max(1, len(finder.pool) // 5)]:
        assert finder.nearest(parent) == parent
        near = finder.neighbours(parent)
        assert near and parent not in near and set(near) <= pool
        for child, g in moves(parent, space):
            projected = finder.nearest(child, g)
            assert projected in pool
            if g is not None and any(
                c.bits[g] == child.bits[g] for c in pool if c.structure == child.structure
            ):
                assert projected.bits[g] == child.bits[g]


MINIMALIST_QUANT = yaml.safe_load(recipe_path("minimalist").read_text())["quant"]

# A hardware family: the budget can be a target's capacitor area (the tiny MINIMALIST minGRU)
RECIPE_HW = {
    "name": "search_hw_tiny",
    "seed": 0,
    "data": {"name": "sdigits"},
    "model": {"family": "mingru_hw", "d_model": 16, "n_layers": 1, "pool": "mean"},
    "float": {"epochs": 2, "batch_size": 32, "lr": 0.01, "mode": "recurrent"},
    "quant": MINIMALIST_QUANT,  # the MINIMALIST recipe's bits
    "ptq": {"calibration_batches": 2},
    "qat": {"epochs": 1, "batch_size": 32},
    "eval": {"batch_size": 400},
}
HW = ["--target", "generic_28nm", "--bits", "2", "4"]
HW_BUDGET = ["--area-budget-mm2", "0.0035", "--budget-kib", "0.7"]


def _search_hw(path, out, *extra) -> int:
    args = ["search", "--recipe", str(path), *HW, "--evaluations", "3", "--population", "2"]
    args += ["--short-epochs", "1", "--finalists", "1", "--out", str(out), "--quiet"]
    return main([*args, *extra])


@pytest.fixture(scope="module")
def searched_hw(tmp_path_factory):
    """A finished tiny search under a capacitor-area and a memory budget, and its Space."""
    tmp = tmp_path_factory.mktemp("search_hw")
    path = tmp / "r.yaml"
    path.write_text(yaml.safe_dump(RECIPE_HW))
    assert _search_hw(path, tmp / "run", *HW_BUDGET) == 0
    chip = _chip(load_target("generic_28nm"))
    space = Space(parse_recipe(RECIPE_HW), tmp / "run", [2, 4], [], chip)
    return path, tmp / "run", space


def _measured_area(space, config) -> float:
    """The area of ``config`` mapped directly (inf: the target cannot map it)."""
    got = space.chip_of(space.quant(config))
    return math.inf if got is None else got["area_mm2"]


def test_a_hardware_family_searches_no_activation_or_s4d_choice(searched_hw):
    _, _, space = searched_hw
    assert set(space.choices) == {"scales"}  # no act bits, fold_b or state granularity
    assert {"gru.Wz", "gru.Wh"} <= {r for g in space.groups for r in g}


def test_area_model_is_the_measured_area(searched_hw):
    """The per-group model against the mapping of the configuration itself (inf: unmappable)."""
    _, _, space = searched_hw
    rng = np.random.default_rng(2)
    for _ in range(6):
        s = space.structures[rng.integers(len(space.structures))]
        config = Config(tuple(int(b) for b in rng.choice(space.widths, len(space.groups))), s)
        assert space.area_of(config) == pytest.approx(_measured_area(space, config), rel=1e-12)


def test_tight_set_under_an_area_budget_is_every_full_configuration(searched_hw):
    """Brute force: the pool is exactly the configurations that fit both budgets and cannot
    raise one group; nothing over either budget was trained or chosen."""
    _, out, space = searched_hw
    s = read_json(out / "metrics.json")["search"]
    bits_budget, area_budget = s["budget_bits"], s["area"]["budget_mm2"]
    w = space.widths

    def fits(c):
        return space.bits_of(c) <= bits_budget and space.area_of(c) <= area_budget

    expected, over_area = set(), 0
    for st in space.structures:
        for bits in itertools.product(w, repeat=len(space.groups)):
            c = Config(bits, st)
            over_area += space.bits_of(c) <= bits_budget and space.area_of(c) > area_budget
            up = [
                Config(bits[:i] + (w[w.index(b) + 1],) + bits[i + 1 :], st)
                for i, b in enumerate(bits)
                if b != w[-1]
            ]
            if fits(c) and not any(fits(u) for u in up):
                expected.add(c)
    assert set(space.tight(bits_budget, area_budget)) == expected and expected
    assert over_area  # the area budget binds: some configurations fit the memory but not it
    assert len(s["evaluated"]) == 3
    for e in s["evaluated"]:  # measured again through the mapping
        config = next(c for c in expected if c.label(space) == e["config"])
        assert e["bits"] <= bits_budget and _measured_area(space, config) <= area_budget
    chosen = space.chip_of(read_json(out / "model.json")["quant"])
    assert chosen == s["area"]["chosen"] and chosen["area_mm2"] <= area_budget


def test_search_area_is_what_map_to_hw_reports(searched_hw, tmp_path):
    """An independent path: the configuration's own recipe, PTQ on the training split
    (`qssm quantize`), lowered, exported and mapped by `qssm map-to-hw`."""
    _, out, space = searched_hw
    for bits in [(4,) * len(space.groups), tuple(4 if "gru.Wz" in g else 2 for g in space.groups)]:
        config = Config(bits, ("float16",))
        recipe = {**RECIPE_HW, "quant": space.quant(config), "qat": {"epochs": 0}}
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump(recipe))
        run = tmp_path / "-".join(map(str, bits))
        quantize = ["quantize", "--recipe", str(path), "--from", str(out), "--out", str(run)]
        assert main([*quantize, "--quiet"]) == 0
        hw = ["map-to-hw", str(run), "--target", "generic_28nm", "--mc-seeds", "0"]
        assert main([*hw, "--limit", "20", "--quiet"]) == 0
        mapped = read_json(run / "hw" / "mapping.json")["totals"]
        assert space.area_of(config) == pytest.approx(mapped["area_mm2"], rel=1e-12)
        got = space.chip_of(space.quant(config))
        assert got["capacitance_pf"] == pytest.approx(mapped["capacitance_pf"], rel=1e-12)


def test_an_impossible_area_budget_names_the_smallest(searched_hw, tmp_path, capsys):
    path, _, space = searched_hw
    smallest = min(
        _measured_area(space, Config((2,) * len(space.groups), st)) for st in space.structures
    )
    args = ["--area-budget-mm2", f"{smallest * 0.99:.7f}"]
    assert _search_hw(path, tmp_path / "r", *args) == 2
    err = capsys.readouterr().err
    assert "raise --area-budget-mm2 to at least" in err
    said = float(err.split("at least ")[1].split()[0])
    assert smallest <= said <= smallest + 2e-6  # rounded up, so that it fits


def test_bad_area_arguments_are_one_line_errors(searched_hw, tmp_path, capsys):
    path, _, _ = searched_hw
    s4d = tmp_path / "s4d.yaml"
    s4d.write_text(yaml.safe_dump(RECIPE))
    cases = [
        (["--recipe", str(path), "--area-budget-mm2", "1"], "needs --target"),
        (["--recipe", str(path), "--target", "generic_28nm"], "give a budget"),
        (
            ["--recipe", str(s4d), "--target", "minimalist_like", "--area-budget-mm2", "1"],
            "s4d_real",
        ),
        (["--recipe", str(path), "--target", "nowhere", "--area-budget-mm2", "1"], "nowhere"),
    ]
    for args, words in cases:
        out = tmp_path / "never"
        assert main(["search", *args, "--out", str(out), "--quiet"]) == 2
        err = capsys.readouterr().err.strip()
        assert words in err and len(err.splitlines()) == 1, err
        assert not out.exists()  # nothing written
