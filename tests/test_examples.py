"""Every script under examples/ runs, as a user would run it, on small sdigits settings."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = sorted(p.name for p in (ROOT / "examples").glob("*.py") if p.name != "my_model.py")
EXPECT = {  # a line each script prints, and the files it leaves
    "bring_your_own_model.py": ("smaller than float32 as trained", ["report.md", "model.json"]),
    "sweep_and_plot.py": ("points →", ["results.csv", "accuracy_vs_footprint.png"]),
    "export_onnxruntime.py": ("onnxruntime test accuracy", ["hw/sequence_deploy.onnx"]),
    "map_to_hw.py": ("identical decisions; checks passed: True", ["hw/report.md"]),
}


def test_every_example_is_tested():
    assert set(SCRIPTS) == set(EXPECT)


@pytest.mark.parametrize("script", SCRIPTS)
def test_example_runs(script, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / script), "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    line, files = EXPECT[script]
    assert line in done.stdout, done.stdout[-2000:]
    for name in files:
        assert (out / name).is_file(), name
