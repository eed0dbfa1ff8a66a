"""Run directories and the float training stage.

A run dir holds ``recipe.yaml`` (resolved), ``model.safetensors`` + ``model.json``, ``report.md``
with plots, and ``metrics.json``, which is written last: a run without it is unfinished.
"""

import time
from pathlib import Path

import torch

from .data import Dataset, load_dataset
from .io import (
    CheckpointError,
    atomic_write,
    load_model_files,
    load_state,
    read_json,
    save_model,
    write_json,
)
from .models.backbone import Classifier
from .recipe import Recipe, dump_recipe, load_recipe
from .report import plot_curves, table, write_report
from .train import evaluate, fit, seed_everything


class RunError(ValueError):
    """A run dir that cannot be used as asked; the message says what to do instead."""


def open_run(out: Path, recipe: Recipe, force: bool) -> Path:
    """Check ``out`` can take this recipe and write the resolved ``recipe.yaml`` into it.

    A finished run (``metrics.json``) is never touched without ``force``; an unfinished run of the
    same recipe is resumed; an unfinished run of another recipe needs ``force``."""
    text = dump_recipe(recipe)
    finished = (out / "metrics.json").exists()
    if finished and not force:
        raise RunError(f"{out} holds a finished run; pass --force to overwrite it, or --out DIR")
    old = out / "recipe.yaml"
    if old.exists() and not force and old.read_text() != text:
        raise RunError(
            f"{out} holds an unfinished run of a different recipe; "
            "pass --force to start over, or --out DIR"
        )
    if force:
        for name in ("metrics.json", "train_state.json", "train_state.safetensors"):
            (out / name).unlink(missing_ok=True)
    atomic_write(out / "recipe.yaml", text)
    return out


def load_data(recipe: Recipe) -> Dataset:
    d = recipe.data
    return load_dataset(d.name, seed=recipe.seed, root=d.root, download=d.download, **d.options)


def build_model(recipe: Recipe, data: Dataset) -> Classifier:
    seed_everything(recipe.seed)
    return Classifier(recipe.model_dict(), data.d_input, data.n_classes)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def load_run_model(run_dir: Path) -> tuple[Classifier, dict]:
    """Rebuild the float model of a finished run from its files alone (nothing unpickled)."""
    header, tensors = load_model_files(run_dir)
    try:
        model = Classifier(header["model"], header["d_input"], header["n_classes"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{run_dir / 'model.json'}: bad model description ({err})") from None
    load_state(model, tensors, str(run_dir / "model.safetensors"))
    return model, header


def train_float(recipe: Recipe, out: Path, progress: bool = True) -> dict:
    """Float pre-training (or reuse of ``float.checkpoint``) → model files, report, metrics."""
    data = load_data(recipe)
    model = build_model(recipe, data)
    cfg = recipe.float
    if cfg.checkpoint:
        model, header = load_run_model(Path(cfg.checkpoint))
        if header["model"] != recipe.model_dict():
            raise RunError(
                f"float.checkpoint {cfg.checkpoint} holds a different model than this recipe's "
                "`model` section; make them equal or drop float.checkpoint"
            )
        history = []
    else:
        t0 = time.perf_counter()
        history = fit(
            model,
            data.train,
            data.test,
            cfg,
            seed=recipe.seed,
            state_path=out / "train_state",
            eval_batch=recipe.eval.batch_size,
            desc="float",
            progress=progress,
        )
        print(f"float training: {time.perf_counter() - t0:.1f} s")
    result = evaluate(model, data.test, recipe.eval.batch_size)
    meta = {
        "model": recipe.model_dict(),
        "d_input": data.d_input,
        "n_classes": data.n_classes,
        "stage": "float",
    }
    save_model(out, model, meta)
    seconds = [h["seconds"] for h in history]
    metrics = {
        "recipe": recipe.name,
        "float": {
            **result,
            "epochs": len(history),
            "params": n_params(model),
            "seconds_per_epoch": sum(seconds) / len(seconds) if seconds else None,
            "history": history,
        },
    }
    write_float_report(out, recipe, data, metrics)
    write_json(out / "metrics.json", metrics)
    for name in ("train_state.json", "train_state.safetensors"):
        (out / name).unlink(missing_ok=True)
    return metrics


def write_float_report(out: Path, recipe: Recipe, data: Dataset, metrics: dict) -> None:
    f = metrics["float"]
    summary = table(
        ["dataset", "family", "parameters", "test accuracy", "epochs", "s / epoch"],
        [
            [
                data.name,
                recipe.model.family,
                f["params"],
                f"{100 * f['accuracy']:.2f} %",
                f["epochs"],
                f"{f['seconds_per_epoch']:.1f}" if f["seconds_per_epoch"] else "—",
            ]
        ],
    )
    sections = [("Summary", summary)]
    if f["history"]:
        plot_curves({"float": f["history"]}, out / "training.png")
        sections.append(("Training", "![training curves](training.png)"))
    write_report(out / "report.md", f"qssm run `{recipe.name}`", sections)


def eval_run(run_dir: Path) -> dict:
    """Re-evaluate a finished run from its saved files alone."""
    recipe = load_recipe(run_dir / "recipe.yaml")
    model, _ = load_run_model(run_dir)
    stored = read_json(run_dir / "metrics.json")
    return {
        "recipe": recipe.name,
        "float": evaluate(model, load_data(recipe).test, recipe.eval.batch_size),
        "stored": {"float": stored.get("float", {}).get("accuracy")},
    }
