"""A bit-accuracy sweep and its plot: the shipped sdigits sweep, made small, run by `qssm sweep`,
then accuracy against footprint drawn from its results.csv.

    python examples/sweep_and_plot.py --out runs/sweep_example
"""

import argparse
import csv
from pathlib import Path

import matplotlib
import yaml

from qssm.api import as_recipe
from qssm.cli import main as qssm

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/sweep_example", help="run dir to write")
    args = p.parse_args()
    out = Path(args.out)
    recipe = as_recipe("sweeps/sdigits_s4d").model_dump(mode="json")
    recipe["data"]["options"] = {"limit_train": 256, "limit_test": 128}
    recipe["float"]["epochs"] = 2
    recipe["sweep"].update(roles=["ssm.A", "ssm.state"], bits=[2, 8], uniform_bits=[4, 8])
    recipe["sweep"]["pareto"] = []
    out.mkdir(parents=True, exist_ok=True)
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    if qssm(["sweep", "--recipe", str(path), "--out", str(out), "--force", "--quiet"]) != 0:
        raise SystemExit("qssm sweep failed")
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for table in sorted({r["table"] for r in rows}):
        pts = [(int(r["total_bits"]) / 8192, 100 * float(r["accuracy"])) for r in rows]
        pts = [pt for pt, r in zip(pts, rows, strict=True) if r["table"] == table]
        ax.scatter(*zip(*pts, strict=True), label=table)
    ax.set(xlabel="footprint (KiB)", ylabel="PTQ test accuracy (%)")
    ax.legend()
    fig.savefig(out / "accuracy_vs_footprint.png", dpi=100, bbox_inches="tight")
    print(f"{len(rows)} points → {out}/results.csv, {out}/accuracy_vs_footprint.png")


if __name__ == "__main__":
    main()
