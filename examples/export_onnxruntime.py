"""Export a quantized run and run it in onnxruntime: a small S4D on sdigits quantized by
`qssm quantize`, lowered to integers by `qssm export`, then hw/sequence_deploy.onnx (the
deployable graph, no verification outputs) run on the test split with onnxruntime alone.

    python examples/export_onnxruntime.py --out runs/onnx_example
"""

import argparse
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import yaml

from qssm.api import as_recipe
from qssm.cli import main as qssm
from qssm.data import load_dataset


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/onnx_example", help="run dir to write")
    args = p.parse_args()
    out = Path(args.out)
    recipe = as_recipe("sweeps/sdigits_s4d").model_dump(mode="json")
    recipe.update(name="onnx_example", sweep=None, qat={"epochs": 1, "batch_size": 32})
    recipe["data"]["options"] = {"limit_train": 256, "limit_test": 128}
    recipe["float"]["epochs"] = 2
    out.mkdir(parents=True, exist_ok=True)
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    for command in (
        ["quantize", "--recipe", str(path), "--out", str(out), "--force", "--quiet"],
        ["export", str(out), "--quiet"],
    ):
        if qssm(command) != 0:
            raise SystemExit(f"qssm {command[0]} failed")

    model = onnx.load(out / "hw" / "sequence_deploy.onnx")
    meta = {p.key: p.value for p in model.metadata_props}
    print(f"{model.doc_string}\npreprocessing: {meta['preprocessing']}")
    session = ort.InferenceSession(str(out / "hw" / "sequence_deploy.onnx"))
    test = load_dataset("sdigits", seed=0, limit_train=256, limit_test=128).test
    logits = session.run(["logits"], {"x": test.x.numpy()})[0]
    accuracy = float(np.mean(logits.argmax(1) == test.y.numpy()))
    stored = json.loads((out / "metrics.json").read_text())["qat"]["accuracy"]
    print(
        f"onnxruntime test accuracy {100 * accuracy:.2f} % (fake-quant QAT: {100 * stored:.2f} %)"
    )


if __name__ == "__main__":
    main()
