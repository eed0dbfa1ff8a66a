"""Files: atomic writes, and models saved as safetensors + JSON (loading never unpickles)."""

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

FORMAT = "qssm-model"
VERSION = 1


class CheckpointError(ValueError):
    """A model file that is missing, truncated or not written by qssm."""


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temp name in the same folder; rename it to ``path`` only if the block succeeds,
    so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write(path: str | Path, data: bytes | str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data.encode() if isinstance(data, str) else data)


def write_json(path: str | Path, obj) -> None:
    atomic_write(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path) -> dict:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: not valid JSON ({err}); the file is damaged") from None


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: missing; was the run finished? (rerun the command)")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(
            f"{path}: not a readable safetensors file ({err}); it is truncated or foreign — "
            "restore it or rerun the stage with --force"
        ) from None


def save_model(
    run_dir: str | Path, model: torch.nn.Module | dict, meta: dict, stem: str = "model"
) -> None:
    """``<stem>.safetensors`` (the weights of ``model``, or a dict of tensors) + ``<stem>.json``
    (architecture and ``meta``), read back by :func:`load_model_files`."""
    run_dir = Path(run_dir)
    tensors = model.state_dict() if isinstance(model, torch.nn.Module) else model
    with atomic_path(run_dir / f"{stem}.safetensors") as tmp:  # safetensors, written atomically
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp)
    write_json(run_dir / f"{stem}.json", {"format": FORMAT, "version": VERSION, **meta})


def load_model_files(
    run_dir: str | Path, stem: str = "model"
) -> tuple[dict, dict[str, torch.Tensor]]:
    """(header, tensors) after checking the header is ours."""
    path = Path(run_dir) / f"{stem}.json"
    header = read_json(path)
    if header.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a qssm model description")
    if header.get("version") != VERSION:
        raise CheckpointError(
            f"{path}: format version {header.get('version')}, this qssm reads version {VERSION}"
        )
    return header, load_tensors(path.with_suffix(".safetensors"))


def load_state(module: torch.nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    """load_state_dict with an error that names the file and the mismatching keys."""
    expected = module.state_dict()
    missing, unexpected = expected.keys() - tensors.keys(), tensors.keys() - expected.keys()
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: tensors do not match the described model "
            f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})"
        )
    for k, v in expected.items():
        if v.shape != tensors[k].shape:
            raise CheckpointError(
                f"{source}: {k} has shape {tuple(tensors[k].shape)}, expected {tuple(v.shape)}"
            )
    module.load_state_dict(tensors)
