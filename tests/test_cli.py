import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from qssm import __version__
from qssm.cli import main, parser
from qssm.io import load_checkpoint
from qssm.models.backbone import Classifier
from qssm.recipe import load_recipe, parse_recipe
from qssm.runs import load_data, memory_estimate

TINY = {
    "name": "tiny",
    "seed": 0,
    "data": {"name": "sdigits", "options": {"limit_train": 256, "limit_test": 128}},
    "model": {"family": "s4d", "d_model": 8, "d_state": 8},
    "float": {"epochs": 2, "batch_size": 32},
}


def _recipe(tmp_path, recipe, name="r.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


def _train_one_epoch(tmp_path):
    run = tmp_path / "run"
    recipe = _recipe(tmp_path, {**TINY, "float": {"epochs": 1}})
    assert main(["train", "--recipe", recipe, "--out", str(run), "--quiet"]) == 0
    return run


def _snapshot(run):
    return {p.name: p.read_bytes() for p in sorted(run.iterdir())}


def test_train_eval_and_refusals(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--recipe", _recipe(tmp_path, TINY), "--out", str(run), "--quiet"]) == 0
    for name in (
        "recipe.yaml",
        "model.safetensors",
        "model.json",
        "metrics.json",
        "report.md",
        "training.png",
    ):
        assert (run / name).exists(), name
    assert not (run / "train_state.safetensors").exists()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["recipe"] == "tiny" and 0 <= metrics["float"]["accuracy"] <= 1
    assert yaml.safe_load((run / "recipe.yaml").read_text())["model"]["dt_max"] == 0.1  # resolved

    capsys.readouterr()
    assert main(["--json", "eval", str(run)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["stage"] == "float" and out["accuracy"] == metrics["float"]["accuracy"]
    assert out["stored_accuracy"] == metrics["float"]["accuracy"]

    before = _snapshot(run)
    assert main(["train", "--recipe", _recipe(tmp_path, TINY), "--out", str(run)]) == 2
    assert "finished run" in capsys.readouterr().err
    bad = _recipe(tmp_path, {**TINY, "float": {"epochs": "two"}}, "bad.yaml")
    assert main(["train", "--recipe", bad, "--out", str(run), "--force"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "float.epochs" in err
    unknown = _recipe(tmp_path, {**TINY, "modle": {}}, "unknown.yaml")
    assert main(["train", "--recipe", unknown, "--out", str(run), "--force"]) == 2
    assert "unknown key 'modle'" in capsys.readouterr().err
    assert _snapshot(run) == before


def test_corrupt_checkpoint_is_reported(tmp_path, capsys):
    run = _train_one_epoch(tmp_path)
    path = run / "model.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    assert main(["eval", str(run)]) == 2
    assert "truncated or foreign" in capsys.readouterr().err


def test_recipes_are_listed_and_taken_by_name_outside_the_checkout(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no recipes/ folder here
    assert main(["recipes", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    files = sorted(Path(__file__).resolve().parent.parent.joinpath("recipes").rglob("*.yaml"))
    assert len(listed) == len(files) and {"hetero_4_8", "sweeps/sdigits_s4d"} <= set(listed)
    assert not any(v.startswith("INVALID") for v in listed.values())
    for name in ("hetero_4_8", "recipes/hetero_4_8.yaml", "sweeps/sdigits_s4d"):
        assert load_recipe(name).name in ("hetero_4_8", "sweep_sdigits_s4d")
    # the recipe resolves by name; the run stops at the next input, --from
    assert main(["quantize", "--recipe", "hetero_4_8", "--from", "nowhere", "--quiet"]) == 2
    assert "nowhere is not a finished run" in capsys.readouterr().err
    assert main(["quantize", "--recipe", "hetero_4_9"]) == 2
    assert "hetero_4_9: no such recipe file or shipped recipe" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_version_help_examples_and_json_after_the_command(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"qssm {__version__}"
    commands = parser()._subparsers._group_actions[0].choices
    for name, sub in commands.items():
        help_text = sub.format_help()
        assert f"example:\n  qssm {name}" in help_text, name
        assert "--json" in help_text, name
    run = _train_one_epoch(tmp_path)
    capsys.readouterr()
    assert main(["eval", str(run), "--json"]) == 0
    after = json.loads(capsys.readouterr().out)
    assert main(["--json", "eval", str(run)]) == 0
    assert json.loads(capsys.readouterr().out) == after
    assert main(["eval", str(tmp_path)]) == 2  # a folder, but not a run dir
    err = capsys.readouterr().err
    assert "not a finished run dir" in err and "no recipe.yaml or metrics.json" in err


def test_quantize_refuses_bad_input_before_touching_the_run(tmp_path, capsys):
    run = _train_one_epoch(tmp_path)
    before = _snapshot(run)
    cases = [
        ({"quant": {"targets": [{"roles": ["gru.gate"], "bits": 4}]}}, "match nothing"),
        ({"quant": {"default": {"bits": 99}}}, "quant.default.bits"),
        ({"data": {"name": "sdigits", "options": {"colour": 1}}, "quant": {}}, "colour"),
        ({}, "no `quant` section"),
    ]
    for change, message in cases:
        path = _recipe(tmp_path, {**TINY, **change}, "q.yaml")
        assert main(["quantize", "--recipe", path, "--out", str(run), "--force"]) == 2
        assert message in capsys.readouterr().err
    other = {**TINY, "model": {"family": "mingru", "d_model": 8}, "quant": {}}
    path = _recipe(tmp_path, other, "other.yaml")
    assert (
        main(["quantize", "--recipe", path, "--from", str(run), "--out", str(run), "--force"]) == 2
    )
    assert "does not hold a float model of this recipe" in capsys.readouterr().err
    assert _snapshot(run) == before


# --- faults during a run: each a clear outcome, nothing lost ---


def test_divergence_exits_3_and_writes_no_metrics(tmp_path, capsys):
    run = tmp_path / "run"
    recipe = {**TINY, "float": {"epochs": 3, "batch_size": 32, "lr": 1e6, "grad_clip": None}}
    assert main(["train", "--recipe", _recipe(tmp_path, recipe), "--out", str(run)]) == 3
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("qssm: error: float diverged at epoch 1/3, step ")
    assert "lower float.lr (now 1e+06) or set float.grad_clip" in err
    assert not (run / "metrics.json").exists()


def test_divergence_keeps_the_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    """A loss that turns NaN in epoch 2: the checkpoint of epoch 1 stays as it was."""
    from qssm import train

    run, real, calls = tmp_path / "run", train.loss_fn, []

    def nan_in_epoch_2(*args):
        calls.append(1)
        loss = real(*args)
        return loss * float("nan") if len(calls) == 8 + 3 else loss  # 8 steps per epoch

    monkeypatch.setattr(train, "loss_fn", nan_in_epoch_2)
    recipe = {**TINY, "float": {"epochs": 2, "batch_size": 32}}
    assert main(["train", "--recipe", _recipe(tmp_path, recipe), "--out", str(run)]) == 3
    err = capsys.readouterr().err
    state = run / "train_state.safetensors"
    assert "epoch 2/2, step 3/8: the loss is nan; lower float.lr (now 0.01) or lower " in err
    assert f"float.grad_clip (now 1); the checkpoint of epoch 1 is kept in {state}" in err
    header, _ = load_checkpoint(state)
    assert header["epoch"] == 1 and not (run / "metrics.json").exists()


def test_an_impossible_size_is_refused_before_training(tmp_path, capsys):
    run = tmp_path / "run"
    big = {**TINY, "model": {"family": "s4d", "d_model": 200000, "d_state": 64}}
    assert main(["train", "--recipe", _recipe(tmp_path, big), "--out", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "model.d_model: 200000 needs an estimated" in err
    # the estimate, on a model small enough to build: 16 bytes (weight, gradient, two AdamW
    # moments) per parameter of the model built for real, 4 bytes per (batch, step, channel)
    recipe = parse_recipe({**big, "model": {**big["model"], "d_model": 500}})
    data = load_data(recipe)
    real = Classifier(recipe.model_dict(), data.d_input, data.n_classes)
    length = data.train.x.shape[1]
    assert memory_estimate(recipe, data, quant=False) == (
        16 * sum(p.numel() for p in real.parameters()),
        4 * max(32 * 1, 128) * length * 500,  # one layer of a 32 batch; eval: all 128 at once
    )
    assert "GiB is available; lower model.d_model" in err
    assert not run.exists()
    # batches are capped by the split: a huge batch_size on 256 sequences fits
    huge_batch = {**TINY, "float": {"batch_size": 10**9}, "eval": {"batch_size": 10**9}}
    assert main(["train", "--recipe", _recipe(tmp_path, huge_batch), "--out", str(run)]) == 0


HOLDER = """
import fcntl, os, sys, time
f = open(sys.argv[1], "a+")
fcntl.flock(f, fcntl.LOCK_EX)
f.truncate(0); f.write(f"{os.getpid()}\\n"); f.flush()
print("locked", flush=True)
time.sleep(600)
"""


def test_one_writer_per_run_dir(tmp_path, capsys):
    """A run dir locked by a live process (as `qssm` locks it) is refused with its pid and left
    as it was; once that process is killed, its lock file is no obstacle."""
    run = _train_one_epoch(tmp_path)
    before = _snapshot(run)
    other = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(run / ".lock")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert other.stdout.readline() == "locked\n"
        recipe = _recipe(tmp_path, {**TINY, "float": {"epochs": 1}})
        argv = ["train", "--recipe", recipe, "--out", str(run), "--force", "--quiet"]
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err == (
            f"qssm: error: {run} is in use by another qssm process (pid {other.pid}); "
            "wait for it to finish, or pass another --out"
        )
        assert _snapshot(run) | {".lock": b""} == before | {".lock": b""}
    finally:
        other.kill()
        other.wait()
    assert main(argv) == 0


def test_a_full_disk_names_the_file_and_keeps_what_was_written(tmp_path, capsys, monkeypatch):
    """ENOSPC when metrics.json is renamed into place: exit 2 naming the file; the model files
    and the checkpoint written before are intact, and the same command finishes the run."""
    run = tmp_path / "run"
    recipe = _recipe(tmp_path, TINY)
    argv = ["train", "--recipe", recipe, "--out", str(run), "--quiet"]
    assert main([*argv, "--out", str(tmp_path / "clean")]) == 0
    real = os.replace

    def full(src, dst):
        if Path(dst).name == "metrics.json":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(src, dst)

    monkeypatch.setattr(os, "replace", full)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert err.startswith(f"qssm: error: {run / 'metrics.json'}: could not be written: ")
    assert "No space left on device (ENOSPC)" in err
    assert not list(run.glob(".*.tmp")) and not (run / "metrics.json").exists()
    load_checkpoint(run / "train_state.safetensors")  # intact
    assert (run / "model.safetensors").read_bytes() == (
        tmp_path / "clean/model.safetensors"
    ).read_bytes()
    monkeypatch.undo()
    assert main(argv) == 0
    clean = json.loads((tmp_path / "clean/metrics.json").read_text())["float"]
    assert json.loads((run / "metrics.json").read_text())["float"]["accuracy"] == clean["accuracy"]


@pytest.mark.parametrize("sig, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_during_a_write_waits_for_it(tmp_path, capsys, monkeypatch, sig, status):
    """SIGTERM / SIGINT arriving while the checkpoint is being written: the write completes,
    then qssm exits 143 / 130 and the checkpoint loads."""
    run, real = tmp_path / "run", os.replace

    def signal_then_replace(src, dst):
        if Path(dst).name == "train_state.safetensors":
            os.kill(os.getpid(), sig)
        real(src, dst)

    monkeypatch.setattr(os, "replace", signal_then_replace)
    assert main(["train", "--recipe", _recipe(tmp_path, TINY), "--out", str(run)]) == status
    assert "interrupted" in capsys.readouterr().err
    header, _ = load_checkpoint(run / "train_state.safetensors")
    assert header["epoch"] == 1
