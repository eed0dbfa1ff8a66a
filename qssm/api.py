"""The Python API: quantize a torch model — one of qssm's or your own — with a recipe, in your
own code (docs/api.md).  The CLI's ``quantize`` runs the same stages on a recipe's model.

A model of your own is an ``nn.Module`` called as ``model(x, mode)`` on (batch, time, channels)
inputs, whose quantizable tensors carry role tags (``qssm.models.tags``): its ``nn.Linear`` and
qssm layers (``S4D``, ``MinGRU``, ``DelayConv``) are swapped for quantized ones, each of its
``taps`` (a ``ModuleDict`` of :class:`~qssm.models.tags.Tap`) gets an activation quantizer.

    q = qssm.quantize(MyModel(...), "hetero_4_8", data)      # wrap + PTQ calibration
    ...train q.model in your own loop (QAT)...
    qssm.save(q, "runs/mine", data, stage="qat", options={...})   # then `qssm eval runs/mine`
"""

import time
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from .data import Dataset, Split
from .io import CheckpointError, read_json, save_model
from .models.backbone import Classifier
from .quant import calibrate as _calibrate
from .quant import footprint as _footprint
from .quant import wrap as _wrap
from .recipe import CustomModel, Recipe, RecipeError, load_recipe, parse_recipe
from .runs import (
    QUANT_FORMAT,
    finish_run,
    load_run_model,
    model_header,
    n_params,
    open_run,
    run_lock,
)
from .train import evaluate as _evaluate
from .train import seed_everything

__all__ = ["Quantized", "as_recipe", "calibrate", "evaluate", "footprint", "load", "quantize"]
__all__ += ["save", "wrap"]


@dataclass
class Quantized:
    """A quantized model and what qssm needs to report, save and reload it: the resolved
    quantizer of every site (``module:site`` → spec), the recipe, the float model's parameter
    count (the float32 footprint) and the metrics measured so far (float, ptq)."""

    model: nn.Module
    sites: dict
    recipe: Recipe
    float_params: int
    metrics: dict = field(default_factory=dict)


def as_recipe(recipe) -> Recipe:
    """A :class:`Recipe` from a Recipe, a dict, a file path or a shipped recipe's name."""
    if isinstance(recipe, Recipe):
        return recipe
    if isinstance(recipe, dict):
        return parse_recipe(recipe)
    return load_recipe(recipe)


def wrap(model: nn.Module, recipe) -> Quantized:
    """Swap ``model``'s layers for quantized ones and attach a quantizer to every site the
    recipe's ``quant`` section selects (in place: ``model``'s parameters become the quantized
    model's).  Raises RecipeError naming the key when the section does not fit the model."""
    recipe = as_recipe(recipe)
    if recipe.quant is None:
        raise RecipeError(f"recipe {recipe.name}: no `quant` section; add one (docs/recipes.md)")
    float_params = n_params(model)
    try:
        qmodel, sites = _wrap.wrap(model, recipe.quant)
    except ValueError as err:
        raise RecipeError(f"recipe {recipe.name}: {err}") from None
    if not sites:
        raise RecipeError(
            f"recipe {recipe.name}: nothing in {type(model).__name__} is quantized; tag its "
            "tensors with roles (qssm.models.tags) or use nn.Linear / qssm's layers"
        )
    return Quantized(qmodel, sites, recipe, float_params)


def calibrate(q: Quantized, train: Split, progress: bool = False) -> None:
    """PTQ: the recipe's ``ptq.calibration_batches`` seeded batches of ``train`` through the
    model in recurrent mode set every scale and zero point."""
    _calibrate.calibrate(q.model, train, q.recipe.ptq, seed=q.recipe.seed, progress=progress)


def evaluate(model: nn.Module, split: Split, batch_size: int = 256, mode="recurrent") -> dict:
    """Test accuracy and loss of ``model`` on ``split`` (a quantized model runs recurrent)."""
    return _evaluate(model, split, batch_size, mode)


def quantize(model: nn.Module, recipe, data: Dataset, progress: bool = False) -> Quantized:
    """Evaluate the float ``model``, :func:`wrap` it, calibrate it on ``data.train`` (PTQ) and
    evaluate it: ``q.metrics`` holds ``float`` and ``ptq``.  QAT is then yours: train
    ``q.model`` (``q.model(x, "recurrent")``) with an optimizer made after this call (the
    learned scales are parameters of the quantized model)."""
    recipe = as_recipe(recipe)
    batch = recipe.eval.batch_size
    float_metrics = {**evaluate(model, data.test, batch, recipe.float.mode)}
    float_metrics["params"] = n_params(model)
    seed_everything(recipe.seed)
    q = wrap(model, recipe)
    t0 = time.perf_counter()
    calibrate(q, data.train, progress)
    ptq = {**evaluate(q.model, data.test, batch), "seconds": time.perf_counter() - t0}
    q.metrics = {"float": float_metrics, "ptq": ptq}
    return q


def footprint(q: Quantized) -> dict:
    """Stored bits (parameters, state, buffers, quantizer scales) against float32 as trained
    and as a float32 deployment; per role."""
    return _footprint.footprint(q.model, q.sites, q.float_params)


def _run_recipe(q: Quantized, options: dict | None) -> Recipe:
    """The recipe of the run dir: the recipe's own model section for a qssm model, family
    ``custom`` naming the model's class (rebuilt with ``options``) for one of your own."""
    if isinstance(q.model, Classifier):
        return q.recipe
    cls = type(q.model)
    if cls.__module__ == "__main__" or "<locals>" in cls.__qualname__:
        raise RecipeError(
            f"{cls.__qualname__} is defined in a script or a function; `qssm eval` rebuilds the "
            "model by importing its class: define it in a module on PYTHONPATH"
        )
    module = f"{cls.__module__}:{cls.__qualname__}"
    model = CustomModel(family="custom", module=module, options=options or {})
    return q.recipe.model_copy(update={"model": model})


def save(
    q: Quantized,
    run_dir: str | Path,
    data: Dataset,
    stage: str = "qat",
    options: dict | None = None,
    force: bool = False,
) -> dict:
    """Write a run dir in qssm's formats — ``recipe.yaml``, ``model.safetensors`` +
    ``model.json``, ``report.md``, ``metrics.json`` (last) — from ``q`` as it is now, evaluated
    on ``data.test`` as ``stage`` ("ptq" or "qat").  ``qssm eval``, ``qssm export`` and
    :func:`load` read it back; a model of your own is rebuilt by importing its class and calling
    it with ``d_input``, ``n_classes`` and ``options``.  Returns the metrics."""
    if stage not in ("ptq", "qat"):
        raise ValueError(f"stage: {stage!r}; use 'ptq' or 'qat'")
    recipe, out = _run_recipe(q, options), Path(run_dir)
    with run_lock(out):
        open_run(out, recipe, force)
        metrics = {"recipe": recipe.name, **q.metrics}
        metrics.setdefault("float", {"accuracy": None, "params": q.float_params})
        metrics[stage] = {**metrics.get(stage, {}), **evaluate(q.model, data.test)}
        metrics["footprint"] = footprint(q)
        quant = recipe.quant.model_dump(mode="json")
        header = model_header(
            recipe, data, stage, quant=quant, quant_format=QUANT_FORMAT, sites=q.sites
        )
        save_model(out, q.model, header)
        return finish_run(out, metrics, recipe, data)


def load(run_dir: str | Path) -> Quantized:
    """A quantized run dir (written by :func:`save` or ``qssm quantize``) as a
    :class:`Quantized`, its model rebuilt from the files alone."""
    run_dir = Path(run_dir)
    model, header = load_run_model(run_dir)
    if header.get("quant") is None:
        raise CheckpointError(f"{run_dir} holds a float model; quantize it first")
    recipe = load_recipe(run_dir / "recipe.yaml")
    metrics = read_json(run_dir / "metrics.json")
    return Quantized(model, header["sites"], recipe, metrics["float"]["params"], metrics)
