"""Monte-Carlo throughput of the switched-capacitor simulator: chip·sequences per second.

    python bench/montecarlo.py RUN_DIR [RUN_DIR ...] [--workers 1 2] [--chips 40]
                               [--sequences 500] [--target minimalist_like]
                               [--out bench/results/montecarlo.json]

Maps each quantized hardware run RUN_DIR (e.g. `runs/minimalist` of `recipes/minimalist.yaml`,
`runs/mgrade_hw` of `recipes/mgrade_hw.yaml`) onto the target, then runs ``--chips`` chips of
the nominal chip (every non-ideality on) over ``--sequences`` full-length test sequences (784
steps for smnist5k) as ``qssm map-to-hw --workers N``'s Monte-Carlo runs them: chip batches of
``hwmap.montecarlo.CHIP_BATCH`` chips, in this process (1 worker) or in N worker processes of
one thread each.  The simulator's kernels are compiled in each worker before its first batch,
outside the timing.  Per run and worker count it reports the seconds from the first batch's
start to the last one's end and chip_sequences_per_s over them (the whole machine's
throughput), the CPU seconds the batches got (all workers together) and
chip_sequences_per_cpu_s (on a machine other jobs share, the wall-clock figure counts their
time too), the 1-minute load average before and after, and the mean accuracy of the chips as
a sanity figure.  ``--out`` writes the JSON atomically with its provenance
(``bench/provenance.py``); ``python bench/render_docs.py`` renders it into docs/performance.md.
``throughput`` also gives ``bench/run.py``'s Monte-Carlo figure, on an untrained model over
random input, in every bench run.
"""

import argparse
import json
import os
import sys
import tempfile
import warnings
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import provenance, write_json_atomic  # noqa: E402


def throughput(graph, target, train_x, x, y, chips: int, workers: int) -> dict:
    """Chip·sequences per second of the nominal chip (every non-ideality on) of ``graph``
    mapped onto ``target`` as ``qssm map-to-hw`` maps it (voltage ranges observed on
    ``train_x``), over ``chips`` chips and the sequences ``x`` (labels ``y``), in chip batches
    run as ``qssm map-to-hw --workers N`` runs them.  The simulator's kernels are compiled
    before the timing (in this process for 1 worker, as each worker starts for more)."""
    from hwmap import intref, montecarlo, simulate
    from hwmap.mapping import RANGE_SEQUENCES, map_graph, observed_ranges

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a starved layer's warning is not the point here
        ranges = observed_ranges(graph, train_x[:RANGE_SEQUENCES])
    fit = partial(map_graph, graph, ranges=ranges)
    chip_set = montecarlo.Chips(graph, fit, target, x, y, intref.run(graph, x)[0].argmax(-1))
    nominal = montecarlo.settings(target, [], [], [], ablation=False)[0]
    if workers == 1:  # compile here, outside the timing (workers compile as they start)
        mapping = chip_set.mapping(nominal, target)
        simulate.Simulator(graph, mapping, target, simulate.NONIDEALITIES).run(x[:2, :2])
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        tasks = montecarlo.batches(nominal, chips, {}, Path(tmp))
        done = list(montecarlo.executor(workers)(chip_set, tasks))
    start = min(d["started"] for d in done)
    seconds = max(d["started"] + d["seconds"] for d in done) - start
    cpu = sum(d["cpu_seconds"] for d in done)
    accuracies = [a for d in done for a in d["accuracies"]]
    return {
        "family": graph.family,
        "target": target.name,
        "workers": workers,
        "chips": chips,
        "chip_batch": montecarlo.CHIP_BATCH,
        "sequences": len(x),
        "steps": int(x.shape[1]),
        "seconds": seconds,  # first batch's start to the last one's end
        "chip_sequences_per_s": chips * len(x) / seconds,
        "cpu_seconds": cpu,  # what the batches got of the CPU: on a shared machine, the figure
        "chip_sequences_per_cpu_s": chips * len(x) / cpu,  # an idle core would give
        "cpu_count": os.cpu_count(),
        "load_average": {"start": load, "end": os.getloadavg()[0]},
        "mean_accuracy": sum(accuracies) / len(accuracies),
    }


def measure(run_dir: Path, target_name: str, chips: int, sequences: int, workers: int) -> dict:
    """:func:`throughput` of the trained run ``run_dir`` on its own data: ranges observed on
    its training sequences, the first ``sequences`` test sequences simulated."""
    from hwmap.lower import lower
    from hwmap.targets import load_target
    from qssm.recipe import load_recipe
    from qssm.runs import load_data, load_run_model

    graph = lower(load_run_model(run_dir)[0])
    data = load_data(load_recipe(run_dir / "recipe.yaml"))
    x, y = data.test.x.numpy()[:sequences], data.test.y.numpy()[:sequences]
    row = throughput(graph, load_target(target_name), data.train.x.numpy(), x, y, chips, workers)
    return {"run": str(run_dir), **row, "target": target_name}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR")
    p.add_argument("--target", default="minimalist_like")
    p.add_argument("--workers", type=int, nargs="+", default=[1], help="worker counts to time")
    p.add_argument("--chips", type=int, default=40)
    p.add_argument("--sequences", type=int, default=500)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    if min(args.workers) < 1 or args.chips < 1 or args.sequences < 1:
        p.error("--workers, --chips and --sequences must be at least 1")
    results = []
    for run_dir in args.run_dirs:
        for workers in args.workers:
            row = measure(run_dir, args.target, args.chips, args.sequences, workers)
            results.append({"name": run_dir.name, **row})
            print(json.dumps(results[-1], indent=2), flush=True)
    if args.out:
        write_json_atomic(args.out, {"montecarlo": results, "provenance": provenance()})


if __name__ == "__main__":
    main()
