"""bench/render_docs.py and bench/collect.py: doc figures come from committed result files."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from qssm.sweep import COLUMNS

ROOT = Path(__file__).resolve().parent.parent


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


render = _load("render_docs")
collect = _load("collect")

TINY = {
    "run": "tiny",
    "recipe": "tiny",
    "data": "sdigits",
    "family": "s4d",
    "float": {"accuracy": 0.9, "epochs": 1, "params": 100, "source": None, "seconds": 10.0},
    "ptq": {"accuracy": 0.5, "seconds": 2.0},
    "qat": {"accuracy": 0.8125, "epochs": 3, "seconds": 63.0},
    "wall_seconds": 75.0,
    "footprint": {
        "float32_bits": 4000,
        "param_bits": 1000,
        "state_bits": 200,
        "buffer_bits": 0,
        "total_bits": 1200,
        "reduction": 4000 / 1200,
        "per_role": {"ssm.A": {"elements": 64, "bits_stored": 512, "bits": [8]}},
    },
    "provenance": {
        "commit": "0123456789abcdef",
        "dirty": False,
        "run_finished": "2026-12-01T07:00",
    },
}


def block(spec: str, body: str = "stale\n") -> str:
    return f"intro\n\n<!-- render: {spec} -->\n{body}<!-- /render -->\n\noutro\n"


@pytest.fixture
def root(tmp_path):
    (tmp_path / "bench" / "results" / "runs").mkdir(parents=True)
    (tmp_path / "bench" / "results" / "runs" / "tiny.json").write_text(json.dumps(TINY))
    return tmp_path


def test_block_renders_the_expected_table(root):
    out = render.render_text(block("accuracy tiny"), root)
    assert out == block(
        "accuracy tiny",
        "| run | data | float | PTQ | QAT (epochs) | stage time | measured at |\n"
        "|---|---|---|---|---|---|---|\n"
        "| `tiny` | `sdigits` | 90.00 % | 50.00 % | 81.25 % (3) | 1 min 15 s "
        "| `0123456`, 2026-12-01 |\n",
    )
    out = render.render_text(block("footprint"), root)
    assert "| `tiny` | 1,000 | 200 | 0 | 1,200 | 4,000 | **3.33×** |" in out
    (root / "bench" / "results" / "runs" / "hetero_4_8.json").write_text(json.dumps(TINY))
    out = render.render_text(block("targets accuracy"), root)
    assert "| `hetero_4_8`: QAT within 2 points of float | 8.75 points | **not met** |" in out
    assert "| 3.33× | **not met** |" in out


def test_rendering_is_idempotent(root):
    specs = ["headline tiny", "accuracy", "footprint tiny", "roles tiny", "verify", "targets"]
    text = "".join(block(s) for s in specs)
    once = render.render_text(text, root)
    assert once != text
    assert render.render_text(once, root) == once


def test_missing_result_file_says_which_command_makes_it(tmp_path):
    out = render.render_text(block("headline hetero_4_8") + block("bench"), tmp_path)
    assert "No measurement committed yet for `hetero_4_8`" in out
    assert "`python bench/collect.py runs/hetero_4_8`" in out
    assert render.BENCH_CMD in out


def test_broken_blocks_and_files_are_named(root):
    with pytest.raises(render.RenderError, match="unknown block `nope`"):
        render.render_text(block("nope"), root)
    with pytest.raises(render.RenderError, match="without its"):
        render.render_text("<!-- render: accuracy -->\nno end\n", root)
    (root / "bench" / "results" / "runs" / "bad.json").write_text("{")
    with pytest.raises(render.RenderError, match="bad.json: not valid JSON"):
        render.render_text(block("accuracy bad"), root)


def test_check_names_the_stale_doc_and_rendering_fixes_it(root, capsys):
    (root / "README.md").write_text(block("accuracy tiny"))
    assert render.main(["--check"], root) == 1
    assert "stale: README.md" in capsys.readouterr().err
    assert render.main([], root) == 0
    assert render.main(["--check"], root) == 0


def test_committed_docs_match_the_committed_result_files(capsys):
    assert render.main(["--check"]) == 0, capsys.readouterr().err


def test_collect_summarizes_a_run_dir(tmp_path):
    run = tmp_path / "runs" / "tiny"
    (run / "hw").mkdir(parents=True)
    (run / "recipe.yaml").write_text("name: tiny\ndata: {name: sdigits}\nmodel: {family: s4d}\n")
    history = [{"epoch": 1, "seconds": 4.0, "accuracy": 0.5}, {"epoch": 2, "seconds": 6.0}]
    metrics = {
        "recipe": "tiny",
        "float": {"accuracy": 0.9, "params": 100, "epochs": 2, "history": history},
        "ptq": {"accuracy": 0.5, "seconds": 2.0},
        "qat": {"accuracy": 0.8, "epochs": 1, "history": history[:1], "seconds": 5.0},
        "footprint": TINY["footprint"],
    }
    (run / "metrics.json").write_text(json.dumps(metrics))
    verify = {
        "fakequant_vs_intref": {
            "prediction_agreement": 1.0,
            "max_code_diff": 1,
            "forced_per_site": {},
        },
        "monte_carlo": [{"unit_ff": 1.0, "mean": 0.3, "accuracies": [0.3]}],
    }
    (run / "hw" / "verify.json").write_text(json.dumps(verify))
    totals = {"area_mm2": 0.04, "capacitance_pf": 76.2}
    (run / "hw" / "mapping.json").write_text(json.dumps({"totals": totals, "layers": []}))
    out = collect.collect(run, tmp_path / "results")
    assert out == tmp_path / "results" / "runs" / "tiny.json"
    r = json.loads(out.read_text())
    assert (r["data"], r["family"], r["recipe"]) == ("sdigits", "s4d", "tiny")
    assert r["float"]["seconds"] == 10.0 and r["wall_seconds"] == 17.0
    assert r["qat"] == {"accuracy": 0.8, "epochs": 1, "seconds": 5.0}
    assert r["footprint"] == TINY["footprint"]
    assert r["verify"]["fakequant_vs_intref"] == {"prediction_agreement": 1.0, "max_code_diff": 1}
    assert r["verify"]["monte_carlo"] == [{"unit_ff": 1.0, "mean": 0.3}]
    assert r["mapping"] == totals
    assert {"collected", "commit", "run_finished", "command"} <= set(r["provenance"])
    with pytest.raises(collect.CollectError, match="not a finished run"):
        collect.collect(tmp_path, tmp_path / "results")


def test_collect_files_a_sweep_dir_as_a_sweep(tmp_path):
    """`qssm sweep` writes metrics.json beside results.csv: still a sweep."""
    run = tmp_path / "runs" / "sweep_tiny"
    run.mkdir(parents=True)
    (run / "recipe.yaml").write_text("name: sweep_tiny\ndata: {name: sdigits}\n")
    (run / "metrics.json").write_text(json.dumps({"recipe": "sweep_tiny", "points": 1}))
    row = "pareto-8_8-qat-s0,pareto,ssm.A=8;ssm.state=8,8/8,qat,0,0.73,1,2,0,3,4.0"
    (run / "results.csv").write_text(",".join(COLUMNS) + "\n" + row + "\n")
    out = collect.collect(run, tmp_path / "results")
    assert out == tmp_path / "results" / "sweeps" / "sweep_tiny.json"
    rows = json.loads(out.read_text())["rows"]
    assert rows[0]["bits"] == "8/8" and rows[0]["accuracy"] == pytest.approx(0.73)


def test_neurobench_figures_are_collected_and_rendered(tmp_path, capsys):
    model = {
        "quantized": True,
        "stored_accuracy": 0.5,
        "accuracy": 0.5,
        "footprint_bytes": 2240,
        "connection_sparsity": 0.0926,
        "activation_sparsity": 0.37576,
        "synaptic_operations": {"dense": 8784.0, "effective_macs": 2301.2, "effective_acs": 0.0},
        "counted": ["encoder (Linear, weight 8×1)"],
        "not_counted": ["blocks.0.ssm (QuantS4D: state recurrence)"],
    }
    figures = {
        "run": "tiny",
        "neurobench": "2.3.0",
        "sequences": 64,
        "steps": 64,
        "qssm_footprint": {"total_bits": 2600, "float32_bits": 16000},
        "models": {"qat": model},
    }
    run = tmp_path / "runs" / "tiny"
    run.mkdir(parents=True)
    results = tmp_path / "bench" / "results"
    assert collect.main([str(run), "--neurobench", "--results", str(results)]) == 2
    assert "run `qssm eval" in capsys.readouterr().err
    (run / "neurobench.json").write_text(json.dumps(figures))
    assert collect.main([str(run), "--neurobench", "--results", str(results)]) == 0
    assert not (results / "runs").exists()  # the run's own summary is left alone
    out = render.render_text(block("neurobench tiny absent"), tmp_path)
    row = "| `tiny` | qat | 50.00 % (50.00 %) | 2,240 | 325 | 0.0926 | 0.3758 | 8,784 | 2,301 | 0 |"
    assert row + " `" in out  # then the commit it was collected at
    assert "not counted blocks.0.ssm (QuantS4D: state recurrence)." in out
    assert "`qssm eval runs/absent --neurobench`" in out


def test_an_area_search_renders_beside_the_hand_allocation(root):
    area = {"area_mm2": 0.0392064, "capacitance_pf": 76.1088}
    search = {
        "budget_bits": 100864,
        "float32_bits": 856384,
        "candidates": 14,
        "chosen": "gru.Wz=2;scales=float16",
        "evaluated": [{"estimate": 0.9}] * 9 + [{"estimate": 0.925}],
        "seconds": 1500.0,
        "area": {"target": "minimalist_like", "budget_mm2": 0.0393, "chosen": area, "recipe": area},
    }
    searched = {**TINY, "run": "s", "search": search, "mapping": {**area, "area_mm2": 0.0392}}
    (root / "bench" / "results" / "runs" / "s.json").write_text(json.dumps(searched))
    out = render.render_text(block("search_area tiny s"), root)
    assert (
        "| `tiny` (the recipe's) | `minimalist_like` |  |  | 1,200 | 0.039206 mm², 76.1 pF | — "
        "| **81.25 %** (3) | 1 min 15 s | `0123456`, 2026-12-01 |" in out
    )
    assert (
        "| `s` (searched) | `minimalist_like` | 0.0393 mm² | 100,864 bits | 1,200 "
        "| 0.039206 mm², 76.1 pF | 0.039200 mm², 76.1 pF | **81.25 %** (3) "
        "| 25 min 0 s + 1 min 15 s |" in out
    )
    assert (
        "- `s`: 10 of 14 configurations evaluated, estimates 90.00 % to 92.50 %; chosen "
        "`gru.Wz=2;scales=float16`" in out
    )
    assert "No measurement committed yet for `gone`" in render.render_text(
        block("search_area tiny gone"), root
    )


def test_threads_block_sets_two_threads_against_one(root):
    prov = TINY["provenance"]
    one = {
        "s4d": {
            "recipe": "hetero_4_8.yaml",
            "float_conv_samples_per_s": 400.0,
            "qat_samples_per_s": 250.0,
            "qat_step_ms": {"float": 160.0, "scan_forward": 30.0, "rest": 12.0},
        },
        "provenance": prov,
    }
    two = {
        "s4d": {
            "recipe": "hetero_4_8.yaml",
            "float_conv_samples_per_s": 600.0,
            "qat_samples_per_s": 375.0,
            "qat_step_ms": {"float": 100.0, "scan_forward": 12.0, "rest": 12.0},
        },
        "provenance": prov,
    }
    results = root / "bench" / "results"
    (results / "performance.json").write_text(json.dumps(one))
    assert "OMP_NUM_THREADS=2 python bench/run.py" in render.render_text(
        block("threads two.json"), root
    )
    (results / "two.json").write_text(json.dumps(two))
    out = render.render_text(block("threads two.json"), root)
    assert "| s4d (`hetero_4_8`) | float | 400.0 | 600.0 | 1.50× |" in out
    assert "| s4d (`hetero_4_8`) | QAT | 250.0 | 375.0 | 1.50× |" in out
    assert "1.50×, **not met**" in out
    assert "| recurrence node, forward | 30.0 | 12.0 | 2.50× |" in out  # the parts, per thread
    assert "| the rest (layers, loss, optimizer) | 12.0 | 12.0 | 1.00× |" in out
    assert "| recurrence node, backward | — | — | — |" in out


def test_mcbench_block_renders_the_mapped_families_and_the_bench_table_keeps_its_own(root):
    """bench/run.py's Monte-Carlo figure per mapped family (mgrade_hw has only that figure, so
    the training table has no column for it); a bench file from before it says so."""
    trained = {"recipe": "hetero_4_8.yaml", "float_conv_samples_per_s": 400.0}
    trained["qat_samples_per_s"] = 250.0
    mc = {"target": "minimalist_like", "chips": 20, "sequences": 64, "steps": 784}
    mc |= {"seconds": 2.5, "chip_sequences_per_s": 20 * 64 / 2.5, "cpu_seconds": 2.496}
    mc |= {"cpu_ms_per_chip_sequence": 1e3 * 2.496 / (20 * 64)}
    mc["load_average"] = {"start": 1.04, "end": 1.16}
    old = {"s4d": trained, "provenance": TINY["provenance"], "batch": 64, "steps": 9}
    path = root / "bench" / "results" / "performance.json"
    path.write_text(json.dumps(old))
    out = render.render_text(block("mcbench") + block("bench"), root)
    assert "No measurement committed yet for the Monte-Carlo figure of `bench/run.py`" in out
    assert render.BENCH_CMD in out
    assert "| figure | s4d (`hetero_4_8`) |\n" in out  # the bench table as before
    new = old | {
        "mingru_hw": {**trained, "recipe": "minimalist.yaml", "montecarlo": mc},
        "mgrade_hw": {"recipe": "mgrade_hw.yaml", "montecarlo": mc | {"load_average": None}},
    }
    path.write_text(json.dumps(new))
    out = render.render_text(block("mcbench") + block("bench"), root)
    assert "| `minimalist_like` | 20 × 64 × 784 | 2.5 | **512** | 1.95 | 1.0 → 1.2 |" in out
    assert "| mingru_hw (`minimalist`) |" in out
    assert (
        "| mgrade_hw (`mgrade_hw`) | `minimalist_like` | 20 × 64 × 784 | 2.5 | **512** | 1.95 | — |"
        in out
    )
    assert "| figure | s4d (`hetero_4_8`) | mingru_hw (`minimalist`) |\n" in out  # no mgrade_hw
    assert "No measurement" not in out
    path.unlink()
    assert render.BENCH_CMD in render.render_text(block("mcbench"), root)
