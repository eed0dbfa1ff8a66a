"""Bit-accuracy tables: a grid of quantization configurations evaluated on one float model.

Each point is a quantization config derived from the recipe's ``quant`` section, run through
PTQ (and QAT), and stored as ``points/<id>.json`` — written atomically, so an interrupted sweep
resumes without recomputing finished points.  Points run in this process, in ``--workers``
processes, or as Ray tasks; the results do not depend on where they ran.
"""

import contextlib
import copy
import csv
import functools
import hashlib
import io
import itertools
import json
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import torch
from tqdm import tqdm

from .cluster import ray_session
from .data import Dataset, Split
from .io import atomic_write, read_json, write_json
from .models.backbone import Classifier
from .quant.calibrate import calibrate
from .quant.footprint import footprint
from .quant.wrap import wrap
from .recipe import QuantConfig, Recipe, RecipeError, parse_recipe
from .report import write_sweep_report
from .runs import QUANT_FORMAT, load_data, load_run_model, n_params
from .train import Diverged, evaluate, fit, seed_everything

FOOTPRINT_COLUMNS = ["param_bits", "state_bits", "buffer_bits", "total_bits"]
POINT_COLUMNS = ["id", "table", "config", "bits", "stage", "seed"]
COLUMNS = [*POINT_COLUMNS, "accuracy", *FOOTPRINT_COLUMNS, "reduction"]


def with_bits(quant: dict, bits: int) -> dict:
    """``quant`` with every site at ``bits`` (targets keep their other settings)."""
    quant = copy.deepcopy(quant)
    quant["default"].update(bits=bits, levels=None)
    for t in quant["targets"]:
        if t.get("bits") is not None or t.get("levels") is not None:
            t.update(bits=bits, levels=None)
    return quant


def make_point(
    pid: str,
    table: str,
    config: str,
    bits,
    stage: str,
    seed: int,
    quant: dict,
    qat_epochs: int | None = None,
    holdout: float = 0.0,
) -> dict:
    """One point of a sweep or search (``bits``: an int, or a label such as "4/8").  A search
    point may shorten the QAT (``qat_epochs``, its own cosine schedule) and train on all but the
    last ``holdout`` fraction of the training split, scored on that fraction."""
    point = dict(id=pid, table=table, config=config, bits=bits, stage=stage, seed=seed, quant=quant)
    extra = {"qat_epochs": qat_epochs, "holdout": holdout}
    return point | {k: v for k, v in extra.items() if v}


def points(recipe: Recipe) -> list[dict]:
    """Every point of the sweep: id, table, quant config, stage, seed."""
    sw, base = recipe.sweep, recipe.quant.model_dump(mode="json")
    configs = []  # (table, config label, bits label, quant)
    for role in sw.roles:
        for b in sw.bits:
            q = with_bits(base, sw.base_bits)
            q["targets"].append({"roles": [role], "bits": b})
            configs.append(("per_role", role, b, q))
    for b in sw.uniform_bits:
        configs.append(("uniform", "all", b, with_bits(base, b)))
    for combo in itertools.product(*[g.bits for g in sw.pareto]):
        q = with_bits(base, sw.base_bits)
        label = []
        for group, b in zip(sw.pareto, combo, strict=True):
            q["targets"].append({"roles": list(group.roles), "bits": b})
            label.append(f"{'+'.join(group.roles)}={b}")
        if combo:
            configs.append(("pareto", ";".join(label), "/".join(map(str, combo)), q))
    out = []
    for (table, config, bits, quant), stage, seed in itertools.product(
        configs, sw.stages, sw.seeds
    ):
        name = f"{table}-{bits}" if table == "pareto" else f"{table}-{config}-{bits}"
        pid = f"{name}-{stage}-s{seed}".replace("/", "_")
        out.append(make_point(pid, table, config, bits, stage, seed, quant))
    return out


def check_points(recipe: Recipe, source: str = "recipe") -> None:
    """Every quantization config of the recipe's sweep must fit its model."""
    model = Classifier(recipe.model_dict(), 1, 2)
    for p in points(recipe):
        try:
            wrap(copy.deepcopy(model), QuantConfig.model_validate(p["quant"]))
        except ValueError as err:
            raise RecipeError(f"{source}: sweep point {p['id']}: {err}") from None


def point_key(sweep_dir: Path, recipe_json: dict, point: dict) -> str:
    """Fingerprint of everything a point's result depends on: its quant config (and what its
    keys mean, QUANT_FORMAT), stage and seed, the data / model / calibration / QAT / eval
    settings, and the float model's bytes."""
    settings = {k: recipe_json[k] for k in ("seed", "data", "model", "ptq", "qat", "eval")}
    quant = [point["quant"], QUANT_FORMAT]
    extra = [point[k] for k in ("qat_epochs", "holdout") if k in point]
    text = json.dumps([settings, quant, point["stage"], point["seed"], *extra], sort_keys=True)
    digest = hashlib.sha256(text.encode())
    digest.update((sweep_dir / "float.safetensors").read_bytes())
    return digest.hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def _inputs(recipe_text: str) -> tuple[Recipe, Dataset]:
    """The recipe and its data, loaded once per process for all the points it runs."""
    recipe = parse_recipe(json.loads(recipe_text))
    return recipe, load_data(recipe)


def run_point(sweep_dir: str, point: dict) -> dict:
    """Quantize the sweep's float model as ``point`` says; the result row (also on disk).  A QAT
    that diverges gives a row with ``failed`` (the reason) and no accuracy."""
    sweep_dir = Path(sweep_dir)
    done = sweep_dir / "points" / f"{point['id']}.json"
    recipe_json = read_json(sweep_dir / "recipe.json")
    key = point_key(sweep_dir, recipe_json, point)
    if done.exists():
        row = read_json(done)
        if row.get("key") == key:  # same config, same float model
            return row
    recipe, data = _inputs(json.dumps(recipe_json, sort_keys=True))
    model, _ = load_run_model(sweep_dir, "float")
    float_params = n_params(model)
    seed_everything(point["seed"])
    model, table = wrap(model, QuantConfig.model_validate(point["quant"]))
    train, test = data.train, data.test
    if point.get("holdout"):
        n = len(train) - round(point["holdout"] * len(train))  # the split is shuffled
        train, test = Split(train.x[:n], train.y[:n]), Split(train.x[n:], train.y[n:])
    qat = recipe.qat
    if point.get("qat_epochs"):
        qat = qat.model_copy(update={"epochs": point["qat_epochs"]})
    calibrate(model, train, recipe.ptq, seed=point["seed"], progress=False)
    row = {"key": key, **{k: point[k] for k in POINT_COLUMNS}}
    if point["stage"] == "qat":
        try:
            fit(
                model,
                train,
                test,
                qat,
                seed=point["seed"],
                mode="recurrent",
                eval_batch=recipe.eval.batch_size,
                desc=f"QAT {point['id']}",
                progress=False,
                section="qat",
            )
        except Diverged as err:
            write_json(done, {**row, "failed": str(err)})
            return {**row, "failed": str(err)}
    accuracy = evaluate(model, test, recipe.eval.batch_size, "recurrent")["accuracy"]
    fp = footprint(model, table, float_params)
    row.update(
        accuracy=round(accuracy, 6),
        **{k: fp[k] for k in FOOTPRINT_COLUMNS},
        reduction=round(fp["reduction"], 4),
    )
    write_json(done, row)
    return row


def run_points(
    sweep_dir: Path,
    todo: list[dict],
    workers: int,
    executor: str,
    address: str | None,
    progress: bool,
) -> list[dict]:
    bar = tqdm(total=len(todo), desc="sweep", disable=None if progress else True)
    rows = []
    if executor == "ray":
        rows = _run_ray(sweep_dir, todo, address, bar)
    elif workers > 1:
        ctx = get_context("spawn")
        with ProcessPoolExecutor(
            workers, mp_context=ctx, initializer=torch.set_num_threads, initargs=(1,)
        ) as pool:
            for row in pool.map(run_point, [str(sweep_dir)] * len(todo), todo):
                rows.append(row)
                bar.update()
    else:
        for p in todo:
            rows.append(run_point(str(sweep_dir), p))
            bar.update()
    bar.close()
    return rows


@contextlib.contextmanager
def one_thread():
    """Torch on one thread inside: a sweep's rows (its float model included) do not depend on
    the machine's core count.  Float rounding differs between thread counts, and a model with
    binary comparator outputs turns that into points of accuracy; workers run on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _run_ray(sweep_dir: Path, todo: list[dict], address: str | None, bar) -> list[dict]:
    with ray_session(address) as ray:
        task = ray.remote(num_cpus=1)(run_point)
        pending = [task.remote(str(sweep_dir), p) for p in todo]
        rows = []
        while pending:
            ready, pending = ray.wait(pending)
            rows += ray.get(ready)
            bar.update(len(ready))
        return rows


def to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, COLUMNS, lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    w.writerows(sorted(rows, key=lambda r: r["id"]))
    return buf.getvalue()


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def compare(rows: list[dict], golden: list[dict], tolerance: float) -> list[str]:
    """Readable differences between a sweep and a golden table; empty when within tolerance."""
    new, old = {r["id"]: r for r in rows}, {r["id"]: r for r in golden}
    problems = [
        f"missing point {i} (in the golden table, not in this sweep)"
        for i in old.keys() - new.keys()
    ]
    problems += [f"extra point {i} (not in the golden table)" for i in new.keys() - old.keys()]
    for i in sorted(new.keys() & old.keys()):
        a, b = float(new[i]["accuracy"]), float(old[i]["accuracy"])
        if abs(a - b) > tolerance:
            problems.append(
                f"{i}: accuracy {a:.4f}, golden {b:.4f} (moved {a - b:+.4f}, "
                f"tolerance ±{tolerance})"
            )
        for k in FOOTPRINT_COLUMNS:
            if int(float(new[i][k])) != int(float(old[i][k])):
                problems.append(f"{i}: {k} {new[i][k]}, golden {old[i][k]} (must not change)")
    return sorted(problems)


def sweep(
    recipe: Recipe,
    sweep_dir: Path,
    workers: int = 1,
    executor: str = "local",
    address: str | None = None,
    progress: bool = True,
) -> tuple[list[dict], list[dict]]:
    """Run (or resume) every point; write results.csv and the tables and plots of the finished
    ones.  Returns (finished rows, failed rows)."""
    write_json(sweep_dir / "recipe.json", recipe.model_dump(mode="json"))
    todo = points(recipe)
    rows = run_points(sweep_dir, todo, workers, executor, address, progress)
    failed = [r for r in rows if "failed" in r]
    rows = [r for r in rows if "failed" not in r]
    atomic_write(sweep_dir / "results.csv", to_csv(rows))
    write_sweep_report(sweep_dir, recipe, rows)
    return rows, failed
