"""NeuroBench's metrics (the ``neurobench`` package) on a run's float and quantized models.

NeuroBench counts what it recognises: its connection sparsity and synaptic operations see
``nn.Linear`` / ``nn.Conv*`` / ``nn.RNN*`` modules only, its activation sparsity the modules it
is told are activations, and its footprint the bytes of a module's parameters and buffers.  So
the models are shown to it as a *view*, a copy with the same outputs (checked):

- every :class:`~qssm.quant.layers.QuantLinear` becomes an ``nn.Linear`` holding its
  fake-quantized weight and bias, so that zeros made by rounding count;
- every activation tap (the ``act.*`` sites: model input, encoder output, block outputs, GELU
  outputs, the pooled features) and the output of every recurrent layer (S4D, minGRU: the
  comparator's binary outputs in the hardware variants) is wrapped in :class:`Point`, an
  activation module registered with NeuroBench's ``add_activation_module``.

What NeuroBench cannot see is listed in each result under ``not_counted``: the S4D recurrence,
the minGRU scan, the delay convolution (a functional conv1d), LayerNorm, and the elementwise
functions, residual adds and pooling.  Footprint and parameter count are NeuroBench's own on
the model as qssm holds it (not the view).  ``neurobench`` is an optional dependency
(``pip install -c constraints.txt --no-deps neurobench==2.3.0 snntorch==1.0.0``)."""

import contextlib
import copy
import io
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from .data import Split
from .io import read_json, write_json
from .models.mgrade import DelayConv
from .models.mingru import MinGRU
from .models.s4d import S4D
from .quant.layers import QuantDelayConv, QuantLinear
from .quant.mingru import QuantMinGRU
from .quant.s4d import QuantS4D
from .recipe import load_recipe
from .report import neurobench_section, put_section
from .runs import RunError, load_data, load_run_model

INSTALL = "pip install -c constraints.txt --no-deps neurobench==2.3.0 snntorch==1.0.0"
RECURRENT = (S4D, QuantS4D, MinGRU, QuantMinGRU)
# what NeuroBench does not count, by the qssm module that does it
NOT_SEEN = {
    S4D: "state recurrence x ← Āx + B̄u, readout Cx and Du",
    QuantS4D: "state recurrence x ← Āx + B̄u, readout Cx and Du",
    MinGRU: "gated scan h ← (1 − z)h + z·h̃ (its Wz, Wh projections are counted)",
    QuantMinGRU: "gated scan h ← (1 − z)h + z·h̃ (its Wz, Wh projections are counted)",
    DelayConv: "depthwise delay convolution (a functional conv1d, no nn.Conv1d)",
    QuantDelayConv: "depthwise delay convolution (a functional conv1d, no nn.Conv1d)",
    nn.LayerNorm: "normalization",
}
ELEMENTWISE = "everywhere: GELU, GLU, sigmoid gates, residual adds, mean pooling, quantizers"


def _neurobench():
    try:
        import neurobench
        from neurobench.benchmarks import Benchmark
    except ImportError as err:
        raise RunError(
            f"--neurobench: the neurobench package is not installed ({err}); {INSTALL}"
        ) from None
    return neurobench, Benchmark


class Point(nn.Module):
    """An activation point NeuroBench hooks: ``inner`` unchanged, its output recorded."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, *args, **kwargs):
        return self.inner(*args, **kwargs)


def _as_linear(layer: QuantLinear) -> nn.Linear:
    linear = nn.Linear(layer.in_features, layer.out_features)
    with torch.no_grad():
        linear.weight.copy_(layer.q("weight", layer.weight))
        linear.bias.copy_(layer.q("bias", layer.bias))
    return linear


def view(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with the same outputs that NeuroBench can see (module docstring)."""

    def rebuild(module: nn.Module) -> nn.Module:
        for name, child in list(module.named_children()):
            new = _as_linear(child) if isinstance(child, QuantLinear) else rebuild(child)
            if name == "taps" and isinstance(module._modules.get("taps"), nn.ModuleDict):
                new = nn.ModuleDict({k: Point(v) for k, v in new.items()})
            elif isinstance(child, RECURRENT):
                new = Point(new)
            setattr(module, name, new)
        return module

    return rebuild(copy.deepcopy(model)).eval()


def layers(seen: nn.Module) -> dict:
    """Which modules of a view NeuroBench counts, which it does not, and the activation points,
    by their names in the model (without the views' ``.inner``)."""
    from neurobench.blocks.layer import SUPPORTED_LAYERS

    counted, not_counted, points = [], [], []
    for name, m in seen.named_modules():
        name = ".".join(part for part in name.split(".") if part != "inner")
        if isinstance(m, SUPPORTED_LAYERS):
            shape = "×".join(map(str, m.weight.shape))
            counted.append(f"{name} ({type(m).__name__}, weight {shape})")
        elif isinstance(m, Point):
            points.append(name)
        elif type(m) in NOT_SEEN:
            not_counted.append(f"{name} ({type(m).__name__}: {NOT_SEEN[type(m)]})")
    return {
        "counted": counted,
        "not_counted": [*not_counted, ELEMENTWISE],
        "activation_points": points,
    }


def measure(model: nn.Module, split: Split, batch_size: int, mode: str) -> dict:
    """NeuroBench's footprint and parameter count of ``model``, and its connection sparsity,
    activation sparsity, synaptic operations (per sample) and accuracy of the view of ``model``
    on ``split``.  Raises RunError without the package, RuntimeError when a
    NeuroBench metric fails (NeuroBench itself would print the error and report 0)."""
    neurobench, Benchmark = _neurobench()
    from neurobench.metrics.static import ConnectionSparsity, Footprint, ParameterCount
    from neurobench.metrics.workload import (
        ActivationSparsity,
        ClassificationAccuracy,
        SynapticOperations,
    )
    from neurobench.models import TorchModel

    class Stepped(TorchModel):
        """qssm's forward takes the execution mode; Point modules are activations."""

        def __init__(self, net):
            super().__init__(net)
            self.add_activation_module(Point)

        def __call__(self, batch):
            return self.net(batch, mode)

    model.eval()
    seen = view(model)
    with torch.no_grad():
        x = split.x[:batch_size]
        diff = (seen(x, mode) - model(x, mode)).abs().max().item()
    held = TorchModel(model)
    loader = DataLoader(TensorDataset(split.x, split.y), batch_size=batch_size, shuffle=False)
    bench = Benchmark(
        Stepped(seen),
        loader,
        [],
        [lambda logits: logits.argmax(-1)],
        [[ConnectionSparsity], [ClassificationAccuracy, ActivationSparsity, SynapticOperations]],
    )
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(io.StringIO()):
        with torch.no_grad():
            r = bench.run(quiet=False)
    errors = [line for line in printed.getvalue().splitlines() if line.startswith("Error")]
    if errors:
        raise RuntimeError(f"neurobench: {errors[0]}")
    ops = r["SynapticOperations"]
    return {
        "neurobench": neurobench.__version__,
        "mode": mode,
        "sequences": len(split.y),
        "view_max_abs_diff": diff,
        "accuracy": r["ClassificationAccuracy"],
        "footprint_bytes": Footprint()(held),
        "parameter_count": ParameterCount()(held),
        "connection_sparsity": r["ConnectionSparsity"],
        "activation_sparsity": r["ActivationSparsity"],
        "synaptic_operations": {
            "dense": ops["Dense"],
            "effective_macs": ops["Effective_MACs"],
            "effective_acs": ops["Effective_ACs"],
        },
        **layers(seen),
    }


def measure_run(run_dir: Path, limit: int | None = None) -> dict:
    """:func:`measure` on a finished run's float model (``float.*``, when kept) and its model
    (``model.*``), on the recipe's test split or its first ``limit`` sequences, beside qssm's
    footprint from ``metrics.json``."""
    version = _neurobench()[0].__version__
    recipe = load_recipe(run_dir / "recipe.yaml")
    metrics = read_json(run_dir / "metrics.json")
    test = load_data(recipe).test
    if limit is not None:
        if limit < 1:
            raise RunError(f"--limit {limit}: give a number of test sequences ≥ 1")
        test = Split(test.x[:limit], test.y[:limit])
    models = {}
    for stem in ("float", "model"):
        if not (run_dir / f"{stem}.json").is_file():
            continue
        model, header = load_run_model(run_dir, stem)
        quantized = header.get("quant") is not None
        mode = "recurrent" if quantized else recipe.float.mode
        stage = header["stage"]
        models[stage] = {
            "quantized": quantized,
            "stored_accuracy": metrics.get(stage, {}).get("accuracy"),
            **measure(model, test, recipe.eval.batch_size, mode),
        }
    fp = metrics.get("footprint")
    keys = ("total_bits", "reduction", "float32_bits", "float32_deploy_bits", "reduction_deploy")
    return {
        "run": run_dir.name,
        "recipe": recipe.name,
        "neurobench": version,
        "limit": limit,  # None: the whole test split
        "sequences": len(test.y),
        "steps": test.x.shape[1],
        "qssm_footprint": {k: fp[k] for k in keys if k in fp} if fp else None,
        "models": models,
    }


def record(run_dir: Path, figures: dict) -> None:
    """``neurobench.json``, the ``neurobench`` entry of ``metrics.json`` and the report's
    NeuroBench section, each written atomically."""
    write_json(run_dir / "neurobench.json", figures)
    metrics = read_json(run_dir / "metrics.json")
    metrics["neurobench"] = figures
    write_json(run_dir / "metrics.json", metrics)
    put_section(run_dir / "report.md", "NeuroBench", neurobench_section(figures))
