"""``qssm export``: lower a quantized run, write the integer graph and the ONNX files, verify."""

from pathlib import Path

from tqdm import tqdm

from qssm.io import write_json
from qssm.recipe import load_recipe
from qssm.runs import RunError, load_data, load_run_model

from . import onnx_export, verify
from .intref import save_graph
from .lower import lower

FORMATS = ("qcdq", "qonnx")
STREAM_CHECK = 50  # sequences streamed through the step graph (784 session calls each batch)


def export_run(
    run_dir: Path,
    out: Path | None = None,
    fmt: str = "qcdq",
    limit: int | None = None,
    progress: bool = True,
) -> dict:
    """Lower ``run_dir``'s quantized model into ``out`` (default RUN_DIR/hw): graph.json +
    graph.npz (the integer graph), step.onnx + sequence.onnx (QCDQ) or step_qonnx.onnx, and
    verify.json (written last) with the checks of the verification chain on the test split."""
    model, header = load_run_model(run_dir)
    if header.get("quant") is None:
        raise RunError(f"{run_dir} holds a float model; run `qssm quantize` first and export that")
    graph = lower(model)  # raises LoweringError before anything is written
    recipe = load_recipe(run_dir / "recipe.yaml")
    x = load_data(recipe).test.x.numpy()[:limit]
    out = out or run_dir / "hw"
    out.mkdir(parents=True, exist_ok=True)
    (out / "verify.json").unlink(missing_ok=True)  # an unfinished export never looks verified
    save_graph(graph, out)
    qcdq = {"step": onnx_export.step_model(graph), "sequence": onnx_export.sequence_model(graph)}
    paths = {}
    tmp = out / ".verify"
    tmp.mkdir(exist_ok=True)
    for name, model_proto in qcdq.items():
        path = (out if fmt == "qcdq" else tmp) / f"{name}.onnx"
        onnx_export.save_onnx(model_proto, path)
        paths[name] = path
    files = {p.name: p.stat().st_size for p in paths.values() if p.parent == out}
    if fmt == "qonnx":
        path = out / "step_qonnx.onnx"
        onnx_export.save_onnx(onnx_export.step_model(graph, qonnx=True), path, check=False)
        files[path.name] = path.stat().st_size
    bar = tqdm(total=len(x), desc="fake-quant vs intref", disable=not progress, leave=False)
    result = {
        "run": str(run_dir),
        "format": fmt,
        "opset": onnx_export.OPSET,
        "files": files,
        "data": {"split": "test", "sequences": len(x), "length": int(x.shape[1])},
        "fakequant_vs_intref": verify.fakequant_vs_intref(model, graph, x, progress=bar.update),
        "onnx_vs_intref": verify.onnx_vs_intref(graph, paths["sequence"], x),
        "step_vs_sequence": verify.step_vs_sequence(
            graph, paths["step"], paths["sequence"], x[:STREAM_CHECK]
        ),
    }
    bar.close()
    for p in tmp.iterdir():
        p.unlink()
    tmp.rmdir()
    write_json(out / "verify.json", result)
    return result
