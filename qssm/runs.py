"""Run directories and the stages that fill them: float training, PTQ, QAT, evaluation.

A run dir holds ``recipe.yaml`` (resolved), ``model.safetensors`` + ``model.json``, ``report.md``
with plots, and ``metrics.json``, which is written last: a run without it is unfinished, and
running the same command again resumes it (a finished float stage is kept in ``float.*``).
"""

import contextlib
import copy
import fcntl
import importlib
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from .data import Dataset, load_dataset
from .io import (
    CheckpointError,
    atomic_write,
    load_model_files,
    load_state,
    provenance,
    read_json,
    save_model,
    write_json,
)
from .models.backbone import Classifier
from .quant.calibrate import calibrate
from .quant.footprint import footprint
from .quant.wrap import wrap
from .recipe import QuantConfig, Recipe, RecipeError, dump_recipe, load_recipe
from .report import write_run_report
from .train import evaluate, fit, seed_everything

# resumable training state of the float and QAT stages (``_fit``), deleted once the run is finished
# (the .json files: the second half of the checkpoints of runs written before issue 16)
CHECKPOINTS = tuple(f"{s}_state.{ext}" for s in ("train", "qat") for ext in ("json", "safetensors"))
STAGE_FILES = ("metrics.json", *CHECKPOINTS, "float.json", "float.safetensors", "neurobench.json")


class RunError(ValueError):
    """A run dir that cannot be used as asked; the message says what to do instead."""


@dataclass(frozen=True)
class Hardware:
    """What hardware-aware QAT (``qat.hardware``) needs of a hardware package; ``qssm.cli``
    passes hwmap's.  ``check(cfg)`` raises ValueError for a target it cannot load;
    ``noise(model, cfg, x)`` (x: the training inputs, numpy) is a context manager inside which
    the quantized model trains with the target's analog errors, yielding a summary."""

    check: Callable
    noise: Callable


@contextlib.contextmanager
def run_lock(out: Path):
    """One writer per run dir: an exclusive ``fcntl`` lock on ``out/.lock`` (which holds the
    owner's pid) for the duration of the block.  The OS drops the lock when its process ends, even
    by SIGKILL, so the lock file of a dead process is no obstacle.  A run dir locked by another
    process is a RunError; nothing in it is touched."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            raise RunError(
                f"{out} is in use by another qssm process (pid {f.read().strip() or '?'}); "
                "wait for it to finish, or pass another --out"
            ) from None
        f.truncate(0)
        f.write(f"{os.getpid()}\n")
        f.flush()
        yield  # closing the file releases the lock


def open_run(out: Path, recipe: Recipe, force: bool) -> Path:
    """Check ``out`` can take this recipe and write the resolved ``recipe.yaml`` into it (the
    CLI holds :func:`run_lock` around it; temp files a killed process left are removed).

    A finished run (``metrics.json``) is never touched without ``force``; an unfinished run of the
    same recipe is resumed; an unfinished run of another recipe needs ``force``."""
    text = dump_recipe(recipe)
    if (out / "metrics.json").exists() and not force:
        raise RunError(f"{out} holds a finished run; pass --force to overwrite it, or --out DIR")
    old = out / "recipe.yaml"
    if old.exists() and not force and old.read_text() != text:
        raise RunError(
            f"{out} holds an unfinished run of a different recipe; "
            "pass --force to start over, or --out DIR"
        )
    if force:
        for name in STAGE_FILES:
            (out / name).unlink(missing_ok=True)
    for tmp in [*out.glob(".*.tmp"), *out.glob("points/.*.tmp")]:  # of a killed process
        tmp.unlink()
    atomic_write(out / "recipe.yaml", text)
    return out


def load_data(recipe: Recipe) -> Dataset:
    d = recipe.data
    return load_dataset(d.name, seed=recipe.seed, root=d.root, download=d.download, **d.options)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def make_model(config: dict, d_input: int, n_classes: int) -> torch.nn.Module:
    """The float model of a recipe's ``model`` section: a :class:`Classifier` of a built-in
    family, or for family ``custom`` the class its ``module`` names, built with ``options``."""
    if config["family"] != "custom":
        return Classifier(config, d_input, n_classes)
    module, _, name = config["module"].partition(":")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise RecipeError(
            f"model.module: cannot import {config['module']} ({err}); put the package that "
            "defines it on PYTHONPATH"
        ) from None
    return cls(d_input=d_input, n_classes=n_classes, **config["options"])


def build_model(header: dict, quant: dict | None = None) -> torch.nn.Module:
    """A model from its description; quantized (``wrap``) when ``quant`` is given."""
    model = make_model(header["model"], header["d_input"], header["n_classes"])
    if quant is not None:
        model, _ = wrap(model, QuantConfig.model_validate(quant))
    return model


QUANT_FORMAT = 2  # 2: ssm.state `per_channel` is one scale per SSM channel (1: per element)


def saved_quant(header: dict) -> dict | None:
    """The quant section a saved model was built with, in today's terms: runs saved before
    QUANT_FORMAT 2 meant one scale per state element by ssm.state `per_channel`."""
    quant = header.get("quant")
    if quant is None or header.get("quant_format", 1) >= QUANT_FORMAT:
        return quant
    quant = copy.deepcopy(quant)
    for site, spec in header.get("sites", {}).items():
        if spec["role"] == "ssm.state" and spec["granularity"] == "per_channel":
            module = re.escape(site.split(":")[0])
            target = {"roles": ["ssm.state"], "modules": module, "granularity": "per_element"}
            quant.setdefault("targets", []).append(target)
    return quant


def saved_tensors(tensors: dict, model: torch.nn.Module) -> dict:
    """A saved quantized model's tensors under today's names.  Runs saved before the float
    blocks had activation taps kept an activation quantizer ``<module>.qz.<site>`` where it is
    now ``<module>.taps.<site>``, and a discrete S4D stored the continuous parameters it no
    longer uses (dropped)."""
    modules, params = dict(model.named_modules()), dict(model.named_parameters())
    out = {}
    for key, value in tensors.items():
        moved = re.sub(r"(^|\.)qz\.", r"\1taps.", key, count=1)
        if moved != key and moved.partition(".quant.")[0] in modules:
            out[moved] = value
        elif key in params or not re.search(r"\.ssm\.(log_dt|log_A_real|A_imag|B)$", key):
            out[key] = value
    return out


def load_run_model(run_dir: Path, stem: str = "model") -> tuple[torch.nn.Module, dict]:
    """Rebuild a run's model (float or quantized) from its files alone (nothing unpickled)."""
    header, tensors = load_model_files(run_dir, stem)
    source = str(run_dir / f"{stem}.safetensors")
    try:
        model = build_model(header, saved_quant(header))
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(
            f"{run_dir / f'{stem}.json'}: bad model description ({err})"
        ) from None
    if header.get("quant") is None:
        load_state(model, tensors, source)
    else:  # Brevitas restores the calibrated scales through its own state-dict hooks
        try:
            model.load_state_dict(saved_tensors(tensors, model))
        except RuntimeError as err:
            raise CheckpointError(
                f"{source}: tensors do not match the described model ({err})"
            ) from None
    model.eval()
    return model, header


CGROUP_MEMORY = (  # (limit, usage) files of the cgroup v2 and v1 memory controllers
    ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
    ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
)


def available_memory() -> int | None:
    """Bytes of memory this machine can still give: /proc/meminfo's MemAvailable, or less under
    a cgroup memory limit; None where neither can be read."""
    found = re.search(r"^MemAvailable:\s+(\d+) kB", _read("/proc/meminfo") or "", re.M)
    avail = int(found.group(1)) * 1024 if found else None
    for limit, usage in CGROUP_MEMORY:
        try:
            free = int(_read(limit)) - int(_read(usage))
        except (TypeError, ValueError):  # missing, or "max"
            continue
        avail = free if avail is None else min(avail, free)
    return avail


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


def memory_estimate(recipe: Recipe, data: Dataset, quant: bool) -> tuple[int, int]:
    """A lower bound of the bytes training needs: (float32 parameters with their gradients and
    two AdamW moments, 16 bytes per parameter; activations: one float32 (batch, length, d_model)
    tensor per layer kept for the backward pass, or one per evaluation batch).  The parameters
    are counted on a model built on the meta device, so nothing is allocated."""
    with torch.device("meta"):
        params = n_params(make_model(recipe.model_dict(), data.d_input, data.n_classes))
    (n, length), m = data.train.x.shape[:2], recipe.model
    if m.family == "custom":  # activations of a model of one's own: not estimated
        return 16 * params, 0
    batch = max(recipe.float.batch_size, recipe.qat.batch_size if quant else 0)
    rows = max(min(batch, n) * m.n_layers, min(recipe.eval.batch_size, len(data.test.y)))
    return 16 * params, 4 * rows * length * m.d_model


def check_memory(recipe: Recipe, data: Dataset, quant: bool, source: str = "recipe") -> None:
    """Refuse, before any work, a recipe whose model or batches cannot fit in the available
    memory, naming the recipe key whose halving saves the most and the estimate."""
    params, acts = memory_estimate(recipe, data, quant)
    avail = available_memory()
    if avail is None or params + acts <= avail:
        return
    sections = ("model", "float", "qat", "eval") if quant else ("model", "float", "eval")
    candidates = []
    for section in sections:
        part = getattr(recipe, section)
        for key, value in part.model_dump().items():
            if (section == "model" or key == "batch_size") and type(value) is int and value > 1:
                smaller = part.model_copy(update={key: value // 2})
                changed = recipe.model_copy(update={section: smaller})
                with contextlib.suppress(ValueError, RuntimeError):  # a model the half breaks
                    need = sum(memory_estimate(changed, data, quant))
                    candidates.append((need, section, key, value))
    _, section, key, value = min(candidates)
    raise RecipeError(
        f"{source}: {section}.{key}: {value} needs an estimated {_gib(params + acts)} of memory "
        f"to train (parameters, gradients and optimizer state {_gib(params)}, activations "
        f"{_gib(acts)}), {_gib(avail)} is available; lower {section}.{key}"
    )


def _gib(n: int) -> str:
    return f"{n / 2**30:,.1f} GiB"


def model_header(recipe: Recipe, data: Dataset, stage: str, **extra) -> dict:
    return {
        "model": recipe.model_dict(),
        "d_input": data.d_input,
        "n_classes": data.n_classes,
        "stage": stage,
        **extra,
    }


def float_source(recipe: Recipe, source: str, data: Dataset | None = None) -> tuple[Path, str]:
    """(run dir, file stem) of the float model in a finished run, checked against the recipe
    (and the data's input width and classes)."""
    run = Path(source)
    stem = "float" if (run / "float.json").exists() else "model"
    if not (run / "metrics.json").exists():
        raise RunError(f"{run} is not a finished run (no metrics.json); finish it or pick another")
    header, _ = load_model_files(run, stem)
    if header.get("quant") is not None or header.get("model") != recipe.model_dict():
        raise RunError(
            f"{run} does not hold a float model of this recipe's `model` section; "
            "point --from / float.checkpoint at a float run of the same model"
        )
    d_input, n_classes = header.get("d_input"), header.get("n_classes")
    if data is not None and (d_input, n_classes) != (data.d_input, data.n_classes):
        raise RunError(
            f"{run} was trained on {d_input} input channels and {n_classes} classes; this "
            f"recipe's data has {data.d_input} and {data.n_classes}"
        )
    return run, stem


def float_stage(
    recipe: Recipe, data: Dataset, out: Path, source: str | None, stem: str, progress: bool
) -> tuple[Classifier, dict]:
    """The float model: reused from ``source`` (a finished run dir), resumed from ``out/<stem>``,
    or trained now; saved as ``out/<stem>`` (the run dir stands alone).  Returns (model, float
    metrics)."""
    source = source or recipe.float.checkpoint
    if not source and stem == "float" and (out / "float.json").exists():
        model, header = load_run_model(out, stem)  # done before an interruption
        return model, header["metrics"]
    if source:
        model, _ = load_run_model(*float_source(recipe, source))
        stored = read_json(Path(source) / "metrics.json").get("float", {})
        history, seconds_per_epoch = stored.get("history", []), stored.get("seconds_per_epoch")
        extra = {"source": str(source)}
    else:
        seed_everything(recipe.seed)
        model = make_model(recipe.model_dict(), data.d_input, data.n_classes)
        history = _fit(model, recipe, data, out, "float", progress)
        seconds = [h["seconds"] for h in history]
        seconds_per_epoch = sum(seconds) / len(seconds) if seconds else None
        extra = {"epochs": len(history)}
    metrics = {
        **evaluate(model, data.test, recipe.eval.batch_size, recipe.float.mode),
        **extra,
        "params": n_params(model),
        "history": history,
        "seconds_per_epoch": seconds_per_epoch,
    }
    save_model(out, model, model_header(recipe, data, "float", metrics=metrics), stem)
    return model, metrics


def _fit(model, recipe: Recipe, data: Dataset, out: Path, stage: str, progress: bool, teacher=None):
    """:func:`~qssm.train.fit` for a run's ``float`` stage (in ``float.mode``, resumable from
    ``train_state``) or its ``QAT`` stage (recurrent, resumable from ``qat_state``)."""
    qat = stage == "QAT"
    return fit(
        model,
        data.train,
        data.test,
        recipe.qat if qat else recipe.float,
        seed=recipe.seed,
        mode="recurrent" if qat else recipe.float.mode,
        state_path=out / f"{'qat' if qat else 'train'}_state.safetensors",
        eval_batch=recipe.eval.batch_size,
        desc=stage,
        progress=progress,
        teacher=teacher,
        section="qat" if qat else "float",
    )


def finish_run(out: Path, metrics: dict, recipe: Recipe, data: Dataset) -> dict:
    """The provenance, report.md, then metrics.json (the run is finished); checkpoints go."""
    metrics["provenance"] = provenance(data.preprocessing)
    write_run_report(out, recipe, data, metrics)
    write_json(out / "metrics.json", metrics)  # last: the run is finished
    for name in CHECKPOINTS:
        (out / name).unlink(missing_ok=True)
    return metrics


def train_run(recipe: Recipe, data: Dataset, out: Path, progress: bool = True) -> dict:
    """``qssm train``: float training only."""
    _, float_metrics = float_stage(recipe, data, out, None, "model", progress)
    return finish_run(out, {"recipe": recipe.name, "float": float_metrics}, recipe, data)


def check_quant(recipe: Recipe, source: str = "recipe", hardware: Hardware | None = None) -> None:
    """Resolve the recipe's ``quant`` section against its model before any work is done: unknown
    combinations and targets that match nothing fail here, naming the recipe key; a
    ``qat.hardware`` target is checked by ``hardware``."""
    if recipe.quant is None:
        raise RecipeError(
            f"{source}: no `quant` section; add one (see recipes/ptq_8.yaml) "
            "or run `qssm train` for float training only"
        )
    try:
        wrap(make_model(recipe.model_dict(), 1, 2), recipe.quant)
    except ValueError as err:
        raise RecipeError(f"{source}: {err}") from None
    hw = recipe.qat.hardware
    if hw is not None:
        if recipe.model.family not in ("mingru_hw", "mgrade_hw"):
            raise RecipeError(
                f"{source}: qat.hardware: hardware-aware QAT models the hardware minGRU's analog "
                f"signals; model.family is {recipe.model.family}, use mingru_hw, mgrade_hw or "
                "drop it"
            )
        if hardware is None:
            raise RecipeError(f"{source}: qat.hardware needs a hardware package (the qssm CLI's)")
        try:
            hardware.check(hw)
        except ValueError as err:
            raise RecipeError(f"{source}: qat.hardware.target: {err}") from None


def quantize_run(
    recipe: Recipe,
    data: Dataset,
    out: Path,
    source: str | None = None,
    progress: bool = True,
    extra: dict | None = None,
    hardware: Hardware | None = None,
) -> dict:
    """``qssm quantize``: float model → PTQ calibration + evaluation → QAT + evaluation.
    The caller has checked the recipe (``check_quant``) and the source (``float_source``);
    ``hardware`` gives hardware-aware QAT its noise."""
    model, float_metrics = float_stage(recipe, data, out, source, "float", progress)
    float_params = n_params(model)
    teacher = None
    if recipe.qat.distill > 0:  # the float model, kept unquantized, teaches the QAT model
        teacher = (copy.deepcopy(model).eval(), recipe.float.mode, recipe.qat.distill)
    seed_everything(recipe.seed)
    model, table = wrap(model, recipe.quant)
    metrics = {"recipe": recipe.name, "float": float_metrics, **(extra or {})}
    t0 = time.perf_counter()
    calibrate(model, data.train, recipe.ptq, seed=recipe.seed, progress=progress)
    metrics["ptq"] = {
        **evaluate(model, data.test, recipe.eval.batch_size, "recurrent"),
        "seconds": time.perf_counter() - t0,
    }
    print(f"PTQ test accuracy {100 * metrics['ptq']['accuracy']:.2f} %")
    if recipe.qat.epochs > 0:
        t0 = time.perf_counter()
        noise = contextlib.nullcontext()
        if recipe.qat.hardware is not None:  # lowered and mapped with the calibrated scales
            noise = hardware.noise(model, recipe.qat.hardware, data.train.x.numpy())
        with noise as summary:
            history = _fit(model, recipe, data, out, "QAT", progress, teacher)
        if summary is not None:
            metrics["hardware_noise"] = summary
        metrics["qat"] = {
            **evaluate(model, data.test, recipe.eval.batch_size, "recurrent"),
            "epochs": len(history),
            "history": history,
            "seconds": time.perf_counter() - t0,
        }
        print(f"QAT test accuracy {100 * metrics['qat']['accuracy']:.2f} %")
    metrics["footprint"] = footprint(model, table, float_params)
    quant = recipe.quant.model_dump(mode="json")
    stage = "qat" if "qat" in metrics else "ptq"
    header = model_header(recipe, data, stage, quant=quant, quant_format=QUANT_FORMAT, sites=table)
    save_model(out, model, header)
    return finish_run(out, metrics, recipe, data)


def eval_run(run_dir: Path) -> dict:
    """Re-evaluate a finished run from its saved files alone."""
    missing = [n for n in ("recipe.yaml", "metrics.json") if not (run_dir / n).is_file()]
    if missing:
        what = "a folder" if run_dir.is_dir() else "no such folder"
        raise RunError(
            f"{run_dir}: not a finished run dir ({what}, no {' or '.join(missing)}); give a "
            "folder written by `qssm train` or `qssm quantize`"
        )
    recipe = load_recipe(run_dir / "recipe.yaml")
    stored = read_json(run_dir / "metrics.json")
    model, header = load_run_model(run_dir)
    stage = header["stage"]
    mode = recipe.float.mode if header.get("quant") is None else "recurrent"
    result = evaluate(model, load_data(recipe).test, recipe.eval.batch_size, mode)
    return {
        "recipe": recipe.name,
        "stage": stage,
        **result,
        "stored_accuracy": stored.get(stage, {}).get("accuracy"),
    }
