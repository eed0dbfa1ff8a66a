"""The golden bit-accuracy table: regenerate the sdigits sweep and compare (CI regression)."""

from pathlib import Path

import pytest
import yaml

from qssm.cli import main
from qssm.io import read_json
from qssm.recipe import load_recipe
from qssm.sweep import compare, points, read_csv

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "sweeps" / "sdigits_s4d.yaml"
GOLDEN = ROOT / "tests" / "golden" / "sdigits_s4d.csv"


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "run"
    assert main(["sweep", "--recipe", str(RECIPE), "--out", str(out), "--quiet"]) == 0
    return out


def test_golden_table_reproduces(sweep_dir):
    """Accuracies within the recipe's tolerance, footprints exactly equal (docs/sweeps.md says
    how to regenerate the golden table on purpose)."""
    rows = read_csv(sweep_dir / "results.csv")
    problems = compare(rows, read_csv(GOLDEN), load_recipe(RECIPE).sweep.tolerance)
    assert not problems, "\n".join(problems)
    for name in ("report.md", "per_role_ptq.png", "uniform.png", "pareto.png", "metrics.json"):
        assert (sweep_dir / name).exists()


def test_hardware_golden_table_reproduces(tmp_path):
    """The hardware family's table (mgrade_hw: delay line + MINIMALIST minGRU), checked by the
    CLI as CI users run it: exit 0 against its golden table."""
    name = "sdigits_mgrade_hw"
    recipe, golden = ROOT / "recipes" / "sweeps" / f"{name}.yaml", GOLDEN.with_name(f"{name}.csv")
    args = ["sweep", "--recipe", str(recipe), "--out", str(tmp_path / "run"), "--quiet"]
    assert main([*args, "--check", str(golden)]) == 0


def test_check_flag_and_resume(sweep_dir, tmp_path, capsys):
    args = ["sweep", "--recipe", str(RECIPE), "--out", str(sweep_dir), "--quiet", "--force"]
    # --force on a finished sweep keeps finished points: nothing is recomputed
    stamps = {p: p.stat().st_mtime_ns for p in (sweep_dir / "points").iterdir()}
    assert main([*args, "--check", str(GOLDEN)]) == 0
    assert {p: p.stat().st_mtime_ns for p in (sweep_dir / "points").iterdir()} == stamps
    # a golden table whose accuracy and footprint differ: exit 1 and a readable diff
    lines = GOLDEN.read_text().splitlines()
    header, first = lines[0].split(","), lines[1].split(",")
    first[header.index("accuracy")] = "0.0"
    first[header.index("total_bits")] = "1"
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join([lines[0], ",".join(first), *lines[2:]]) + "\n")
    capsys.readouterr()
    assert main([*args, "--check", str(bad)]) == 1
    out = capsys.readouterr().out
    assert (
        "REGRESSION" in out
        and "accuracy" in out
        and "total_bits" in out
        and "must not change" in out
    )


def test_points_cover_the_three_tables():
    recipe = load_recipe(RECIPE)
    ids = [p["id"] for p in points(recipe)]
    assert len(ids) == len(set(ids))
    sw = recipe.sweep
    n_pareto = 1
    for g in sw.pareto:
        n_pareto *= len(g.bits)
    assert len(ids) == (len(sw.roles) * len(sw.bits) + len(sw.uniform_bits) + n_pareto) * len(
        sw.stages
    ) * len(sw.seeds)


def test_ray_and_process_executors_match_the_local_table(sweep_dir, tmp_path):
    """A small slice of the sweep through a local Ray instance and through 2 worker processes
    gives the same rows as the local executor."""
    ray = pytest.importorskip("ray")
    from qssm.sweep import points, run_points

    recipe = load_recipe(RECIPE)
    chosen = [p for p in points(recipe) if p["table"] == "uniform"][:3]
    local = {r["id"]: r for r in read_csv(sweep_dir / "results.csv")}
    for executor, workers in (("ray", 1), ("local", 2)):
        run = tmp_path / executor
        (run / "points").mkdir(parents=True)
        for name in ("float.json", "float.safetensors", "recipe.json"):
            (run / name).write_bytes((sweep_dir / name).read_bytes())
        if executor == "ray":
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            rows = run_points(run, chosen, workers, executor, None, progress=False)
        finally:
            if executor == "ray":
                ray.shutdown()
        assert len(rows) == len(chosen)
        for row in rows:
            expect = local[row["id"]]
            assert float(row["accuracy"]) == float(expect["accuracy"]), (executor, row["id"])
            assert int(row["total_bits"]) == int(expect["total_bits"])


def test_a_diverged_point_is_recorded_and_the_sweep_goes_on(tmp_path, capsys):
    """QAT at lr 1e6 without clipping diverges: its point is recorded as failed, the PTQ point
    is in results.csv, and the sweep exits 3 at the end."""
    recipe = {
        "name": "diverging_sweep",
        "seed": 0,
        "data": {"name": "sdigits", "options": {"limit_train": 128, "limit_test": 64}},
        "model": {"family": "s4d", "d_model": 8, "d_state": 8},
        "float": {"epochs": 1, "batch_size": 32},
        "quant": {"default": {"bits": 8}},
        "ptq": {"calibration_batches": 2, "batch_size": 32},
        "qat": {"epochs": 1, "batch_size": 32, "lr": 1e6, "ssm_lr": 1e6, "grad_clip": None},
        "sweep": {"uniform_bits": [8], "stages": ["ptq", "qat"]},
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "run"
    assert main(["sweep", "--recipe", str(path), "--out", str(out), "--quiet"]) == 3
    err = capsys.readouterr().err
    assert "1 of 2 sweep points diverged" in err
    failed = read_json(out / "metrics.json")["failed"]
    assert list(failed) == ["uniform-all-8-qat-s0"]
    assert "QAT uniform-all-8-qat-s0 diverged at epoch 1/1, step " in failed["uniform-all-8-qat-s0"]
    assert "lower qat.lr (now 1e+06) or set qat.grad_clip" in failed["uniform-all-8-qat-s0"]
    assert [r["id"] for r in read_csv(out / "results.csv")] == ["uniform-all-8-ptq-s0"]
    assert "failed" in read_json(out / "points" / "uniform-all-8-qat-s0.json")
