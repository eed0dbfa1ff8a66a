"""Monte-Carlo over chips: accuracy of many simulated chips per setting (unit capacitance,
residual comparator offset, comparator noise, which effects are on), against the integer model
on the same sequences.

The unit of work is a chip batch of a setting: ``CHIP_BATCH`` chips over every sequence, chip s
being seed s whatever the batching or the process it ran in.  Each batch is written atomically
to ``<dir>/batches/<chip digest>/chips-<first>-<last>.json`` when done, and each setting, once
all its batches are, to ``<dir>/<setting id>.json`` (its batch files are then removed), so an
interrupted Monte-Carlo resumes where it stopped: finished settings and batches are read back,
not recomputed.  Batches run in this process, in ``workers`` processes or as Ray tasks
(``executor``); the results do not depend on where they ran.
"""

import hashlib
import json
import shutil
import time
import warnings
from concurrent.futures import BrokenExecutor, ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from qssm.cluster import ray_session
from qssm.io import write_json

from . import intref, ops, simulate, targets
from . import mapping as mapping_code
from .targets import Target, residual_offset_mv

CHIP_BATCH = 10
SEQUENCE_BATCH = 500
YIELD_POINTS = (2, 4)  # a chip "works" within this many points of the integer model


class MonteCarloError(RuntimeError):
    """A chip batch failed; the message names the setting and its chips."""


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


class Chips:
    """What every chip batch reads: the graph, ``fit`` (a target → its mapping), the nominal
    target and the sequences with the integer model's predictions ``ref``.  Sent once to each
    worker process."""

    def __init__(self, graph, fit, target: Target, x, y, ref):
        self.graph, self.fit, self.target, self.x, self.y, self.ref = graph, fit, target, x, y, ref
        self.mappings: dict[str, object] = {}

    def mapping(self, s: dict, t: Target):
        if (m := self.mappings.get(_chip(s))) is None:
            with warnings.catch_warnings():  # a starved layer is the point of some settings
                warnings.simplefilter("ignore")
                m = self.mappings[_chip(s)] = self.fit(t)
        return m


def simulate_batch(chips: Chips, task: dict) -> dict:
    """One chip batch of one setting, written to ``task["path"]`` when done; any failure is a
    MonteCarloError naming the setting and the chips (no file is written then)."""
    s, seeds = task["setting"], task["seeds"]
    try:
        t = chip_target(chips.target, s)
        mapping = chips.mapping(s, t)
        started, cpu = time.time(), time.process_time()
        acc, agree = accuracies(
            chips.graph, mapping, t, s["effects"], seeds, chips.x, chips.y, chips.ref
        )
        row = {"key": task["key"], "seeds": seeds, "accuracies": acc.tolist()}
        row |= {"agreement": agree.tolist(), "started": started, "seconds": time.time() - started}
        row["cpu_seconds"] = time.process_time() - cpu
        write_json(task["path"], row)
    except Exception as err:  # noqa: BLE001 (any failure: one line naming the setting)
        raise MonteCarloError(
            f"Monte-Carlo setting {s['id']}, chips {seeds[0]}–{seeds[-1]}: "
            f"{type(err).__name__}: {err}"
        ) from None
    return row | {"path": task["path"]}


def serial(chips: Chips, tasks: list[dict]):
    for task in tasks:
        yield simulate_batch(chips, task)


def processes(workers: int):
    """Batches in ``workers`` spawned processes, one thread each; results as they finish."""

    def run_in(chips: Chips, tasks: list[dict]):
        ctx = get_context("spawn")
        with ProcessPoolExecutor(workers, ctx, initializer=_start, initargs=(chips,)) as pool:
            futures = [pool.submit(_in_worker, task) for task in tasks]
            try:
                for done in as_completed(futures):
                    yield done.result()
            except BrokenExecutor as err:
                raise MonteCarloError(f"Monte-Carlo: a worker process died ({err})") from None
            finally:
                pool.shutdown(cancel_futures=True)

    return run_in


def on_ray(address: str | None):
    """Batches as Ray tasks of one CPU each (``address``: a cluster; None starts a local Ray)."""

    def run_in(chips: Chips, tasks: list[dict]):
        with ray_session(address, MonteCarloError) as ray:
            shared, task = ray.put(chips), ray.remote(num_cpus=1)(_on_ray)
            pending = [task.remote(shared, t) for t in tasks]
            try:
                while pending:
                    ready, pending = ray.wait(pending)
                    try:
                        yield from ray.get(ready)
                    except ray.exceptions.RayTaskError as err:
                        raise err.cause from None
            finally:
                for p in pending:
                    ray.cancel(p)

    return run_in


def executor(workers: int = 1, kind: str = "local", address: str | None = None):
    """How chip batches run, as ``qssm sweep``'s points do: ``kind`` "local" in this process
    (workers 1) or ``workers`` processes, "ray" as Ray tasks."""
    if kind == "ray":
        return on_ray(address)
    return processes(workers) if workers > 1 else serial


_CHIPS: Chips | None = None  # a worker process's inputs, set once by _start


def _start(chips: Chips) -> None:
    """A worker process: one BLAS thread (numba kernels run on one thread anyway), and the
    simulator's kernels compiled (or loaded from numba's cache) once, before any batch."""
    global _CHIPS
    from threadpoolctl import threadpool_limits  # noqa: PLC0415 (workers only)

    threadpool_limits(1)  # kept until restored: for the worker's life
    _CHIPS = chips
    t = chips.target
    simulate.Simulator(chips.graph, chips.fit(t), t, simulate.NONIDEALITIES).run(chips.x[:2, :2])


def _in_worker(task: dict) -> dict:
    return simulate_batch(_CHIPS, task)


def _on_ray(chips: Chips, task: dict) -> dict:
    from threadpoolctl import threadpool_limits  # noqa: PLC0415 (workers only)

    with threadpool_limits(1):
        return simulate_batch(chips, task)


def batches(s: dict, chips: int, key: dict, folder: Path) -> list[dict]:
    """The chip batches of setting ``s`` over chips 0..chips-1, stored in ``folder``."""
    out = []
    for first in range(0, chips, CHIP_BATCH):
        seeds = list(range(first, min(first + CHIP_BATCH, chips)))
        path = folder / f"chips-{seeds[0]}-{seeds[-1]}.json"
        out.append({"setting": s, "seeds": seeds, "key": key, "path": str(path)})
    return out


def run(
    graph, fit, target: Target, x, y, chips: int, rows: list[dict], out: Path,
    progress=None, pool=serial,
):  # fmt: skip
    """Every setting of ``rows`` over ``chips`` chips and the sequences x, y; ``fit(target)``
    maps the graph onto a target (picklable where ``pool`` runs other processes).  Results in
    ``out`` (one JSON per setting; existing ones are reused when they describe the same
    setting, chips and sequences, and so are finished chip batches).  ``progress(total=N)``
    makes a progress bar over the N chip batches left to run; ``pool`` is how they run
    (:func:`executor`)."""
    out.mkdir(parents=True, exist_ok=True)
    logits = intref.run(graph, x)[0]
    ref = logits.argmax(-1)
    ideal = float(np.mean(ref == y))
    model = fingerprint(target, logits, x, y)
    results, stored, todo = {}, {}, {}  # todo: a chip → the settings that simulate it
    for s in rows:
        key = {**s, "chips": chips, "sequences": len(x), "fingerprint": model}
        path = out / f"{s['id']}.json"
        if path.exists():
            done = json.loads(path.read_text())
            if {k: done.get(k) for k in key} == key:
                results[s["id"]] = done
                stored.setdefault(_chip(s), done)
                continue
        todo.setdefault(_chip(s), []).append((s, key))
    plan = {}  # a chip no stored setting has → its batches
    for chip, waiting in todo.items():
        if chip not in stored:
            key = {"chip": json.loads(chip), "sequences": len(x), "fingerprint": model}
            plan[chip] = batches(waiting[0][0], chips, key, out / "batches" / _digest(key))
    found, tasks = {}, []  # found: a batch's path → its result
    for task in (t for chip_batches in plan.values() for t in chip_batches):
        path = Path(task["path"])
        done = json.loads(path.read_text()) if path.exists() else {}
        if done.get("key") == task["key"] and done.get("seeds") == task["seeds"]:
            found[task["path"]] = done
        else:
            tasks.append(task)
    bar = progress(total=len(tasks)) if progress is not None else None
    for done in pool(Chips(graph, fit, target, x, y, ref), tasks):
        found[done["path"]] = done
        if bar is not None:
            bar.update()
    if bar is not None:
        bar.close()
    for chip, waiting in todo.items():
        if (same := stored.get(chip)) is None:
            s, key = waiting[0]
            same = _setting(key, [found[t["path"]] for t in plan[chip]], ideal, target, s)
        for s, _ in waiting:
            row = same | {"id": s["id"], "sweep": s["sweep"]}
            write_json(out / f"{s['id']}.json", row)
            results[s["id"]] = row
        if chip in plan:  # the setting files hold it all now
            shutil.rmtree(Path(plan[chip][0]["path"]).parent, ignore_errors=True)
    try:  # no batch left: no empty folder either
        (out / "batches").rmdir()
    except OSError:  # absent, or holding another run's batches
        pass
    return [results[s["id"]] for s in rows]


def _setting(key: dict, parts: list[dict], ideal: float, target: Target, s: dict) -> dict:
    """A setting's row from its chip batches."""
    acc = np.concatenate([p["accuracies"] for p in parts])
    agree = np.concatenate([p["agreement"] for p in parts])
    seconds = sum(p["seconds"] for p in parts)  # the batches' own, wherever they ran
    t = chip_target(target, s)
    row = key | summary(acc, ideal) | {"residual_offset_mv": residual_offset_mv(t.comparator)}
    row["agreement"] = float(agree.mean())  # predictions equal to the integer model's
    row |= {"seconds": seconds, "chip_sequences_per_s": len(acc) * key["sequences"] / seconds}
    row["accuracies"] = acc.tolist()
    return row


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


def _digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
