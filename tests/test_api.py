"""The Python API on a model qssm does not ship (examples/my_model.py: two S4D layers in a
pre-norm SiLU block): PTQ and QAT in the user's own loop on sdigits, footprint, saved in qssm's
formats, reloaded, and evaluated by the CLI."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import qssm
from qssm.data import load_dataset
from qssm.recipe import RecipeError

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))
from my_model import TwoLayerS4D  # noqa: E402

RECIPE = {  # hetero_4_8's quantizers, on a tiny sdigits run
    "name": "byo_s4d",
    "data": {"name": "sdigits", "options": {"limit_train": 256, "limit_test": 128}},
    "model": {"family": "custom", "module": "my_model:TwoLayerS4D"},
    "quant": {
        "default": {"bits": 4, "granularity": "per_channel", "complex": "polar"},
        "targets": [
            {"roles": ["ssm.A", "ssm.state"], "bits": 8},
            {"roles": ["act.input", "act.output", "ssm.output"], "granularity": "per_tensor"},
        ],
    },
    "ptq": {"calibration_batches": 2, "batch_size": 32},
    "eval": {"batch_size": 64},
}


def _train(model, data, epochs: int, mode: str, lr: float) -> None:
    """The user's own loop: Adam, cross-entropy, batches of 32."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(data.train.y), generator=g).split(32):
            loss = torch.nn.functional.cross_entropy(
                model(data.train.x[idx], mode), data.train.y[idx]
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()


def test_own_model_ptq_qat_save_reload_and_cli_eval(tmp_path):
    torch.manual_seed(0)
    data = load_dataset("sdigits", seed=0, limit_train=256, limit_test=128)
    model = TwoLayerS4D(d_input=1, n_classes=10)
    _train(model, data, epochs=3, mode="parallel", lr=1e-2)

    q = qssm.quantize(model, RECIPE, data)
    assert set(q.metrics) == {"float", "ptq"}
    roles = {spec["role"] for spec in q.sites.values()}
    assert {"ssm.A", "ssm.C", "ssm.state", "linear.weight", "encoder.weight"} <= roles
    assert sum(k.startswith("blocks.1.ssm:") for k in q.sites) >= 4  # both S4D layers
    ptq = q.metrics["ptq"]["accuracy"]
    _train(q.model, data, epochs=2, mode="recurrent", lr=2e-3)  # QAT in the user's loop
    qat = qssm.evaluate(q.model, data.test)["accuracy"]
    # above chance (0.1) and not below PTQ by more than the noise of 128 test sequences (about
    # ±4 points at this accuracy; two epochs move it by a few sequences either way)
    assert qat > 0.2 and qat >= ptq - 0.1, (ptq, qat)

    fp = qssm.footprint(q)
    # by hand: the S4D stores Ā at 8 bits (2 layers × 8 channels × 4 modes × re/im), the state
    # at 8 bits, B̄ and C at 4; LayerNorms stay float32
    per_role = fp["per_role"]
    assert per_role["ssm.A"]["bits_stored"] == 2 * 8 * 4 * 2 * 8
    assert per_role["ssm.state"]["bits_stored"] == 2 * 8 * 4 * 2 * 8 == fp["state_bits"]
    assert per_role["layernorm (float)"]["bits_stored"] == 2 * 2 * 8 * 32
    assert fp["float32_bits"] == 32 * (q.float_params + 2 * 8 * 4 * 2)

    run = tmp_path / "run"
    saved = qssm.save(q, run, data, stage="qat")
    assert saved["qat"]["accuracy"] == qat and saved["provenance"]["qssm"] == qssm.__version__
    back = qssm.load(run)
    assert type(back.model) is TwoLayerS4D and back.sites == q.sites
    x = data.test.x[:16]
    with torch.no_grad():
        assert torch.equal(back.model(x, "recurrent"), q.model(x, "recurrent"))

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "examples")])}
    out = subprocess.run(
        [sys.executable, "-m", "qssm.cli", "eval", str(run), "--json"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=True,
    )
    result = json.loads(out.stdout)
    assert result["stage"] == "qat" and result["accuracy"] == qat == result["stored_accuracy"]
    from qssm.cli import main

    assert main(["export", str(run), "--quiet"]) == 2  # refused in one line, nothing written
    assert not (run / "hw" / "verify.json").exists()


def test_api_refusals():
    with pytest.raises(RecipeError, match="no `quant` section"):
        qssm.wrap(TwoLayerS4D(1, 10), {**RECIPE, "quant": None})
    with pytest.raises(RecipeError, match="match nothing"):
        qssm.wrap(TwoLayerS4D(1, 10), {**RECIPE, "quant": {"targets": [{"roles": ["gru.gate"]}]}})
    with pytest.raises(RecipeError, match="nothing in Sequential is quantized"):
        qssm.wrap(torch.nn.Sequential(torch.nn.ReLU()), {**RECIPE, "quant": {}})
