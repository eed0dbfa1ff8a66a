"""Speed and memory of float and quantized training and inference, in one run.

    python bench/run.py [--json] [--steps N] [--batch B]

For the small S4D (recipes/hetero_4_8.yaml: H=16, N=64, 784 steps) and the minGRU / mGRADE of
the shipped recipes, on smnist5k-shaped input:
  float_conv_samples_per_s  float training step in the recipe's float.mode (S4D: FFT
                            convolution; minGRU / mGRADE recipes: the step loop, faster on CPU)
  qat_samples_per_s         QAT training step in recurrent mode (state quantized every step)
  qat_vs_float_ratio        how many times slower QAT is
  qat_peak_rss_gib          peak resident memory of a process doing QAT steps (own process)
  step_latency_us           quantized inference at batch 1, per timestep (whole sequence / L)
Each figure is the median over timed steps after one warm-up step.  Weights are untrained (speed
does not depend on them); quantizers are calibrated on one batch.
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import qssm  # noqa: F401  (silences Brevitas' optional-kernel warning before it is imported)

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


def peak_rss_child(family: str, batch: int) -> float:
    """Peak RSS (GiB) of a fresh process doing two QAT steps."""
    here = str(Path(__file__).parent)
    code = (
        f"import resource, sys; sys.path.insert(0, {here!r}); "
        "from run import build, peak_rss_kib, train_step_seconds; "
        f"m, x, y = build({RECIPES[family]!r}, True, {batch}); "
        "train_step_seconds(m, x, y, 'recurrent', 1); "
        "print(peak_rss_kib())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1]) / 2**20


def peak_rss_kib() -> int:
    """This process's peak resident memory.  VmHWM, not ru_maxrss: Linux keeps ru_maxrss across
    exec, so a child started by a large parent would report the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def measure(family: str, batch: int, steps: int) -> dict:
    float_model, x, y = build(RECIPES[family], False, batch)
    float_s = train_step_seconds(float_model, x, y, float_mode(family), steps)
    qat_model, x, y = build(RECIPES[family], True, batch)
    qat_s = train_step_seconds(qat_model, x, y, "recurrent", steps)
    return {
        "recipe": RECIPES[family],
        "float_conv_samples_per_s": batch / float_s,
        "qat_samples_per_s": batch / qat_s,
        "qat_vs_float_ratio": qat_s / float_s,
        "qat_peak_rss_gib": peak_rss_child(family, batch),
        "step_latency_us": step_latency_us(qat_model, steps),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--json", action="store_true", help="print only the JSON")
    p.add_argument("--steps", type=int, default=3, help="timed steps per figure (median)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--families", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    args = p.parse_args()
    result = {
        "machine": {"torch": torch.__version__, "threads": torch.get_num_threads()},
        "batch": args.batch,
        **{f: measure(f, args.batch, args.steps) for f in args.families},
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    keys = [
        "float_conv_samples_per_s",
        "qat_samples_per_s",
        "qat_vs_float_ratio",
        "qat_peak_rss_gib",
        "step_latency_us",
    ]
    print(f"batch {args.batch}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'model':10s} " + " ".join(f"{k:>25s}" for k in keys))
    for f in args.families:
        print(f"{f:10s} " + " ".join(f"{result[f][k]:25.2f}" for k in keys))
    print(json.dumps(result))


if __name__ == "__main__":
    sys.exit(main())
