"""Bring your own model: quantize examples/my_model.py's two-layer S4D with a recipe through the
Python API — float training and QAT in your own loop, PTQ and the footprint by qssm — save it
as a run dir, and evaluate it with the CLI.

    python examples/bring_your_own_model.py --out runs/byo
    PYTHONPATH=examples qssm eval runs/byo       # the model's class is imported from my_model
"""

import argparse
from pathlib import Path

import torch
from my_model import TwoLayerS4D

import qssm
from qssm.data import load_dataset

QUANT = {  # hetero_4_8's choices: 8-bit Ā and state, 4 bits elsewhere, per channel, polar Ā
    "default": {"bits": 4, "granularity": "per_channel", "complex": "polar"},
    "targets": [
        {"roles": ["ssm.A", "ssm.state"], "bits": 8},
        {"roles": ["act.input", "act.output", "ssm.output"], "granularity": "per_tensor"},
    ],
}


def train(model, data, epochs: int, mode: str, lr: float) -> None:
    """Your own training loop: Adam, cross-entropy, batches of 32."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)  # made after qssm.quantize for QAT
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(data.train.y), generator=g).split(32):
            logits = model(data.train.x[idx], mode)
            loss = torch.nn.functional.cross_entropy(logits, data.train.y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/byo", help="run dir to write")
    p.add_argument("--train", type=int, default=256, help="training sequences (sdigits)")
    p.add_argument("--epochs", type=int, default=3, help="float epochs (QAT: 2)")
    args = p.parse_args()
    torch.manual_seed(0)
    data = load_dataset("sdigits", seed=0, limit_train=args.train, limit_test=128)
    recipe = {
        "name": "byo_s4d",
        "data": {"name": "sdigits", "options": {"limit_train": args.train, "limit_test": 128}},
        "model": {"family": "custom", "module": "my_model:TwoLayerS4D"},
        "quant": QUANT,
        "ptq": {"calibration_batches": 2, "batch_size": 32},
    }
    model = TwoLayerS4D(d_input=data.d_input, n_classes=data.n_classes)
    train(model, data, args.epochs, "parallel", 1e-2)  # float training, FFT convolution
    q = qssm.quantize(model, recipe, data)  # wrap + PTQ
    train(q.model, data, 2, "recurrent", 2e-3)  # QAT: the state quantized every step
    fp = qssm.footprint(q)
    saved = qssm.save(q, args.out, data, stage="qat", force=True)
    print(
        f"float {100 * saved['float']['accuracy']:.1f} %, PTQ {100 * saved['ptq']['accuracy']:.1f}"
        f" %, QAT {100 * saved['qat']['accuracy']:.1f} %; {fp['total_bits']} bits, "
        f"{fp['reduction']:.2f}× smaller than float32 as trained → {Path(args.out)}/report.md"
    )


if __name__ == "__main__":
    main()
