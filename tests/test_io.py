import json

import pytest
import torch

from qssm.io import CheckpointError, atomic_write, load_model_files, load_state, save_model


def test_atomic_write_leaves_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "metrics.json"
    atomic_write(target, "old")

    with pytest.raises(TypeError):
        atomic_write(target, 42)  # not bytes/str: fails before the rename
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]  # no temp file left behind


def test_model_roundtrip(tmp_path):
    model = torch.nn.Linear(3, 2)
    save_model(tmp_path, model, {"model": {"kind": "linear"}})
    header, tensors = load_model_files(tmp_path)
    assert header["model"] == {"kind": "linear"}
    other = torch.nn.Linear(3, 2)
    load_state(other, tensors, "x")
    torch.testing.assert_close(other.weight, model.weight)


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    save_model(tmp_path, torch.nn.Linear(3, 2), {})
    f = tmp_path / "model.safetensors"
    f.write_bytes(f.read_bytes()[:40])
    with pytest.raises(CheckpointError, match="truncated or foreign"):
        load_model_files(tmp_path)


def test_foreign_files_are_refused_without_unpickling(tmp_path):
    # a pickle (torch.save) renamed to .safetensors must not be executed or loaded
    torch.save({"w": torch.ones(2)}, tmp_path / "model.safetensors")
    (tmp_path / "model.json").write_text(json.dumps({"format": "qssm-model", "version": 1}))
    with pytest.raises(CheckpointError, match="truncated or foreign"):
        load_model_files(tmp_path)
    (tmp_path / "model.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(CheckpointError, match="not a qssm model"):
        load_model_files(tmp_path)
    (tmp_path / "model.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_model_files(tmp_path)


def test_shape_mismatch_names_the_tensor(tmp_path):
    save_model(tmp_path, torch.nn.Linear(3, 2), {})
    _, tensors = load_model_files(tmp_path)
    with pytest.raises(CheckpointError, match="weight has shape"):
        load_state(torch.nn.Linear(4, 2), tensors, "m")
