"""Files: atomic writes that signals do not interrupt, models saved as safetensors + JSON
(loading never unpickles), and the provenance record results carry."""

import errno
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from .version import __version__

FORMAT = "qssm-model"
VERSION = 1


def git_commit(root: Path) -> dict:
    """The checked-out commit of the git work tree ``root`` and whether it had uncommitted
    changes; None and None where ``root`` is not one (an installed qssm)."""

    def git(*args: str) -> str:
        try:
            out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
        except OSError:  # no git
            return ""
        return out.stdout.strip() if out.returncode == 0 else ""

    commit = git("rev-parse", "HEAD") if (root / ".git").exists() else ""
    return {
        "commit": commit or None,
        "dirty": bool(git("status", "--porcelain", "--untracked-files=no")) if commit else None,
    }


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def provenance(preprocessing: dict | None = None) -> dict:
    """Where a result comes from: the qssm version and, run from a checkout, its git commit; the
    torch, Brevitas, numpy and Python versions; torch's thread count (results can depend on it);
    the command line; the input preprocessing (``Dataset.preprocessing``) and the initial state
    every sequence starts from."""
    source = Path(__file__).resolve().parent.parent
    return {
        "qssm": __version__,
        **git_commit(source),
        "torch": torch.__version__,
        "brevitas": _version("brevitas"),
        "numpy": _version("numpy"),
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "preprocessing": preprocessing or {},
        "initial_state": "zeros",
    }


class CheckpointError(ValueError):
    """A model file that is missing, truncated or not written by qssm."""


class WriteError(OSError):
    """A file that could not be written (disk full, no permission, …); the message names it."""


class Interrupted(BaseException):
    """SIGINT or SIGTERM, raised once no write is in progress (exit status 128 + ``signum``)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


_held: list[int] = []  # [depth of nested writes, signals received meanwhile…]


def _on_signal(signum, frame) -> None:
    if _held and _held[0] > 0:
        _held.append(signum)  # raised when the write in progress is complete
    else:
        raise Interrupted(signum)


@contextmanager
def interruptible_between_writes():
    """Within the block, SIGINT and SIGTERM raise :class:`Interrupted`, but never inside an
    atomic write (nor between the two files of :func:`save_model`): a signal that arrives
    during one is raised when it is complete.  The previous handlers come back afterwards."""
    old = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    _held[:] = [0]
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        _held.clear()


@contextmanager
def _writing():
    if _held:
        _held[0] += 1
    try:
        yield
    finally:
        if _held:
            _held[0] -= 1
            if _held[0] == 0 and len(_held) > 1:
                signum = _held.pop()
                del _held[1:]
                raise Interrupted(signum)


def _fsync(path: str | Path, flags: int = os.O_RDONLY) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temp name in the same folder; rename it to ``path`` (after flushing it to disk)
    only if the block succeeds, so readers never see half a file, even after a power loss.
    An OSError (a full disk, …) becomes a :class:`WriteError` naming ``path``; the previous
    version of ``path`` is then untouched."""
    path = Path(path)
    with _writing():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            os.close(fd)
        except OSError as err:
            raise _write_error(path, err) from None
        try:
            yield tmp
            _fsync(tmp)
            os.replace(tmp, path)
            _fsync(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        except BaseException as err:
            Path(tmp).unlink(missing_ok=True)
            if isinstance(err, OSError) and not isinstance(err, WriteError):
                raise _write_error(path, err) from None
            raise


def _write_error(path: Path, err: OSError) -> WriteError:
    code = errno.errorcode.get(err.errno, "") if err.errno else ""
    why = f"{err.strerror or err} ({code})" if code else str(err)
    out = WriteError(
        f"{path}: could not be written: {why}; its previous version and every file written "
        "before it are intact — fix the cause (free disk space, …) and run the same command "
        "again to resume"
    )
    out.errno = err.errno
    return out


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
    with _writing():  # both files, or a signal waits
        atomic_write(run_dir / f"{stem}.safetensors", _serialize(tensors))
        write_json(run_dir / f"{stem}.json", {"format": FORMAT, "version": VERSION, **meta})


def _serialize(tensors: dict, meta: dict | None = None) -> bytes:
    """safetensors bytes (written by Python, so that a full disk is an OSError)."""
    return save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, meta)


def save_checkpoint(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """One safetensors file holding ``tensors`` and, in its header, ``meta`` as JSON: a single
    atomic write, so tensors and description can never come from two different moments."""
    meta = {"format": FORMAT, "version": VERSION, **meta}
    atomic_write(path, _serialize(tensors, {"qssm": json.dumps(meta)}))


def load_checkpoint(path: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(meta, tensors) of a :func:`save_checkpoint` file."""
    tensors = load_tensors(path)
    with safe_open(str(path), "pt") as f:
        text = (f.metadata() or {}).get("qssm")
    try:
        meta = json.loads(text)
    except (TypeError, json.JSONDecodeError):
        meta = {}
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise CheckpointError(
            f"{path}: not a qssm training checkpoint of this version; rerun with --force"
        )
    return meta, tensors


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
