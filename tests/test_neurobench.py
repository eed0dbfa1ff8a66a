"""NeuroBench's metrics on qssm models (qssm.neurobench, `qssm eval --neurobench`) against hand
counts made with our own hooks on the original model."""

import json
import shutil
import sys

import pytest
import torch
from torch import nn

from qssm.cli import main
from qssm.data import Split
from qssm.models.backbone import Classifier
from qssm.models.mingru import MinGRU
from qssm.models.s4d import S4D
from qssm.quant.layers import QuantLinear
from qssm.quant.mingru import QuantMinGRU
from qssm.quant.wrap import quantizers
from qssm.recipe import load_recipe
from qssm.runs import load_data, load_run_model, open_run, quantize_run
from qssm.train import evaluate

pytest.importorskip(
    "neurobench",
    reason="the neurobench package is not installed "
    "(pip install -c constraints.txt --no-deps neurobench==2.3.0 snntorch==1.0.0)",
)
from qssm.neurobench import measure  # noqa: E402


def hand_counts(model: nn.Module, split: Split, mode: str) -> dict:
    """Per sample: dense and effective (nonzero input × nonzero weight) MACs of every Linear,
    the latter split into ACs where all the layer's inputs are 0 or 1; zero fraction of the
    activation points (taps, recurrent layer outputs); zero fraction of the Linear weights."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear | QuantLinear)]
    points = [m for m in model.modules() if isinstance(m, S4D | MinGRU | QuantMinGRU)]
    points += [t for m in model.modules() for t in (m._modules.get("taps") or {}).values()]

    def weight(m):
        return m.q("weight", m.weight) if isinstance(m, QuantLinear) else m.weight

    counts = {"dense": 0, "macs": 0, "acs": 0, "zeros": 0, "activations": 0}

    def on_linear(m, args):
        x = args[0]
        ops = ((x != 0).float() @ (weight(m) != 0).float().T).sum().item()
        binary = bool(((x == 0) | (x == 1)).all())
        counts["acs" if binary else "macs"] += ops
        counts["dense"] += x.numel() * m.out_features

    def on_point(m, args, out):
        counts["zeros"] += (out == 0).sum().item()
        counts["activations"] += out.numel()

    hooks = [m.register_forward_pre_hook(on_linear) for m in linears]
    hooks += [m.register_forward_hook(on_point) for m in points]
    with torch.no_grad():
        model(split.x, mode)
    for h in hooks:
        h.remove()
    w = [weight(m).detach() for m in linears]
    n = len(split.y)
    return {
        "dense": counts["dense"] / n,
        "effective_macs": counts["macs"] / n,
        "effective_acs": counts["acs"] / n,
        "activation_sparsity": counts["zeros"] / counts["activations"],
        "connection_sparsity": sum((t == 0).sum().item() for t in w) / sum(t.numel() for t in w),
    }


def test_float_s4d_against_hand_counts(tiny_recipe):
    """Dense MACs from the shapes alone; connection sparsity of weights with known zeros;
    effective MACs and activation sparsity on inputs with zeros, against our own hooks."""
    torch.manual_seed(0)
    recipe = tiny_recipe("s4d", {"family": "s4d", "d_model": 8, "d_state": 8}, {})
    data = load_data(recipe)
    model = Classifier(recipe.model_dict(), data.d_input, data.n_classes).eval()
    with torch.no_grad():
        model.blocks[0].linear.weight[:, :3] = 0  # 16 × 3 of 8 + 128 + 80 weights
        model.decoder.weight[0] = 0  # 8 more
    x = data.test.x * (torch.rand(data.test.x.shape) > 0.5)  # zero pixels: fewer effective MACs
    split = Split(x, data.test.y)
    r = measure(model, split, 16, "parallel")
    L = data.seq_len
    assert r["synaptic_operations"]["dense"] == L * (1 * 8 + 8 * 16) + 8 * 10
    assert r["connection_sparsity"] == round(56 / 216, 4)
    hand = hand_counts(model, split, "parallel")
    assert hand["dense"] == r["synaptic_operations"]["dense"]
    assert r["synaptic_operations"]["effective_macs"] == pytest.approx(hand["effective_macs"])
    assert 0 < r["synaptic_operations"]["effective_macs"] < r["synaptic_operations"]["dense"]
    assert r["synaptic_operations"]["effective_acs"] == 0
    assert r["activation_sparsity"] == pytest.approx(hand["activation_sparsity"])
    # about half the pixels zero at taps.input (1 channel of the 1 + 4 × 8 per step)
    assert r["activation_sparsity"] == pytest.approx(0.5 / 33, rel=0.1)
    assert r["view_max_abs_diff"] == 0
    assert r["accuracy"] == evaluate(model, split, 16, "parallel")["accuracy"]
    assert r["footprint_bytes"] == 4 * sum(p.numel() for p in model.parameters())
    assert r["counted"] == [
        "encoder (Linear, weight 8×1)",
        "blocks.0.linear (Linear, weight 16×8)",
        "decoder (Linear, weight 10×8)",
    ]
    assert r["not_counted"][0].startswith("blocks.0.ssm (S4D:")
    assert set(r["activation_points"]) == {
        "blocks.0.ssm",
        "blocks.0.taps.gelu",
        "blocks.0.taps.block",
        "taps.input",
        "taps.encoder",
        "taps.pool",
    }


@pytest.fixture(scope="module")
def minimalist_run(tmp_path_factory, tiny_recipe):
    """A finished PTQ run of a two-layer MINIMALIST minGRU at 2 bits (binary outputs between
    the layers), with its float model kept."""
    recipe = tiny_recipe(
        "mingru_hw",
        {"family": "mingru_hw", "d_model": 8, "n_layers": 2},
        {"default": {"bits": 2}, "targets": [{"roles": ["gru.state"], "enabled": False}]},
        epochs=0,
    )
    out = open_run(tmp_path_factory.mktemp("nb") / "run", recipe, force=False)
    quantize_run(recipe, load_data(recipe), out, progress=False)
    return out, load_data(recipe).test


def test_quantized_minimalist_counts_accumulates_by_hand(minimalist_run):
    """The second layer's projections get the first layer's binary outputs: ACs; the zeros of
    the fake-quantized 2-bit weights count in connection sparsity and effective operations."""
    run, test = minimalist_run
    model, header = load_run_model(run)
    assert header["quant"] is not None
    r = measure(model, test, 32, "recurrent")
    hand = hand_counts(model, test, "recurrent")
    ops = r["synaptic_operations"]
    assert ops["dense"] == hand["dense"]
    assert ops["effective_acs"] == pytest.approx(hand["effective_acs"])
    assert ops["effective_macs"] == pytest.approx(hand["effective_macs"])
    assert ops["effective_acs"] > 0 and ops["effective_macs"] > 0
    assert r["connection_sparsity"] == round(hand["connection_sparsity"], 4) > 0
    assert r["activation_sparsity"] == pytest.approx(hand["activation_sparsity"])
    assert r["view_max_abs_diff"] == 0
    assert r["accuracy"] == evaluate(model, test, 32, "recurrent")["accuracy"]
    held = [*model.parameters(), *model.buffers()]
    assert r["footprint_bytes"] == sum(t.numel() * t.element_size() for t in held)
    assert quantizers(model)  # the footprint is the fake-quant model's, scales included


def test_eval_neurobench_records_in_the_run_dir(minimalist_run, capsys):
    run, _ = minimalist_run
    assert main(["eval", str(run), "--neurobench", "--limit", "16", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)["neurobench"]
    assert main(["eval", str(run), "--neurobench", "--limit", "16"]) == 0  # again: replaced
    figures = json.loads((run / "neurobench.json").read_text())
    assert figures == printed == json.loads((run / "metrics.json").read_text())["neurobench"]
    assert set(figures["models"]) == {"float", "ptq"} and figures["sequences"] == 16
    assert figures["models"]["ptq"]["quantized"] and not figures["models"]["float"]["quantized"]
    report = (run / "report.md").read_text()
    assert report.count("## NeuroBench") == 1 and "## Footprint" in report
    assert "blocks.1.gru (QuantMinGRU" in report  # what is not counted, named
    again = shutil.copytree(run, run.parent / "again")  # a run started over drops the figures
    open_run(again, load_recipe(again / "recipe.yaml"), force=True)
    assert not (again / "neurobench.json").exists()


def test_eval_neurobench_bad_input_is_one_line(minimalist_run, capsys, monkeypatch):
    run, _ = minimalist_run
    assert main(["eval", str(run), "--limit", "4"]) == 2
    assert "--limit goes with --neurobench" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "neurobench", None)  # as if not installed
    assert main(["eval", str(run), "--neurobench"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--no-deps neurobench==2.3.0 snntorch==1.0.0" in err
