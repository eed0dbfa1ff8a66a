"""Hardware-aware QAT through the hooks the CLI passes in (here stand-ins, not hwmap); exact
resume of a run stopped at any point."""

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from qssm.cli import main
from qssm.recipe import RecipeError, parse_recipe
from qssm.runs import Hardware, check_quant, load_data, open_run, quantize_run


def hardware_recipe(tiny_recipe, family="mingru_hw"):
    r = tiny_recipe(family, {"family": family, "d_model": 4}, {"default": {"bits": 4}})
    r = r.model_dump(mode="json")
    r["qat"]["hardware"] = {"target": "some_chip"}
    return parse_recipe(r)


def test_the_target_is_checked_by_the_hook(tiny_recipe):
    r = hardware_recipe(tiny_recipe)
    with pytest.raises(RecipeError, match="qat.hardware needs a hardware package"):
        check_quant(r)
    seen = []
    check_quant(r, hardware=Hardware(check=seen.append, noise=None))
    assert seen == [r.qat.hardware]

    def unknown(cfg):
        raise ValueError(f"no target {cfg.target!r}")

    with pytest.raises(RecipeError, match="qat.hardware.target: no target 'some_chip'"):
        check_quant(r, hardware=Hardware(check=unknown, noise=None))
    with pytest.raises(RecipeError, match="mingru_hw"):
        check_quant(hardware_recipe(tiny_recipe, "mingru"), hardware=Hardware(seen.append, None))


def test_qat_trains_inside_the_noise_hook(tiny_recipe, tmp_path):
    r = hardware_recipe(tiny_recipe)
    calls = []

    @contextlib.contextmanager
    def noise(model, cfg, x):
        gru = model.blocks[0].gru
        gru.noise = {"gate": np.full(4, 0.1), "cand": 0.1, "out": 0.1}  # numpy and floats
        calls.append((cfg.target, type(x), gru.noise["gate"].dtype))
        yield {"target": cfg.target}
        gru.noise = None

    out = open_run(tmp_path / "run", r, force=False)
    metrics = quantize_run(r, load_data(r), out, progress=False, hardware=Hardware(None, noise))
    assert calls == [("some_chip", np.ndarray, torch.float32)]
    assert metrics["hardware_noise"] == {"target": "some_chip"} and "qat" in metrics


# --- exact resume: a run killed at any point and run again ends as the uninterrupted one ---

RESUMABLE = {
    "name": "resumable",
    "seed": 0,
    "data": {"name": "sdigits", "options": {"limit_train": 192, "limit_test": 64}},
    "model": {"family": "s4d", "d_model": 8, "d_state": 8, "dt_min": 0.01, "dt_max": 0.5},
    "float": {"epochs": 2, "batch_size": 32, "ssm_lr": 0.01},
    "quant": {"default": {"bits": 4}},
    "ptq": {"calibration_batches": 2, "batch_size": 32},
    "qat": {"epochs": 3, "batch_size": 32},
    "eval": {"batch_size": 64},
}


class PowerLoss(BaseException):
    """The process ends here: nothing after it runs (no handler catches a BaseException)."""


def _quantize(recipe_path, out) -> int:
    return main(["quantize", "--recipe", str(recipe_path), "--out", str(out), "--quiet"])


def _results(out) -> tuple:
    """What must not depend on interruptions: accuracies and footprint, every saved tensor."""
    m = json.loads((out / "metrics.json").read_text())
    fields = {s: m[s]["accuracy"] for s in ("float", "ptq", "qat")}
    fields["history"] = [(h["accuracy"], h["loss"], h["train_loss"]) for h in m["qat"]["history"]]
    return fields, m["footprint"], (out / "model.safetensors").read_bytes()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    base = tmp_path_factory.mktemp("resume")
    recipe = base / "r.yaml"
    recipe.write_text(yaml.safe_dump(RESUMABLE))
    assert _quantize(recipe, base / "full") == 0
    return recipe, _results(base / "full")


def _die_after(monkeypatch, name: str, count: int, death):
    """Run ``death()`` right after the ``count``-th complete write of a file called ``name``."""
    real, seen = os.replace, []

    def replace(src, dst):
        real(src, dst)
        if Path(dst).name == name:
            seen.append(dst)
            if len(seen) == count:
                death()

    monkeypatch.setattr(os, "replace", replace)


def _power_loss():
    raise PowerLoss


@pytest.mark.parametrize(
    "name, count",
    [("train_state.safetensors", 1), ("float.safetensors", 1), ("qat_state.safetensors", 2)],
    ids=["float", "before-PTQ", "QAT"],
)
def test_a_run_stopped_between_two_writes_resumes_exactly(
    uninterrupted, tmp_path, monkeypatch, name, count
):
    """Death right after a write (in float training, between float.safetensors and float.json
    just before PTQ, in QAT): the same command again gives the same metrics and tensors."""
    recipe, expected = uninterrupted
    out = tmp_path / "run"
    _die_after(monkeypatch, name, count, _power_loss)
    with pytest.raises(PowerLoss):
        _quantize(recipe, out)
    monkeypatch.undo()
    assert not (out / "metrics.json").exists()
    assert _quantize(recipe, out) == 0
    assert _results(out) == expected


KILLER = """
import os, signal, sys
from pathlib import Path
real, seen = os.replace, []
def replace(src, dst):
    real(src, dst)
    if Path(dst).name == sys.argv[1]:
        seen.append(dst)
        if len(seen) == int(sys.argv[2]):
            os.kill(os.getpid(), getattr(signal, sys.argv[3]))
os.replace = replace
from qssm.cli import main
sys.exit(main(sys.argv[4:]))
"""


def _killed(recipe, out, name, count, sig="SIGKILL"):
    """``qssm quantize`` in a subprocess that gets signal ``sig`` right after the ``count``-th
    write of ``name``; its return code."""
    root = Path(__file__).resolve().parent.parent
    argv = ["quantize", "--recipe", str(recipe), "--out", str(out), "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", KILLER, name, str(count), sig, *argv]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def test_sigkill_during_qat_then_resume_is_exact(uninterrupted, tmp_path):
    recipe, expected = uninterrupted
    out = tmp_path / "run"
    done = _killed(recipe, out, "qat_state.safetensors", 1)
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert (out / "qat_state.safetensors").exists() and not (out / "metrics.json").exists()
    assert _quantize(recipe, out) == 0  # the dead process's lock is no obstacle
    assert _results(out) == expected


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, count, sig, status",
    [
        ("train_state.safetensors", 1, "SIGKILL", -signal.SIGKILL),
        ("float.json", 1, "SIGKILL", -signal.SIGKILL),
        ("qat_state.safetensors", 2, "SIGKILL", -signal.SIGKILL),
        ("qat_state.safetensors", 1, "SIGTERM", 143),
        ("train_state.safetensors", 2, "SIGINT", 130),
    ],
)
def test_killed_processes_resume_exactly(uninterrupted, tmp_path, name, count, sig, status):
    recipe, expected = uninterrupted
    out = tmp_path / "run"
    done = _killed(recipe, out, name, count, sig)
    assert done.returncode == status, done.stderr
    assert _quantize(recipe, out) == 0
    assert _results(out) == expected
