"""Lowering: Brevitas fake-quant and the integer reference agree; what cannot be lowered says so."""

import dataclasses
import json
from functools import partial

import numpy as np
import pytest
import torch

from hwmap import intref, ops, verify
from hwmap.graph import load_graph, save_graph
from hwmap.lower import LoweringError, fakequant, lower
from qssm.models.s4d import recurrence
from qssm.runs import build_model, load_data, load_run_model, open_run, quantize_run

FAMILIES = ["s4d", "s4d_real", "mingru_hw", "mingru", "mgrade", "mgrade_hw"]


@pytest.mark.parametrize("family", FAMILIES)
def test_fakequant_and_intref_agree(family, tiny_run, recipe_of):
    run = tiny_run(family)
    model, _ = load_run_model(run)
    graph = lower(model)
    x = load_data(recipe_of(family)).test.x.numpy()
    r = verify.fakequant_vs_intref(partial(fakequant, model), graph, x)
    assert r["prediction_agreement"] >= 0.98  # 64 sequences: at most one may flip
    assert r["max_code_diff"] <= 1  # per op, given the same input codes
    traced = r["forced_per_site"]
    assert ":input" in traced and ":encoder" in traced
    differing = sum(s["differing"] for s in traced.values())
    assert differing <= 1e-3 * sum(s["codes"] for s in traced.values())


HETERO = {  # recipes/hetero_4_8.yaml's style: B̄ folded, per-element state, power-of-two scales
    "fold_b": True,
    "default": {
        "bits": 4,
        "granularity": "per_channel",
        "complex": "polar",
        "scale_dtype": "po2_3bit",
    },
    "targets": [
        {"roles": ["ssm.state"], "granularity": "per_element"},
        {"roles": ["ssm.A", "ssm.state"], "bits": 8},
        {
            "roles": ["act.input", "act.output", "ssm.output"],
            "granularity": "per_tensor",
            "scale_dtype": "float16",
        },
    ],
}


def test_folded_power_of_two_model_lowers_code_for_code(tmp_path, recipe_of):
    r = recipe_of("s4d", HETERO)
    out = open_run(tmp_path / "run", r, force=False)
    quantize_run(r, load_data(r), out, progress=False)
    model, _ = load_run_model(out)
    x, graph = load_data(r).test.x.numpy(), lower(model)
    res = verify.fakequant_vs_intref(partial(fakequant, model), graph, x)
    assert res["prediction_agreement"] == 1 and res["free_running_max_code_diff"] == 0
    assert _state_differs(model, graph, x) is None
    save_graph(graph, tmp_path / "graph")  # the float32 ops' tuples of constants round-trip
    assert load_graph(tmp_path / "graph").step == graph.step


def _state_differs(model, graph, x: np.ndarray):
    """The first (step, part) where the integer reference's S4D state, free-running, leaves
    fake-quant's codes (None: equal code for code; the recurrence would keep a code rounded
    otherwise).  Fake-quant's states: the step loop's recurrence (bit-identical to the
    ``S4DScan`` kernel) on the block's input."""
    ssm, inputs = model.blocks[0].ssm, []
    hook = ssm.register_forward_hook(lambda m, args, out: inputs.append(args[0]))
    with torch.no_grad():
        model(torch.as_tensor(x), mode="recurrent")
        hook.remove()
        step = ssm.stepper("state", complex_state=not ssm.real, flat=ssm._state_flat())
        states = []
        recurrence(inputs[0], *ssm.quantized()[:3], step, states)
    fq = torch.stack([torch.view_as_real(s) if s.is_complex() else s[..., None] for s in states])
    scale = graph.formats["blocks.0.ssm.x_re'"].scale[..., None]
    codes = np.rint(fq.double().numpy() / scale).astype(np.int64)  # (L, B, H, n, parts)
    state = intref.init_state(graph, len(x))
    for t in range(x.shape[1]):
        env, state = intref.step(graph, x[:, t], state)
        for i, part in enumerate(["re", "im"][: codes.shape[-1]]):
            if not np.array_equal(env[f"blocks.0.ssm.x_{part}'"], codes[t, ..., i]):
                return t, part
    return None


def _exact_sums(graph):
    """The graph with its float32 ops as the exact fixed-point Affine they carry."""
    fields = [f.name for f in dataclasses.fields(ops.Affine)]
    step = [
        ops.Affine(**{k: getattr(op, k) for k in fields}) if isinstance(op, ops.Affine) else op
        for op in graph.step
    ]
    return dataclasses.replace(graph, step=step)


@pytest.mark.parametrize("family", ["s4d", "s4d_real"])
def test_quantized_s4d_state_is_fakequants_code_for_code(family, tiny_run, recipe_of):
    model, _ = load_run_model(tiny_run(family))
    graph, x = lower(model), load_data(recipe_of(family)).test.x.numpy()
    assert any(op.kind == "float32update" for op in graph.step)
    if family == "s4d":  # 3,904 sequences: enough state codes (4·10^7) for ties and near-ties
        rng = [np.random.default_rng(100 * i + 7) for i in range(20)]
        noisy = [x + r.normal(0, s, x.shape) for r in rng for s in (1, 2, 3)]  # ties in some
        x = np.concatenate([x, *noisy]).astype(np.float32)
        assert _state_differs(model, _exact_sums(graph), x) is not None  # rounded half up
    assert _state_differs(model, graph, x) is None


def test_per_channel_state_keeps_the_readout_in_codes(recipe_of):
    quant = {"default": {"bits": 4, "granularity": "per_channel"}}
    quant["targets"] = [{"roles": ["ssm.state"], "bits": 8}]  # one scale per SSM channel
    graph = lower(_model(recipe_of, "s4d_real", quant))
    assert np.abs(graph.consts["blocks.0.ssm.C_re"]).max() <= 8  # 4-bit codes, not 16-bit


def _analog_errors(model, graph, x: np.ndarray):
    """The first layer's analog S4D state against the float64 recurrence of its quantized Ā, B̄
    on the integer reference's own encoder codes: (|state − float64| in state steps (L, B, H,
    n), its worst case ½ / (1 − Ā) per element, the readout's |y − float64| in output steps)."""
    ssm, fmt = model.blocks[0].ssm, graph.formats
    with torch.no_grad():
        A, B, C, D = (t.double().numpy() for t in ssm.quantized())
    sx, sy = fmt["blocks.0.ssm.x_re'"].scale, fmt["blocks.0.ssm.output"].scale
    state, xs, err, dy = intref.init_state(graph, len(x)), np.zeros((len(x), *A.shape)), [], []
    readout = next(op for op in graph.step if op.out == "blocks.0.ssm.output")
    for t in range(x.shape[1]):
        env, state = intref.step(graph, x[:, t], state)
        u = env["encoder"] * fmt["encoder"].scale  # (B, H)
        xs = A * xs + B * u[..., None]
        err.append(np.abs(env["blocks.0.ssm.x_re'"] - xs / sx))
        acc = sum(ops.term(intref.Numpy(env, graph.consts), term) * graph.consts[term.weight]
                  for term in readout.terms)  # fmt: skip
        dy.append(np.abs(acc / 2.0**readout.shift - ((C * xs).sum(-1) + u * D) / sy))
    return np.stack(err), 0.5 / (1 - A), np.stack(dy)


def test_analog_s4d_state_is_float64_to_its_rounding(tiny_run, recipe_of, monkeypatch):
    """The analog state is 2^24-step fixed point: each step's rounding (≤ ½ step) decays by Ā,
    so it stays within ½ / (1 − Ā) steps of the float64 recurrence.  On 2^20 steps the readout
    errs more: here 5.7× (the readout's multipliers, 4 bits shorter on the finer grid, keep part
    of the error), on the first layer of the two-layer ``s4d_real_hw`` (32 slow modes) 19×."""
    model, _ = load_run_model(tiny_run("s4d_real_hw"))
    x = load_data(recipe_of("s4d_real_hw")).test.x.numpy()
    graph = lower(model)
    assert graph.formats["blocks.0.ssm.x_re'"].hi == 2**24 + 2
    err, bound, dy = _analog_errors(model, graph, x)
    assert (err <= bound + 1e-6).all() and err.max() > 0.5  # rounded, within its bound
    monkeypatch.setattr("hwmap.lower.S4D_ANALOG_BITS", ())  # 2^20 steps
    coarse = lower(model)
    assert coarse.formats["blocks.0.ssm.x_re'"].hi == 2**20 + 2
    assert dy.max() < _analog_errors(model, coarse, x)[2].max() / 4


def test_analog_s4d_state_takes_the_finest_grid_whose_sums_fit(tiny_recipe, monkeypatch):
    """256 modes of 8-bit C: the readout's 52-bit sum holds 2^23 state steps, not 2^24 (with
    2^24 the only finer choice, the lowering falls back to 2^20)."""
    model = {"family": "s4d_real", "d_model": 8, "d_state": 256, "dt_min": 0.01, "dt_max": 0.5}
    quant = {"default": {"bits": 8}, "targets": [{"roles": ["ssm.state"], "enabled": False}]}
    r = tiny_recipe("s4d_real", model, quant)
    header = {"model": r.model_dict(), "d_input": 1, "n_classes": 10}
    torch.manual_seed(0)  # the untrained weights set the readout's range
    m = build_model(header, r.quant.model_dump(mode="json")).eval()
    assert lower(m).formats["blocks.0.ssm.x_re'"].hi == 2**23 + 2
    monkeypatch.setattr("hwmap.lower.S4D_ANALOG_BITS", (24,))
    assert lower(m).formats["blocks.0.ssm.x_re'"].hi == 2**20 + 2


def test_states_and_formats_are_described(tiny_run):
    graph = lower(load_run_model(tiny_run("s4d"))[0])
    names = [s.name for s in graph.states]
    assert names == ["blocks.0.ssm.x_re", "blocks.0.ssm.x_im", "pool.sum", "pool.count"]
    assert all(s.next for s in graph.states)
    state = graph.states[0]
    assert (state.lo, state.hi) == (-127, 127) or (state.lo, state.hi) == (-128, 127)
    fmt = graph.formats["blocks.0.ssm.output"]
    assert fmt.hi == 7 and np.ndim(fmt.scale) == 0  # 4-bit, per tensor
    for op in graph.step:  # every requantization is a fixed-point multiplier and a shift
        if op.kind == "affine" and op.shift:
            for t in op.terms:
                assert graph.consts[t.weight].dtype == np.int64


def _model(recipe_of, family: str, quant: dict):
    r = recipe_of(family, quant)
    header = {"model": r.model_dict(), "d_input": 1, "n_classes": 10}
    model = build_model(header, r.quant.model_dump(mode="json"))
    return model.eval()


@pytest.mark.parametrize(
    "family, quant, words",
    [
        (
            "s4d",
            {"default": {"bits": 8}, "targets": [{"roles": ["ssm.output"], "enabled": False}]},
            ["blocks.0.ssm.output", "ssm.output", "lookup table"],
        ),
        (
            "s4d",
            {"default": {"bits": 8}, "targets": [{"roles": ["act.output"], "enabled": False}]},
            ["encoder output", "act.output"],
        ),
        (
            "mingru_hw",
            {"default": {"bits": 8}, "targets": [{"roles": ["gru.Wz"], "enabled": False}]},
            ["blocks.0.gru.Wz.weight", "gru.Wz"],
        ),
        (
            "s4d",
            {"default": {"bits": 8}, "targets": [{"roles": ["act.input"], "enabled": False}]},
            ["input", "act.input"],
        ),
        (
            "mgrade",
            {"default": {"bits": 8}, "targets": [{"roles": ["conv.delay"], "enabled": False}]},
            ["blocks.0.conv", "conv.delay"],
        ),
        (  # GELU's table of a per-tensor SSM output cannot feed per-channel codes
            "s4d_real",
            {
                "default": {"bits": 8, "granularity": "per_channel"},
                "targets": [{"roles": ["ssm.output"], "granularity": "per_tensor"}],
            },
            ["blocks.0.gelu", "act.output per_tensor"],
        ),
    ],
)
def test_unsupported_constructs_name_module_and_fix(family, quant, words, recipe_of):
    with pytest.raises(LoweringError) as err:
        lower(_model(recipe_of, family, quant))
    for word in words:
        assert word in str(err.value)


def test_export_command_writes_verified_files_and_refuses_bad_input(tiny_run, tmp_path, capsys):
    from qssm.cli import main

    run = tiny_run("s4d_real")
    out = tmp_path / "hw"
    assert main(["--json", "export", str(run), "--out", str(out), "--limit", "8", "--quiet"]) == 0
    for name in ("graph.json", "graph.npz", "step.onnx", "sequence.onnx", "verify.json"):
        assert (out / name).exists()
    assert not (out / ".verify").exists()
    report = json.loads((out / "verify.json").read_text())
    assert report["onnx_vs_intref"]["code_agreement"] == 1.0
    assert report["step_vs_sequence"]["code_agreement"] == 1.0
    assert report["fakequant_vs_intref"]["prediction_agreement"] >= 7 / 8
    before = (out / "verify.json").read_bytes()

    (run / "model.json").rename(run / "model.json.bak")  # a broken run dir: clear error
    try:
        assert main(["export", str(run), "--out", str(out), "--quiet"]) == 2
    finally:
        (run / "model.json.bak").rename(run / "model.json")
    assert "model.json" in capsys.readouterr().err
    assert (out / "verify.json").read_bytes() == before  # earlier results intact

    assert (
        main(
            [
                "export",
                str(run),
                "--out",
                str(tmp_path / "q"),
                "--format",
                "qonnx",
                "--limit",
                "2",
                "--quiet",
            ]
        )
        == 0
    )
    assert (tmp_path / "q" / "step_qonnx.onnx").exists()
    assert not (tmp_path / "q" / "step.onnx").exists()


def test_export_of_a_run_in_use_is_refused(tiny_run, tmp_path, capsys):
    """One writer per run dir: while another process holds the run (training it, exporting it),
    `qssm export` exits 2 naming that process and writes nothing."""
    import subprocess
    import sys

    from qssm.cli import main

    run, out = tiny_run("s4d_real"), tmp_path / "hw"
    holder = "import sys, time; from pathlib import Path; from qssm.runs import run_lock\n"
    holder += "with run_lock(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(60)"
    with subprocess.Popen(
        [sys.executable, "-c", holder, str(run)], stdout=subprocess.PIPE, text=True
    ) as p:
        try:
            assert p.stdout.readline().strip() == "held"
            assert main(["export", str(run), "--out", str(out), "--limit", "2", "--quiet"]) == 2
        finally:
            p.kill()
    assert f"pid {p.pid}" in capsys.readouterr().err
    assert not out.exists()
