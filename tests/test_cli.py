import json

import yaml

from qssm.cli import main

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


def test_recipes_lists_shipped(capsys):
    assert main(["recipes"]) == 0
    assert "fp32_s4d_smnist5k.yaml" in capsys.readouterr().out


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
