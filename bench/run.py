"""Speed and memory of float and quantized training and inference, in one run.

    python bench/run.py [--json] [--steps N] [--batch B] [--out bench/results/performance.json]

For the small S4D (recipes/hetero_4_8.yaml: H=16, N=64, 784 steps) and the minGRU / mGRADE of
the shipped recipes, on smnist5k-shaped input:
  float_conv_samples_per_s  float training step in the recipe's float.mode (S4D: FFT
                            convolution; minGRU / mGRADE recipes: the step loop, faster on CPU)
  qat_samples_per_s         QAT training step in recurrent mode (state quantized every step)
  qat_vs_float_ratio        how many times slower QAT is
  qat_step_ms               ms per step: the float step, and the QAT step profiled (torch's
                            profiler) into the quantized recurrence forward / backward, the
                            other sites' fake-quantizers forward / backward, and the rest
  qat_peak_rss_gib          peak resident memory of the QAT steps (own process; the peak is
                            reset after building and calibrating the model)
  process_peak_rss_gib      the same process's peak including calibration
  step_latency_us           streaming at batch 1, per timestep: Brevitas fake-quant (torch),
                            the integer reference (numpy interpreter, and its step compiled
                            by numba: hwmap.compiled) and onnxruntime's step graph
  sequence_samples_per_s    whole sequences at batch B: integer reference, onnxruntime's
                            sequence graph (Scan)
Each figure is the median over timed steps after one warm-up step.  Weights are untrained (speed
does not depend on them); quantizers are calibrated on one batch.

``--out FILE`` also writes the JSON to FILE (atomically: a temporary file, then a rename) with
its provenance: date, machine (CPU model, cores, memory, thread count), library versions, git
commit and the command line.  ``bench/results/performance.json`` is the committed file that
``python bench/render_docs.py`` renders into docs/performance.md.
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import qssm  # noqa: F401  (silences Brevitas' optional-kernel warning before it is imported)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import provenance, write_json_atomic  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RECIPES = {"s4d": "hetero_4_8.yaml", "mingru_hw": "minimalist.yaml", "mgrade": "mgrade_8.yaml"}


def float_mode(family: str) -> str:
    from qssm.recipe import load_recipe

    return load_recipe(ROOT / "recipes" / RECIPES[family]).float.mode


def build(recipe_file: str, quantized: bool, batch: int):
    from brevitas.graph.calibrate import calibration_mode

    from qssm.models.backbone import Classifier
    from qssm.quant.wrap import wrap
    from qssm.recipe import load_recipe

    recipe = load_recipe(ROOT / "recipes" / recipe_file)
    torch.manual_seed(0)
    model = Classifier(recipe.model_dict(), 1, 10)
    x, y = torch.randn(batch, 784, 1), torch.randint(0, 10, (batch,))
    if quantized:
        wrap(model, recipe.quant)
        model.train()
        with calibration_mode(model), torch.no_grad():
            model(x, "recurrent")
    return model, x, y


def train_step_seconds(model, x, y, mode: str, steps: int) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    times = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        loss = F.cross_entropy(model(x, mode), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


PARTS = {  # the QAT step's autograd nodes, by the profiler's event names
    "scan_forward": ("S4DScan", "QuantGateScan"),
    "scan_backward": ("S4DScanBackward", "QuantGateScanBackward"),
    "fakequant_forward": ("FakeQuant",),
    "fakequant_backward": ("FakeQuantBackward",),
}


def qat_breakdown_ms(model, x, y, steps: int) -> dict:
    """Milliseconds per QAT step in the quantized recurrence (forward, backward), the
    fake-quantizers of every other site (forward, backward) and the rest (layers, loss,
    optimizer), from torch's profiler over ``steps`` + 1 steps (the model is warm)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        train_step_seconds(model, x, y, "recurrent", steps)
    events = prof.key_averages()
    inclusive = {e.key: e.cpu_time_total for e in events}
    parts = {k: sum(inclusive.get(n, 0) for n in names) for k, names in PARTS.items()}
    parts["rest"] = events.self_cpu_time_total - sum(parts.values())
    return {k: v / 1e3 / (steps + 1) for k, v in parts.items()}


@torch.no_grad()
def step_latency_us(model, steps: int) -> float:
    model.eval()
    x = torch.randn(1, 784, 1)
    times = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        model(x, "recurrent")
        times.append((time.perf_counter() - t0) / 784 * 1e6)
    return statistics.median(times[1:])


def integer_figures(model, batch: int, steps: int, tmp: Path) -> dict:
    """Streaming latency and whole-sequence throughput of the integer reference and of
    onnxruntime, on the lowered model."""
    import numpy as np

    from hwmap import intref, onnx_export, verify
    from hwmap.compiled import CompiledStream
    from hwmap.lower import lower

    graph = lower(model)
    paths = {"step": tmp / "step.onnx", "sequence": tmp / "sequence.onnx"}
    onnx_export.save_onnx(onnx_export.step_model(graph), paths["step"])
    onnx_export.save_onnx(onnx_export.sequence_model(graph), paths["sequence"])
    x = np.random.default_rng(0).random((batch, 784, 1), dtype=np.float32)

    def per_step(fn) -> float:
        times = []
        for _ in range(steps + 1):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) / 784 * 1e6)
        return statistics.median(times[1:])

    def stream_intref():
        s = intref.Stream(graph)
        for t in range(784):
            s(x[0, t])

    compiled = CompiledStream(graph)

    def stream_compiled():
        compiled.reset()
        for t in range(784):
            compiled(x[0, t])

    step = verify.session(paths["step"])
    sequence = verify.session(paths["sequence"])
    intref_s = per_step(lambda: intref.run(graph, x)) * 784 / 1e6
    onnx_s = per_step(lambda: sequence.run(["logits"], {"x": x})) * 784 / 1e6
    return {
        "intref_step_latency_us": per_step(stream_intref),
        "intref_compiled_step_latency_us": per_step(stream_compiled),
        "onnx_step_latency_us": per_step(lambda: verify.stream_onnx(graph, step, x[:1])),
        "intref_sequence_samples_per_s": batch / intref_s,
        "onnx_sequence_samples_per_s": batch / onnx_s,
    }


def peak_rss_child(family: str, batch: int) -> tuple[float, float]:
    """(QAT peak, whole-process peak) in GiB of a fresh process doing two QAT steps."""
    here = str(Path(__file__).parent)
    code = (
        f"import sys; sys.path.insert(0, {here!r}); "
        "from run import build, peak_rss_kib, reset_peak, train_step_seconds; "
        f"m, x, y = build({RECIPES[family]!r}, True, {batch}); "
        "before = peak_rss_kib(); reset_peak(); "
        "train_step_seconds(m, x, y, 'recurrent', 1); "
        "print(peak_rss_kib(), max(before, peak_rss_kib()))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    qat, total = out.stdout.strip().splitlines()[-1].split()
    return int(qat) / 2**20, int(total) / 2**20


def reset_peak() -> None:
    """Start a new peak (Linux: writing 5 to clear_refs resets VmHWM to the current RSS)."""
    Path("/proc/self/clear_refs").write_text("5")


def peak_rss_kib() -> int:
    """This process's peak resident memory.  VmHWM, not ru_maxrss: Linux keeps ru_maxrss across
    exec, so a child started by a large parent would report the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def measure(family: str, batch: int, steps: int, tmp: Path) -> dict:
    float_model, x, y = build(RECIPES[family], False, batch)
    float_s = train_step_seconds(float_model, x, y, float_mode(family), steps)
    qat_model, x, y = build(RECIPES[family], True, batch)
    qat_s = train_step_seconds(qat_model, x, y, "recurrent", steps)
    qat_peak, process_peak = peak_rss_child(family, batch)
    return {
        "recipe": RECIPES[family],
        "float_conv_samples_per_s": batch / float_s,
        "qat_samples_per_s": batch / qat_s,
        "qat_vs_float_ratio": qat_s / float_s,
        "qat_step_ms": {"float": 1e3 * float_s, **qat_breakdown_ms(qat_model, x, y, steps)},
        "qat_peak_rss_gib": qat_peak,
        "process_peak_rss_gib": process_peak,
        "fakequant_step_latency_us": step_latency_us(qat_model, steps),
        **integer_figures(qat_model, batch, steps, tmp),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--json", action="store_true", help="print only the JSON")
    p.add_argument("--steps", type=int, default=3, help="timed steps per figure (median)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--families", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    p.add_argument(
        "--out", type=Path, help="also write the JSON, with provenance, to this file (atomic)"
    )
    args = p.parse_args()
    result = {
        "provenance": provenance(threads=torch.get_num_threads()),
        "batch": args.batch,
        "steps": args.steps,
    }
    with tempfile.TemporaryDirectory() as tmp:
        result.update({f: measure(f, args.batch, args.steps, Path(tmp)) for f in args.families})
    if args.out is not None:
        write_json_atomic(args.out, result)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    keys = [
        "float_conv_samples_per_s",
        "qat_samples_per_s",
        "qat_vs_float_ratio",
        "qat_peak_rss_gib",
        "process_peak_rss_gib",
        "fakequant_step_latency_us",
        "intref_step_latency_us",
        "intref_compiled_step_latency_us",
        "onnx_step_latency_us",
        "intref_sequence_samples_per_s",
        "onnx_sequence_samples_per_s",
    ]
    print(f"batch {args.batch}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'figure':32s} " + " ".join(f"{f:>12s}" for f in args.families))
    for k in keys:
        print(f"{k:32s} " + " ".join(f"{result[f][k]:12.2f}" for f in args.families))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
