"""Monte-Carlo over chips: accuracy of many simulated chips per setting (unit capacitance,
residual comparator offset, comparator noise, which effects are on), against the integer model
on the same sequences.

Each setting's result is written atomically to ``<dir>/<setting id>.json`` as soon as it is
done, so an interrupted Monte-Carlo resumes where it stopped (finished settings are read back,
not recomputed).  Chips run in batches of ``CHIP_BATCH`` over every sequence; chip s is seed s
whatever the batching.
"""

import hashlib
import json
import time
import warnings
from pathlib import Path

import numpy as np

from qssm.io import write_json

from . import intref, ops, simulate, targets
from . import mapping as mapping_code
from .targets import Target, residual_offset_mv

CHIP_BATCH = 10
SEQUENCE_BATCH = 500
YIELD_POINTS = (2, 4)  # a chip "works" within this many points of the integer model


def settings(target: Target, units, offsets, noises, ablation: bool) -> list[dict]:
    """The nominal chip (every effect on), the sweeps around it, and the ablation (each effect
    alone on, each alone off)."""
    nominal = {
        "unit_ff": target.capacitor.unit_ff,
        "offset_mv": None,  # None: the target's calibrated residual
        "noise_mv": target.comparator.noise_mv,
        "effects": list(simulate.NONIDEALITIES),
    }
    rows = [{"id": "nominal", "sweep": "nominal", **nominal}]
    for key, values in (("unit_ff", units), ("offset_mv", offsets), ("noise_mv", noises)):
        rows += [{"id": f"{key}={v:g}", "sweep": key, **nominal, key: v} for v in values]
    if ablation:
        for e in simulate.NONIDEALITIES:
            rows.append({"id": f"only={e}", "sweep": "alone on", **nominal, "effects": [e]})
            rest = [n for n in simulate.NONIDEALITIES if n != e]
            rows.append({"id": f"without={e}", "sweep": "alone off", **nominal, "effects": rest})
    return rows


def chip_target(target: Target, s: dict) -> Target:
    t = target.with_unit(s["unit_ff"]).with_noise(s["noise_mv"])
    return t if s["offset_mv"] is None else t.with_offset(s["offset_mv"])


def accuracies(graph, mapping, target, effects, seeds, x, y, ref) -> tuple[np.ndarray, np.ndarray]:
    """Accuracy of every chip (len(seeds),) over every sequence, and the fraction of its
    predictions equal to the integer model's (``ref``)."""
    correct, agree = np.zeros(len(seeds)), np.zeros(len(seeds))
    for i in range(0, len(seeds), CHIP_BATCH):
        chips = seeds[i : i + CHIP_BATCH]
        sim = simulate.Simulator(graph, mapping, target, effects, chips)
        for j in range(0, len(x), SEQUENCE_BATCH):
            pred = sim.run(x[j : j + SEQUENCE_BATCH])[0].argmax(-1)
            correct[i : i + len(chips)] += (pred == y[None, j : j + SEQUENCE_BATCH]).sum(-1)
            agree[i : i + len(chips)] += (pred == ref[None, j : j + SEQUENCE_BATCH]).sum(-1)
    return correct / len(x), agree / len(x)


def summary(acc: np.ndarray, ideal: float) -> dict:
    pts = 100 * (acc - ideal)
    out = {"mean": float(acc.mean()), "std": float(acc.std()), "ideal": ideal}
    out |= {f"p{q}": float(np.percentile(acc, q)) for q in (5, 50, 95)}
    out |= {f"yield_{p}": float(np.mean(pts >= -p)) for p in YIELD_POINTS}
    return out


def run(graph, fit, target: Target, x, y, chips: int, rows: list[dict], out: Path, progress=None):
    """Every setting of ``rows`` over ``chips`` chips and the sequences x, y; ``fit(target)``
    maps the graph onto a target.  Results in ``out`` (one JSON per setting; existing ones are
    reused when they describe the same setting, chips and sequences)."""
    out.mkdir(parents=True, exist_ok=True)
    logits = intref.run(graph, x)[0]
    ref = logits.argmax(-1)
    ideal = float(np.mean(ref == y))
    model = fingerprint(target, logits, x, y)
    results, computed = [], {}  # a sweep point that is the nominal chip is computed once
    for s in rows:
        path = out / f"{s['id']}.json"
        key = {**s, "chips": chips, "sequences": len(x), "fingerprint": model}
        if path.exists():
            done = json.loads(path.read_text())
            if {k: done.get(k) for k in key} == key:
                results.append(done)
                computed.setdefault(_chip(s), done)
                continue
        if (same := computed.get(_chip(s))) is not None:
            row = same | {"id": s["id"], "sweep": s["sweep"]}
            write_json(path, row)
            results.append(row)
            if progress is not None:
                progress(row)
            continue
        t = chip_target(target, s)
        with warnings.catch_warnings():  # a starved layer is the point of some settings
            warnings.simplefilter("ignore")
            mapping = fit(t)
        start = time.perf_counter()
        acc, agree = accuracies(graph, mapping, t, s["effects"], list(range(chips)), x, y, ref)
        wall = time.perf_counter() - start
        row = key | summary(acc, ideal) | {"residual_offset_mv": residual_offset_mv(t.comparator)}
        row["agreement"] = float(agree.mean())  # predictions equal to the integer model's
        row |= {"seconds": wall, "chip_sequences_per_s": chips * len(x) / wall}
        row["accuracies"] = acc.tolist()
        write_json(path, row)
        results.append(row)
        computed[_chip(s)] = row
        if progress is not None:
            progress(row)
    return results


def fingerprint(target: Target, logits: np.ndarray, x: np.ndarray, y: np.ndarray) -> str:
    """What a stored setting's result depends on beyond the setting itself: the simulator's and
    the mapping's code, the whole target, the model (its integer logits on these sequences) and
    the sequences.  A result of other code or another model is simulated again."""
    digest = hashlib.sha256()
    for module in (simulate, mapping_code, targets, intref, ops):
        digest.update(Path(module.__file__).read_bytes())
    digest.update(target.model_dump_json().encode())
    for a in (logits, x, y):
        digest.update(np.ascontiguousarray(a).tobytes())
    return digest.hexdigest()[:16]


def _chip(s: dict) -> str:
    """What a setting simulates, without its name."""
    return json.dumps({k: v for k, v in s.items() if k not in ("id", "sweep")}, sort_keys=True)
