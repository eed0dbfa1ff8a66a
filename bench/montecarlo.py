"""Monte-Carlo throughput of the switched-capacitor simulator: chip·sequences per second.

    python bench/montecarlo.py RUN_DIR [RUN_DIR ...] [--chips 10] [--sequences 500]
                               [--target minimalist_like] [--out bench/results/montecarlo.json]

Maps each quantized hardware run RUN_DIR (e.g. `runs/minimalist` of `recipes/minimalist.yaml`,
`runs/mgrade_hw` of `recipes/mgrade_hw.yaml`) onto the target, then times one chip batch of the
nominal chip (every non-ideality on) over ``--sequences`` full-length test sequences (784 steps
for smnist5k), as ``qssm map-to-hw``'s Monte-Carlo runs it (``hwmap.montecarlo.CHIP_BATCH``
chips at a time).  Reports per run chip_sequences_per_s, the seconds, the CPU seconds the
process got and chip_sequences_per_cpu_s (on a machine other jobs share, the wall-clock figure
counts their time too), the 1-minute load average before and after, and the mean accuracy of
the chips as a sanity figure.  Run it with OMP_NUM_THREADS=1 for the single-core figure.
``--out`` writes the JSON atomically with its provenance (``bench/provenance.py``);
``python bench/render_docs.py`` renders it into docs/performance.md.
"""

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import provenance, write_json_atomic  # noqa: E402


def measure(run_dir: Path, target_name: str, chips: int, sequences: int) -> dict:
    from hwmap import simulate
    from hwmap.lower import lower
    from hwmap.mapping import RANGE_SEQUENCES, map_graph, observed_ranges
    from hwmap.targets import load_target
    from qssm.recipe import load_recipe
    from qssm.runs import load_data, load_run_model

    graph = lower(load_run_model(run_dir)[0])
    recipe = load_recipe(run_dir / "recipe.yaml")
    data = load_data(recipe)
    target = load_target(target_name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a starved layer's warning is not the point here
        ranges = observed_ranges(graph, data.train.x.numpy()[:RANGE_SEQUENCES])
        mapping = map_graph(graph, target, ranges=ranges)
    x, y = data.test.x.numpy()[:sequences], data.test.y.numpy()[:sequences]
    every = simulate.NONIDEALITIES
    simulate.Simulator(graph, mapping, target, every).run(x[:2, :2])  # compile, outside the timing
    sim = simulate.Simulator(graph, mapping, target, every, list(range(chips)))
    load = os.getloadavg()[0]
    start, cpu = time.perf_counter(), time.process_time()
    acc = simulate.accuracy(sim, x, y)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {
        "run": str(run_dir),
        "family": graph.family,
        "target": target_name,
        "chips": chips,
        "sequences": sequences,
        "steps": int(x.shape[1]),
        "seconds": seconds,
        "chip_sequences_per_s": chips * sequences / seconds,
        "cpu_seconds": cpu,  # what the process got of the CPU: on a shared machine, the figure
        "chip_sequences_per_cpu_s": chips * sequences / cpu,  # an idle core would give
        "load_average": {"start": load, "end": os.getloadavg()[0]},
        "mean_accuracy": float(acc.mean()),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR")
    p.add_argument("--target", default="minimalist_like")
    p.add_argument("--chips", type=int, default=10)
    p.add_argument("--sequences", type=int, default=500)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    results = {}
    for run_dir in args.run_dirs:
        results[run_dir.name] = measure(run_dir, args.target, args.chips, args.sequences)
        print(json.dumps(results[run_dir.name], indent=2))
    if args.out:
        write_json_atomic(args.out, {"montecarlo": results, "provenance": provenance()})


if __name__ == "__main__":
    main()
