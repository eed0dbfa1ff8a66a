"""``qssm export`` and ``qssm map-to-hw``: lower a quantized run, write the integer graph and the
ONNX files, map it onto an SC-IMC target, simulate, verify.

Everything is written into a staging folder inside OUT and promoted into OUT (verify.json last)
only when every check of ``verify.CHECKS`` passes; a failing run raises ``VerifyError`` and
leaves OUT's earlier files as they were, with its own results in OUT/verify.failed.json — or,
with ``keep_failed``, promotes its files anyway (verify.json says ``"passed": false``).  Promoting
replaces every file an earlier export or mapping wrote (``FILES``), so OUT never mixes two runs."""

import importlib.util
import json
import shutil
import tempfile
from contextlib import contextmanager
from functools import partial
from importlib.metadata import version
from pathlib import Path

import numpy as np
from tqdm import tqdm

from qssm.io import atomic_path, provenance, read_json, write_json
from qssm.recipe import load_recipe
from qssm.runs import RunError, load_data, load_run_model

from . import intref, montecarlo, spice, standard, verify
from .graph import save_graph
from .lower import fakequant, lower
from .mapping import RANGE_SEQUENCES, map_graph, observed_ranges
from .onnx_export import OPSET, describe, save_onnx, sequence_model, step_model
from .report import plot_monte_carlo, write_hw_report
from .targets import load_target
from .verify import VerifyError

STREAM_CHECK = 50  # sequences streamed through the step graph (784 session calls each batch)


def _load(run_dir: Path, action: str):
    """(model, integer graph, recipe, data) of a quantized run; a float run or a model the graph
    cannot express fails here, before anything is written."""
    model, header = load_run_model(run_dir)
    if header.get("quant") is None:
        raise RunError(
            f"{run_dir} holds a float model; run `qssm quantize` first and {action} that"
        )
    if header["model"]["family"] == "custom":
        raise RunError(
            f"{run_dir} holds a model of your own ({header['model']['module']}); the integer "
            f"lowering knows qssm's model families only, so it cannot {action} it"
        )
    graph = lower(model)
    recipe = load_recipe(run_dir / "recipe.yaml")
    return model, graph, recipe, load_data(recipe)


FILES = (  # everything export_run and map_run write into OUT
    *("verify.json", "verify.failed.json", "graph.json", "graph.npz", "report.md"),
    *("step.onnx", "sequence.onnx", "step_qonnx.onnx", "mapping.json", "arrays.npz"),
    *("step_deploy.onnx", "sequence_deploy.onnx", "monte_carlo.png", "spice.json"),
    *("step_standard_qdq.onnx", "step_standard_qonnx.onnx"),
)


def _promote(stage: Path, out: Path) -> None:
    for name in FILES:  # verify.json first: a half-promoted export never looks verified
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / "spice", ignore_errors=True)  # map-to-hw --spice's netlists
    for path in sorted(stage.iterdir(), key=lambda p: p.name == "verify.json"):
        path.replace(out / path.name)


@contextmanager
def staged(out: Path, keep_failed: bool):
    """A staging folder for an export into ``out``; see the module docstring."""
    out.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=out, prefix=".staging-"))
    try:
        yield stage
        _promote(stage, out)
    except VerifyError:
        if keep_failed:
            _promote(stage, out)
        else:
            (stage / "verify.json").replace(out / "verify.failed.json")
        raise
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _finish(result: dict, stage: Path) -> None:
    """verify.json (after ``verify.gate``), then VerifyError if a check failed."""
    write_json(stage / "verify.json", result)
    if not result["passed"]:
        raise VerifyError(verify.failure(result))


DOCS = {  # ONNX file → its doc_string
    "step.onnx": "qssm step graph for verification: (x_t, state:*) -> (next:*, logits, code:* "
    "— every quantization site's integer codes, to check against the integer reference)",
    "sequence.onnx": "qssm sequence graph for verification: x (batch, time, d_input) -> "
    "(logits, codes:* per site and step); a Scan over the step",
    "step_qonnx.onnx": "qssm step graph with QONNX Quant nodes (unit scales on integer codes; "
    "the real scales are in graph.json), code:* outputs for verification",
    "step_deploy.onnx": "qssm deployable step graph: (x_t, state:*) -> (next:*, logits); start "
    "from zero state codes (the zero points) and feed next:* back as state:*",
    "sequence_deploy.onnx": "qssm deployable sequence graph: x (batch, time, d_input) -> logits",
    "step_standard_qdq.onnx": "qssm step graph in standard QDQ form: (x_t, states in real "
    "units) -> (next states, logits); QuantizeLinear/DequantizeLinear with the real scales, "
    "float32, not bit-exact",
    "step_standard_qonnx.onnx": "qssm step graph in standard QONNX form: (x_t, states in real "
    "units) -> (next states, logits); Quant nodes with the real scales, zero points and bit "
    "widths, float32, not bit-exact",
}


def _metadata(run_dir: Path) -> dict[str, str]:
    """ONNX metadata_props: what trained the run (its metrics.json provenance) and what
    exported it; the input preprocessing and initial state a deployment must reproduce."""
    trained = read_json(run_dir / "metrics.json").get("provenance", {})
    now = provenance()
    return {
        "qssm_version": str(now["qssm"]),
        "qssm_commit": str(now["commit"]),
        "torch": str(now["torch"]),
        "brevitas": str(now["brevitas"]),
        "preprocessing": json.dumps(trained.get("preprocessing", {})),
        "initial_state": "zeros (state codes at their zero points)",
        "trained_with": json.dumps(trained),
        "exported_with": json.dumps({k: v for k, v in now.items() if k != "preprocessing"}),
    }


def _save(model, out: Path, name: str, props: dict, check: bool = True) -> Path:
    pre = json.loads(props["preprocessing"])
    doc = f"{DOCS[name]}. Inputs: x = (raw / divide - mean) / std with {pre or 'no scaling'}."
    save_onnx(describe(model, doc, props), out / name, check)
    return out / name


def _export(run_dir, model, graph, x: np.ndarray, out: Path, fmt: str, progress) -> dict:
    """Write the integer graph and the ONNX files into ``out``; return the verification
    results."""
    save_graph(graph, out)
    props = _metadata(run_dir)
    step = _save(step_model(graph), out, "step.onnx", props)
    sequence = _save(sequence_model(graph), out, "sequence.onnx", props)
    step_deploy = _save(step_model(graph, codes=False), out, "step_deploy.onnx", props)
    sequence_deploy = _save(sequence_model(graph, codes=False), out, "sequence_deploy.onnx", props)
    if fmt == "qonnx":
        _save(step_model(graph, qonnx=True), out, "step_qonnx.onnx", props, check=False)
    bar = tqdm(total=len(x), desc="fake-quant vs intref", disable=not progress, leave=False)
    fq = verify.fakequant_vs_intref(partial(fakequant, model), graph, x, progress=bar.update)
    bar.close()
    result = {
        "run": str(run_dir),
        "format": fmt,
        "opset": OPSET,
        "files": {},
        "data": {"split": "test", "sequences": len(x), "length": int(x.shape[1])},
        "fakequant_vs_intref": fq,
        "onnx_vs_intref": verify.onnx_vs_intref(graph, sequence, x),
        "step_vs_sequence": verify.step_vs_sequence(graph, step, sequence, x[:STREAM_CHECK]),
        "deployed_vs_intref": verify.deployed_vs_intref(
            graph, step_deploy, sequence_deploy, x[:STREAM_CHECK]
        ),
    }
    result["standard_form"] = _standard_form(model, graph, x, out, props, fmt)
    if fmt == "qonnx":  # the QCDQ graphs only served the checks
        step.unlink()
        sequence.unlink()
    result["files"] = {p.name: p.stat().st_size for p in sorted(out.glob("*.onnx"))}
    return result


def _standard_form(model, graph, x: np.ndarray, out: Path, props: dict, fmt: str) -> dict:
    """The standard-form step graphs (``hwmap.standard``), measured and not gated: the QDQ graph
    in onnxruntime against the integer reference and fake-quant; with ``fmt`` qonnx, the QONNX
    graph in qonnx's executor against fake-quant (when qonnx is installed)."""
    fq = np.concatenate([fakequant(model, x[i : i + 250])[0] for i in range(0, len(x), 250)])
    refs = {"intref": intref.run(graph, x)[0], "fakequant": fq}
    qdq = standard.step_model(graph, "qdq")
    _save(qdq, out, "step_standard_qdq.onnx", props)
    result = {
        "gating": False,
        "qdq": standard.measure(standard.onnxruntime_run(qdq), graph, x, refs),
    }
    if fmt == "qonnx":
        qonnx = standard.step_model(graph, "qonnx")
        _save(qonnx, out, "step_standard_qonnx.onnx", props, check=False)
        if importlib.util.find_spec("qonnx") is None:
            result["qonnx"] = {"skipped": "qonnx is not installed (pip install qonnx)"}
        else:
            run = standard.qonnx_run(qonnx, len(x))
            result["qonnx"] = {"executor": f"qonnx {version('qonnx')}"} | standard.measure(
                run, graph, x, refs
            )
    return result


def export_run(
    run_dir: Path,
    out: Path | None = None,
    fmt: str = "qcdq",
    limit: int | None = None,
    progress: bool = True,
    keep_failed: bool = False,
) -> dict:
    """Lower ``run_dir``'s quantized model into ``out`` (default RUN_DIR/hw): graph.json +
    graph.npz (the integer graph), step.onnx + sequence.onnx (QCDQ, with the per-site code
    outputs verification reads) or step_qonnx.onnx, step_deploy.onnx + sequence_deploy.onnx
    (the same graphs without those outputs), each with provenance metadata, and
    verify.json (written last) with the checks of the verification chain on the test split
    (all of it unless ``limit``).  Raises VerifyError when a check fails."""
    model, graph, _, data = _load(run_dir, "export")
    out = out or run_dir / "hw"
    with staged(out, keep_failed) as stage:
        result = _export(run_dir, model, graph, data.test.x.numpy()[:limit], stage, fmt, progress)
        verify.gate(result)
        _finish(result, stage)
    return result


def _split(obj, arrays: dict, path: str = ""):
    """The mapping as JSON: arrays of more than one element go to ``arrays`` by dotted path
    (arrays.npz), single elements become numbers."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if isinstance(v, np.ndarray) and v.size > 1:
                arrays[f"{path}{k}"] = v
            else:
                out[k] = _split(v, arrays, f"{path}{k}.")
        return out
    if isinstance(obj, list):
        return [_split(v, arrays, f"{path}{i}.") for i, v in enumerate(obj)]
    return obj.item() if isinstance(obj, (np.ndarray, np.generic)) else obj


def map_run(
    run_dir: Path,
    target_path: str,
    out: Path | None = None,
    mc_seeds: int = 50,
    mc_limit: int | None = None,
    units=(0.5, 1.0, 2.0, 4.0),
    offsets=(0.03, 0.1, 0.3, 1.0),
    noises=(0.1, 0.25, 0.5, 1.0),
    ablation: bool = True,
    limit: int | None = None,
    progress: bool = True,
    keep_failed: bool = False,
    with_spice: bool = False,
    workers: int = 1,
    executor: str = "local",
    address: str | None = None,
) -> dict:
    """``qssm map-to-hw``: everything of ``export_run`` plus mapping.json, arrays.npz, the
    simulator checks and the Monte-Carlo table in verify.json, and report.md (its settings are
    kept in OUT/monte_carlo/, one file each, so a rerun resumes); ``with_spice``: the ngspice
    cross-check of mapped pieces (spice.json, the netlists in spice/); ``workers``,
    ``executor``, ``address``: where the Monte-Carlo's chip batches run
    (:func:`hwmap.montecarlo.executor`).  Raises VerifyError when a check fails."""
    target = load_target(target_path)
    if with_spice:
        spice.require_ngspice()  # before anything is lowered or written
    model, graph, recipe, data = _load(run_dir, "map")
    ranges = observed_ranges(graph, data.train.x.numpy()[:RANGE_SEQUENCES])
    mapping = map_graph(graph, target, ranges=ranges)  # MappingError: nothing written
    out = out or run_dir / "hw"
    x, y = data.test.x.numpy()[:limit], data.test.y.numpy()[:limit]
    with staged(out, keep_failed) as stage:
        result = _export(run_dir, model, graph, x, stage, "qcdq", progress)
        arrays: dict[str, np.ndarray] = {}
        write_json(stage / "mapping.json", _split(mapping, arrays))
        with atomic_path(stage / "arrays.npz") as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)
        result["sim_ideal_vs_intref"] = verify.sim_ideal_vs_intref(graph, mapping, target, x)
        checked = spice.cross_check(mapping, target, stage) if with_spice else None
        if checked:
            write_json(stage / "spice.json", checked)
        if mc_seeds:
            fit = partial(map_graph, graph, ranges=ranges)  # a target → its mapping
            rows = montecarlo.settings(target, units, offsets, noises, ablation)
            bar = partial(tqdm, desc="Monte-Carlo chip batches", disable=not progress, leave=False)
            mc = montecarlo.run(
                graph, fit, target, x[:mc_limit], y[:mc_limit], mc_seeds, rows,
                out / "monte_carlo", bar, montecarlo.executor(workers, executor, address),
            )  # fmt: skip
            result["monte_carlo"] = mc
            plot_monte_carlo(mc, stage / "monte_carlo.png")
        verify.gate(result)
        write_hw_report(stage, recipe.name, mapping, result, checked)
        _finish(result, stage)
    return {"mapping": _split(mapping, {}), "verify": result, "spice": checked}
