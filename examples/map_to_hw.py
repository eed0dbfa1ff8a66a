"""Map a hardware minGRU onto a switched-capacitor target and read the report: a small
MINIMALIST model on sdigits quantized by `qssm quantize`, mapped and simulated by
`qssm map-to-hw` (a short Monte-Carlo over chips), then the figures read from hw/verify.json and
hw/mapping.json, and hw/report.md printed.

    python examples/map_to_hw.py --out runs/hw_example
"""

import argparse
import json
from pathlib import Path

import yaml

from qssm.api import as_recipe
from qssm.cli import main as qssm


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/hw_example", help="run dir to write")
    args = p.parse_args()
    out = Path(args.out)
    recipe = as_recipe("minimalist").model_dump(mode="json")
    recipe.update(name="hw_example", data={"name": "sdigits", "options": {"limit_train": 256}})
    recipe["model"].update(d_model=8)
    recipe["float"].update(epochs=2, batch_size=32)
    recipe["qat"].update(epochs=1, batch_size=32)
    recipe["ptq"]["calibration_batches"] = 2
    out.mkdir(parents=True, exist_ok=True)
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    map_args = ["--target", "minimalist_like", "--mc-seeds", "2", "--mc-limit", "32"]
    map_args += ["--mc-units", "1", "--mc-offsets", "1", "--limit", "64", "--quiet"]
    for command in (
        ["quantize", "--recipe", str(path), "--out", str(out), "--force", "--quiet"],
        ["map-to-hw", str(out), *map_args],
    ):
        if qssm(command) != 0:
            raise SystemExit(f"qssm {command[0]} failed")
    verify = json.loads((out / "hw" / "verify.json").read_text())
    totals = json.loads((out / "hw" / "mapping.json").read_text())["totals"]
    ideal = verify["sim_ideal_vs_intref"]["decision_agreement"]
    print((out / "hw" / "report.md").read_text())
    print(
        f"{totals['capacitance_pf']:.1f} pF, {totals['area_mm2']:.4f} mm², "
        f"{totals['energy_per_step_pj']:.1f} pJ per step; ideal simulator vs integer reference: "
        f"{100 * ideal:.2f} % identical decisions; checks passed: {verify['passed']}"
    )


if __name__ == "__main__":
    main()
