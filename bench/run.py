"""Speed and memory of float and quantized training and inference, in one run.

    python bench/run.py [--json] [--steps N] [--batch B] [--out bench/results/performance.json]

For the small S4D (recipes/hetero_4_8.yaml: H=16, N=64, 784 steps) and the minGRU / mGRADE of
the shipped recipes, on smnist5k-shaped input:
  float_conv_samples_per_s  float training step in the recipe's float.mode (S4D: FFT
                            convolution; minGRU / mGRADE recipes: the step loop, faster on CPU)
  qat_samples_per_s         QAT training step in recurrent mode (state quantized every step)
  qat_vs_float_ratio        how many times slower QAT is
  qat_step_ms               ms per step: the float step, and the QAT step split into the
                            quantized recurrence forward / backward, the other sites'
                            fake-quantizers forward / backward, and the rest
  qat_peak_rss_gib          peak resident memory of the QAT steps (own process; the peak is
                            reset after building and calibrating the model)
  process_peak_rss_gib      the same process's peak including calibration
  step_latency_us           streaming at batch 1, per timestep: Brevitas fake-quant (torch),
                            the integer reference (numpy interpreter, and its step compiled
                            by numba: hwmap.compiled) and onnxruntime's deployable step graph
                            (step_deploy.onnx), its state fed back through IOBindings (no
                            copies)
  onnx_step_cpu_us          the same streaming, this process's CPU time per timestep (what
                            other processes on the same cores do not change)
  onnx_step_nodes           that graph's nodes, as exported and after onnxruntime's optimizer
  sequence_samples_per_s    whole sequences at batch B: integer reference, onnxruntime's
                            deployable sequence graph (sequence_deploy.onnx: one Scan)
Each figure is the median over timed steps after one warm-up step.  Weights are untrained (speed
does not depend on them); quantizers are calibrated on one batch.

For the families that map onto the switched-capacitor chip (MAPPED: the hardware minGRU of
recipes/minimalist.yaml and, with this figure only, the hardware mGRADE of recipes/mgrade_hw.yaml),
``montecarlo`` holds the Monte-Carlo simulator's throughput: the calibrated quantized model
lowered and mapped onto the minimalist_like target as ``qssm map-to-hw`` maps it (voltage ranges
observed on random input), then MC_BATCHES chip batches of hwmap.montecarlo.CHIP_BATCH nominal
chips (every non-ideality on) over MC_SEQUENCES random full-length sequences in this process, its
kernels compiled before the timing (bench/montecarlo.py's ``throughput``; bench/montecarlo.py
times trained runs and worker counts).  The simulator's work depends on the model's shape and the
sequences' length, not on the weights' values, so untrained weights and random input time it as
a trained model on its data would (one first-layer input pixel gives at most 256 distinct MAC
rows either way): chip_sequences_per_s, chip_sequences_per_cpu_s and cpu_ms_per_chip_sequence
(this process's CPU time, which other processes on the same cores change less).

``load_average`` records the 1-minute load average at the start and the end of the run.
``--out FILE`` also writes the JSON to FILE (atomically: a temporary file, then a rename) with
its provenance: date, machine (CPU model, cores, memory, thread count), library versions, git
commit and the command line.  ``bench/results/performance.json`` is the committed file that
``python bench/render_docs.py`` renders into docs/performance.md.
"""

import qssm  # noqa: F401  (before torch: its OpenMP threads' spin, Brevitas' optional warning)

# isort: split
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from montecarlo import throughput  # noqa: E402
from provenance import provenance, write_json_atomic  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RECIPES = {"s4d": "hetero_4_8.yaml", "mingru_hw": "minimalist.yaml", "mgrade": "mgrade_8.yaml"}
MAPPED = {"mingru_hw": "minimalist.yaml", "mgrade_hw": "mgrade_hw.yaml"}  # + the Monte-Carlo
FAMILIES = [*RECIPES, *(f for f in MAPPED if f not in RECIPES)]  # mgrade_hw: Monte-Carlo only
MC_TARGET, MC_BATCHES, MC_SEQUENCES = "minimalist_like", 2, 64
STARTED = time.perf_counter()


def progress(message: str) -> None:
    """A line on stderr (stdout stays the JSON) with the seconds since the start."""
    print(
        f"bench/run.py {time.perf_counter() - STARTED:6.1f} s: {message}",
        file=sys.stderr,
        flush=True,
    )


def float_mode(family: str) -> str:
    from qssm.recipe import load_recipe

    return load_recipe(ROOT / "recipes" / RECIPES[family]).float.mode


def build(recipe_file: str, quantized: bool, batch: int):
    from brevitas.graph.calibrate import calibration_mode

    from qssm.models.backbone import Classifier
    from qssm.quant.wrap import wrap
    from qssm.recipe import load_recipe
    from qssm.train import keep_freed_memory

    keep_freed_memory()  # as qssm's training loop (qssm.train.fit) runs
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


def train_step_seconds(model, x, y, mode: str, steps: int, warm: bool = False) -> float:
    """Median seconds of ``steps`` optimizer steps after one warm-up step (none if ``warm``)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    times = []
    for _ in range(steps + int(not warm)):
        t0 = time.perf_counter()
        loss = F.cross_entropy(model(x, mode), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[int(not warm) :])


def qat_breakdown_ms(model, x, y, steps: int) -> dict:
    """Milliseconds per QAT step (medians over ``steps`` steps, the model warm) in the
    recurrence's autograd node forward and backward (S4DScan, QuantGateScan, GRUScan, and the
    hardware minGRU's HardGRUScan / HardGateScan, which hold its gate, the gate's quantizer and
    its comparator too), in the fake-quantizers of every other site (FakeQuant) forward and
    backward, and in the rest (layers, loss, optimizer): each node's forward and backward timed
    as it runs."""
    from qssm.models.kernels import GRUScan, HardGRUScan
    from qssm.quant.kernels.mingru import HardGateScan, QuantGateScan
    from qssm.quant.kernels.s4d import S4DScan
    from qssm.quant.quantizers import FakeQuant

    spent = dict.fromkeys(
        ("scan_forward", "scan_backward", "fakequant_forward", "fakequant_backward"), 0.0
    )
    saved = []

    def timed(cls, name: str, part: str) -> None:
        fn = getattr(cls, name)
        saved.append((cls, name, fn))

        def run(*args):
            t0 = time.perf_counter()
            out = fn(*args)
            spent[part] += time.perf_counter() - t0
            return out

        setattr(cls, name, staticmethod(run))

    nodes = (
        (S4DScan, "scan"),
        (QuantGateScan, "scan"),
        (GRUScan, "scan"),
        (HardGRUScan, "scan"),
        (HardGateScan, "scan"),
        (FakeQuant, "fakequant"),
    )
    for cls, kind in nodes:
        timed(cls, "forward", f"{kind}_forward")
        timed(cls, "backward", f"{kind}_backward")
    rows = []
    try:
        for _ in range(steps):
            for k in spent:
                spent[k] = 0.0
            total = train_step_seconds(model, x, y, "recurrent", 1, warm=True)
            rows.append({**spent, "rest": total - sum(spent.values())})
    finally:
        for cls, name, fn in saved:
            setattr(cls, name, staticmethod(fn))
    return {k: 1e3 * statistics.median(r[k] for r in rows) for k in rows[0]}


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


def onnx_stream(graph, sess):
    """Streaming through onnxruntime's step graph with its state fed back in place: two
    IOBindings over two sets of state buffers, swapped every step (no copies, no dicts).
    Returns ``stream(x)``: x (L, d_input) float32 → the logits after the last step."""
    import numpy as np
    import onnxruntime as ort

    from hwmap.onnx_export import state_type

    def value(shape, dtype, fill=0):
        array = np.full(shape, fill, dtype=dtype)
        return array, ort.OrtValue.ortvalue_from_numpy(array)

    x_t, x_value = value((1, graph.d_input), np.float32)
    states = [  # per buffer set: state → (array, OrtValue)
        {s.name: value((1, *s.shape), state_type(s)[0]) for s in graph.states} for _ in range(2)
    ]
    types = {"tensor(double)": np.float64, "tensor(int32)": np.int32}
    outputs = {  # logits and site codes, overwritten every step
        o.name: value([1, *o.shape[1:]], types[o.type])
        for o in sess.get_outputs()
        if not o.name.startswith("next:")
    }
    bindings = []
    for k in range(2):
        b = sess.io_binding()
        b.bind_ortvalue_input("x", x_value)
        for s in graph.states:
            b.bind_ortvalue_input(f"state:{s.name}", states[k][s.name][1])
            b.bind_ortvalue_output(f"next:{s.name}", states[1 - k][s.name][1])
        for name, (_, v) in outputs.items():
            b.bind_ortvalue_output(name, v)
        bindings.append(b)

    def stream(x):
        for s in graph.states:  # the state starts at code 0: its zero point
            states[0][s.name][0][...] = s.zp
        for t in range(len(x)):
            x_t[...] = x[t]
            sess.run_with_iobinding(bindings[t % 2])
        return outputs["logits"][0].copy()

    return stream


def optimized_nodes(path: Path, out: Path) -> int:
    """How many nodes onnxruntime runs for the ONNX file ``path`` (its optimized graph, saved
    to ``out``)."""
    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.optimized_model_filepath = str(out)
    options.log_severity_level = 3  # not its warning that the saved graph is machine-specific
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return len(onnx.load(out).graph.node)


def integer_figures(graph, batch: int, steps: int, tmp: Path) -> dict:
    """Streaming latency and whole-sequence throughput of the integer reference and of
    onnxruntime, on the lowered model ``graph``."""
    import numpy as np
    import onnx

    from hwmap import intref, onnx_export, verify
    from hwmap.compiled import CompiledStream

    paths = {"step": tmp / "step_deploy.onnx", "sequence": tmp / "sequence_deploy.onnx"}
    onnx_export.save_onnx(onnx_export.step_model(graph, codes=False), paths["step"])
    onnx_export.save_onnx(onnx_export.sequence_model(graph, codes=False), paths["sequence"])
    x = np.random.default_rng(0).random((batch, 784, 1), dtype=np.float32)

    def per_step(fn, clock=time.perf_counter) -> float:
        times = []
        for _ in range(steps + 1):
            t0 = clock()
            fn()
            times.append((clock() - t0) / 784 * 1e6)
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

    step = onnx_stream(graph, verify.session(paths["step"]))
    if not np.array_equal(step(x[0]), intref.run(graph, x[:1])[0]):
        raise AssertionError("onnxruntime's streamed logits differ from the integer reference")
    sequence = verify.session(paths["sequence"])
    intref_s = per_step(lambda: intref.run(graph, x)) * 784 / 1e6
    onnx_s = per_step(lambda: sequence.run(["logits"], {"x": x})) * 784 / 1e6
    return {
        "intref_step_latency_us": per_step(stream_intref),
        "intref_compiled_step_latency_us": per_step(stream_compiled),
        "onnx_step_latency_us": per_step(lambda: step(x[0])),
        "onnx_step_cpu_us": per_step(lambda: step(x[0]), time.process_time),
        "onnx_step_nodes": {
            "exported": len(onnx.load(paths["step"]).graph.node),
            "optimized": optimized_nodes(paths["step"], tmp / "step_optimized.onnx"),
        },
        "intref_sequence_samples_per_s": batch / intref_s,
        "onnx_sequence_samples_per_s": batch / onnx_s,
    }


def montecarlo_figures(graph) -> dict:
    """The Monte-Carlo simulator's throughput on the lowered model ``graph`` (module docstring):
    bench/montecarlo.py's ``throughput`` over random input; no accuracy (random labels)."""
    import numpy as np

    from hwmap.montecarlo import CHIP_BATCH
    from hwmap.targets import load_target

    chips = MC_BATCHES * CHIP_BATCH
    progress(f"{graph.family}: Monte-Carlo, {chips} chips × {MC_SEQUENCES} sequences")
    rng = np.random.default_rng(0)
    train_x, x = rng.random((2, MC_SEQUENCES, 784, 1), dtype=np.float32)
    y = rng.integers(0, 10, MC_SEQUENCES)
    row = throughput(graph, load_target(MC_TARGET), train_x, x, y, chips, workers=1)
    del row["mean_accuracy"]  # of random labels
    row["cpu_ms_per_chip_sequence"] = 1e3 * row["cpu_seconds"] / (chips * MC_SEQUENCES)
    return row


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
    from hwmap.lower import lower

    if family not in RECIPES:  # the Monte-Carlo figure only
        progress(f"{family}: building and calibrating {MAPPED[family]}")
        graph = lower(build(MAPPED[family], True, batch)[0])
        return {"recipe": MAPPED[family], "montecarlo": montecarlo_figures(graph)}
    progress(f"{family}: float and QAT training steps ({RECIPES[family]})")
    float_model, x, y = build(RECIPES[family], False, batch)
    float_s = train_step_seconds(float_model, x, y, float_mode(family), steps)
    qat_model, x, y = build(RECIPES[family], True, batch)
    qat_s = train_step_seconds(qat_model, x, y, "recurrent", steps)
    progress(f"{family}: QAT peak memory (a child process)")
    qat_peak, process_peak = peak_rss_child(family, batch)
    progress(f"{family}: QAT step breakdown, streaming and whole sequences")
    row = {
        "recipe": RECIPES[family],
        "float_conv_samples_per_s": batch / float_s,
        "qat_samples_per_s": batch / qat_s,
        "qat_vs_float_ratio": qat_s / float_s,
        "qat_step_ms": {"float": 1e3 * float_s, **qat_breakdown_ms(qat_model, x, y, steps)},
        "qat_peak_rss_gib": qat_peak,
        "process_peak_rss_gib": process_peak,
        "fakequant_step_latency_us": step_latency_us(qat_model, steps),
    }
    graph = lower(qat_model)
    row |= integer_figures(graph, batch, steps, tmp)
    if family in MAPPED:
        row["montecarlo"] = montecarlo_figures(graph)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--json", action="store_true", help="print only the JSON")
    p.add_argument("--steps", type=int, default=3, help="timed steps per figure (median)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--families", nargs="+", default=FAMILIES, choices=FAMILIES)
    p.add_argument(
        "--out", type=Path, help="also write the JSON, with provenance, to this file (atomic)"
    )
    args = p.parse_args()
    result = {
        "provenance": provenance(threads=torch.get_num_threads()),
        "batch": args.batch,
        "steps": args.steps,
    }
    load = os.getloadavg()[0]  # other processes on the same cores change every timing
    with tempfile.TemporaryDirectory() as tmp:
        result.update({f: measure(f, args.batch, args.steps, Path(tmp)) for f in args.families})
    result["load_average"] = {"start": load, "end": os.getloadavg()[0]}
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

    def cells(values) -> str:
        return " ".join(f"{'—':>12s}" if v is None else f"{v:12.2f}" for v in values)

    for k in keys:
        print(f"{k:32s} " + cells(result[f].get(k) for f in args.families))
    mc = (result[f].get("montecarlo", {}).get("chip_sequences_per_s") for f in args.families)
    print(f"{'montecarlo_chip_sequences_per_s':32s} " + cells(mc))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
