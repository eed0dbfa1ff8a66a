"""The ``qssm`` command line."""

import argparse
import contextlib
import importlib.util
import inspect
import json
import signal
import sys
import textwrap
import warnings
from pathlib import Path

import torch

from hwmap.hwaware import hardware_noise
from hwmap.lower import LoweringError, lower
from hwmap.mapping import MappingError, check_mappable, map_graph
from hwmap.spice import SpiceError
from hwmap.targets import TargetError, load_target

from .data import DataError
from .io import (
    CheckpointError,
    Interrupted,
    interruptible_between_writes,
    provenance,
    read_json,
    write_json,
)
from .quant.calibrate import CalibrationError
from .recipe import RecipeError, load_recipe, shipped_recipes
from .runs import (
    Hardware,
    RunError,
    check_memory,
    check_quant,
    eval_run,
    float_source,
    float_stage,
    load_data,
    make_model,
    open_run,
    quantize_run,
    run_lock,
    train_run,
)
from .search import calibrated, search
from .sweep import check_points, compare, one_thread, read_csv, sweep
from .train import Diverged
from .version import __version__

USER_ERRORS = (
    RecipeError,
    CalibrationError,
    RunError,
    CheckpointError,
    DataError,
    LoweringError,
    MappingError,
    TargetError,
    SpiceError,
    OSError,  # a file that cannot be written (io.WriteError names it) or read
)


# hardware-aware QAT: qat.hardware targets and their analog noise come from hwmap
HARDWARE = Hardware(check=lambda cfg: load_target(cfg.target), noise=hardware_noise)


class Regression(Exception):
    """A sweep that moved away from its golden table (exit status 1)."""


class CheckFailed(Exception):
    """An export whose verification chain missed a threshold (exit status 1)."""


def _gated(run, args, **kw) -> dict:
    """``hwmap.export``'s ``run`` on the RUN_DIR, --out, --limit, --quiet and --keep-failed of
    ``_hw_args``, plus ``kw``; a failed check is exit 1."""
    from hwmap.verify import VerifyError

    run_dir, out = Path(args.run_dir), Path(args.out) if args.out else None
    if run_dir.is_dir():  # one writer: not while the run is trained or exported elsewhere
        args.hold(run_lock(run_dir))
    kw.update(run_dir=run_dir, out=out, limit=args.limit)
    try:
        return run(**kw, keep_failed=args.keep_failed, progress=not args.quiet)
    except VerifyError as err:
        kept = "its files are in" if args.keep_failed else "--keep-failed keeps its files; see"
        name = "verify.json" if args.keep_failed else "verify.failed.json"
        raise CheckFailed(f"{err} ({kept} {out or run_dir / 'hw'}/{name})") from None


def _out(args, recipe) -> Path:
    return Path(args.out) if args.out else Path("runs") / recipe.name


def _prepare(args, quant: bool = True, check=None):
    """Load and check every input — recipe, quant section against the model, ``check(args,
    recipe)``, the float source, the data — and only then open the run dir, so bad input touches
    nothing.  Returns (recipe, data, run dir, float source or None)."""
    recipe = load_recipe(args.recipe)
    if quant:
        check_quant(recipe, args.recipe, HARDWARE)
    if check is not None:
        check(args, recipe)
    data = load_data(recipe)
    source = getattr(args, "from_run", None) or recipe.float.checkpoint
    if source:
        float_source(recipe, source, data)
    check_memory(recipe, data, quant, args.recipe)
    out = _out(args, recipe)
    args.hold(run_lock(out))
    return recipe, data, open_run(out, recipe, args.force), source


def cmd_train(args) -> dict:
    """Seeded float training with evaluation every epoch and a cosine schedule. An interrupted run
    resumes from its last epoch when run again."""
    recipe, data, out, _ = _prepare(args, quant=False)
    metrics = train_run(recipe, data, out, progress=not args.quiet)
    print(f"float test accuracy {100 * metrics['float']['accuracy']:.2f} % → {out}/report.md")
    return metrics


def cmd_quantize(args) -> dict:
    """Float pre-training (or --from a finished float run), post-training quantization (Brevitas
    calibration) and evaluation, then quantization-aware training in recurrent mode with the state
    quantized every step. Writes model files, report.md with accuracy, per-role bits and footprint,
    and metrics.json."""
    recipe, data, out, source = _prepare(args)
    m = quantize_run(recipe, data, out, source, progress=not args.quiet, hardware=HARDWARE)
    stages = ", ".join(
        f"{k} {100 * m[k]['accuracy']:.2f} %" for k in ("float", "ptq", "qat") if k in m
    )
    print(f"{stages}; footprint {m['footprint']['reduction']:.2f}× smaller → {out}/report.md")
    return m


def _check_ray(args) -> None:
    """--executor ray needs Ray installed."""
    if args.executor == "ray" and importlib.util.find_spec("ray") is None:
        raise RunError("--executor ray needs Ray: pip install 'qssm[ray]'")


def _check_sweep(args, recipe) -> None:
    if recipe.sweep is None:
        raise RecipeError(f"{args.recipe}: no `sweep` section; see recipes/sweeps/")
    check_points(recipe, args.recipe)
    if args.check and not Path(args.check).is_file():
        raise RunError(f"--check {args.check}: no such golden table")
    _check_ray(args)


SEARCH_KEYS = ("budget_kib", "budget_reduction", "bits", "act_bits", "short_epochs")


def _search_record(args) -> dict:
    """What a search's points depend on; another value in the same run dir needs --force."""
    record = {k: getattr(args, k) for k in SEARCH_KEYS}
    if args.target:  # (absent from the records of searches without a target)
        record |= {"target": args.target, "area_budget_mm2": args.area_budget_mm2}
    return record | {"bits": sorted(set(args.bits)), "act_bits": sorted(set(args.act_bits))}


def _chip(target):
    """The search's ``chip``: a calibrated quantized model → its capacitor area and capacitance
    on ``target``, as `qssm map-to-hw` maps it (MappingError: the target cannot map it)."""

    def chip(model) -> dict:
        with warnings.catch_warnings():  # a starved gate LSB: map-to-hw's report says so
            warnings.simplefilter("ignore")
            t = map_graph(lower(model), target)["totals"]
        return {"area_mm2": t["area_mm2"], "capacitance_pf": t["capacitance_pf"]}

    return chip


def _check_target(args, recipe) -> None:
    """--target and --area-budget-mm2: the target loads, and the recipe's model family maps
    onto it (checked on an untrained model of the recipe, before anything is written)."""
    if args.area_budget_mm2 is not None and not args.target:
        raise RunError("--area-budget-mm2 needs --target (the chip whose capacitor area it bounds)")
    if args.area_budget_mm2 is not None and args.area_budget_mm2 <= 0:
        raise RunError("--area-budget-mm2 must be positive")
    if not args.target:
        return
    target = load_target(args.target)
    untrained = make_model(recipe.model_dict(), 1, 2)
    model, _ = calibrated(untrained, recipe.quant.model_dump(), torch.zeros(2, 4, 1))
    try:
        check_mappable(lower(model), target)
    except (MappingError, LoweringError) as err:
        raise RunError(f"--target {args.target}: {err}") from None


def _check_search(args, recipe) -> None:
    if any(b < 1 or b > 32 for b in args.bits) or len(set(args.bits)) < 2:
        raise RunError("--bits: give at least two bit-widths in 1..32")
    if any(b < 1 or b > 32 for b in args.act_bits):
        raise RunError("--act-bits: bit-widths in 1..32 (or none: keep the recipe's)")
    memory = args.budget_kib is not None or args.budget_reduction is not None
    if not memory and args.area_budget_mm2 is None:
        raise RunError(
            "give a budget: --budget-kib or --budget-reduction (memory), --area-budget-mm2 "
            "with --target (capacitor area), or both"
        )
    if memory and (args.budget_kib or args.budget_reduction or 0) <= 0:
        raise RunError("the budget must be positive")
    _check_target(args, recipe)
    for name in ("evaluations", "population", "short_epochs"):
        if getattr(args, name) < 1:
            raise RunError(f"--{name.replace('_', '-')} must be at least 1")
    if args.finalists < 0:
        raise RunError("--finalists must not be negative (0: the best estimate is chosen)")
    if args.validate < 0 or (args.validate_epochs or 1) < 1:
        raise RunError("--validate and --validate-epochs must not be negative (epochs ≥ 1)")
    _check_ray(args)
    old = _out(args, recipe) / "search.json"
    if old.exists() and not args.force and read_json(old) != _search_record(args):
        raise RunError(
            f"{old.parent} holds a search with another budget, --bits, --act-bits or "
            "--short-epochs; pass --force to start over, or --out DIR"
        )


def cmd_sweep(args) -> dict:
    """Runs the grid of the recipe's `sweep` section on one float model and writes results.csv,
    report.md and plots into the run dir. An interrupted sweep resumes without recomputing finished
    points. With --check GOLDEN.csv it exits 1 when an accuracy moved by more than sweep.tolerance
    or a footprint changed, printing the differences."""
    recipe, data, out, source = _prepare(args, check=_check_sweep)
    with one_thread():
        model, float_metrics = float_stage(recipe, data, out, source, "float", not args.quiet)
        rows, failed = sweep(recipe, out, args.workers, args.executor, args.address, not args.quiet)
    result = {
        "recipe": recipe.name,
        "float": float_metrics,
        "points": len(rows),
        "results": str(out / "results.csv"),
        "failed": {r["id"]: r["failed"] for r in failed},
        "provenance": provenance(data.preprocessing),
    }
    write_json(out / "metrics.json", result)
    print(f"{len(rows)} points → {out}/results.csv, {out}/report.md")
    for r in failed:
        print(f"point {r['id']} failed: {r['failed']}")
    if args.check:
        problems = compare(rows, read_csv(Path(args.check)), recipe.sweep.tolerance)
        result["check"] = {"golden": args.check, "problems": problems}
        if problems:
            print(f"REGRESSION against {args.check}:", *problems, sep="\n  ")
            raise Regression(result)
        print(f"matches {args.check} (accuracy within ±{recipe.sweep.tolerance}, footprints equal)")
    if failed:
        raise Diverged(
            f"{len(failed)} of {len(rows) + len(failed)} sweep points diverged (listed above and "
            f"in {out}/metrics.json); the others are in {out}/results.csv"
        )
    return result


def cmd_search(args) -> dict:
    """Searches bits per stored role and the structural choices (S4D fold_b, state scale
    granularity, scale storage, activation bits) under a memory budget, a capacitor-area budget
    on a switched-capacitor target (hardware families: mingru_hw, mgrade_hw, s4d_real), or both,
    with QAT in the loop: a regularized evolution over the configurations that fill the budgets,
    each scored by a short QAT on a held-out tenth of the training split; the best finalists get
    a longer QAT; the winner gets PTQ and QAT like `qssm quantize` and is reported on the test
    split. With --target only configurations the target maps are searched; the area of each is
    that of its calibrated model mapped as `qssm map-to-hw` maps it (the weight and gate
    capacitor arrays grow like 2^bits; the digital parts — encoder, delay taps, decoder, biases
    — take no capacitor area, so an area budget alone gives them the widest bits: add a memory
    budget to bound them). The report has the chosen configuration, every evaluated one and the
    accuracy-footprint (or accuracy-area) plot."""
    recipe, data, out, source = _prepare(args, check=_check_search)
    write_json(out / "search.json", _search_record(args))
    opts = {
        k: getattr(args, k)
        for k in (
            "bits",
            "act_bits",
            "evaluations",
            "population",
            "short_epochs",
            "finalists",
            "validate",
            "workers",
            "executor",
            "address",
        )
    }
    opts |= {
        "validate_epochs": args.validate_epochs or recipe.qat.epochs,
        "progress": not args.quiet,
    }
    with one_thread():
        float_stage(recipe, data, out, source, "float", not args.quiet)
        try:
            target = load_target(args.target) if args.target else None
            chip = _chip(target) if target else None
            budgets = (args.budget_kib, args.budget_reduction, opts, chip, args.area_budget_mm2)
            chosen, record = search(recipe, out, *budgets)
        except ValueError as err:
            raise RunError(f"search: {err}") from None
    if target is not None:
        record["area"]["target"] = target.name
    area = f", {record['area']['chosen']['area_mm2']:.6f} mm²" if target else ""
    print(f"chosen: {record['chosen']} ({record['predicted_total_bits']:,} bits{area})")
    if record.get("validation"):
        v = record["validation"]
        print(
            f"estimate vs {v['epochs']}-epoch QAT on {len(v['configs'])} configurations: "
            f"Spearman {v['spearman_estimate']:.3f} (PTQ accuracy: {v['spearman_ptq']:.3f})"
        )
    m = quantize_run(
        chosen, data, out, progress=not args.quiet, extra={"search": record}, hardware=HARDWARE
    )
    stage = "qat" if "qat" in m else "ptq"
    print(
        f"{stage.upper()} {100 * m[stage]['accuracy']:.2f} % at "
        f"{m['footprint']['total_bits'] / 8192:.2f} KiB "
        f"({m['footprint']['reduction']:.2f}× smaller than float32) → {out}/report.md"
    )
    return m


def cmd_eval(args) -> dict:
    """Rebuilds a finished run's model from its files alone (model.safetensors + model.json,
    recipe.yaml) and evaluates it on the recipe's test split, beside the stored accuracy.  With
    --neurobench, also NeuroBench's footprint, connection sparsity, activation sparsity and
    synaptic operations of the float and quantized models (docs/quantization.md, "NeuroBench")."""
    if args.limit is not None and not args.neurobench:
        raise RunError("--limit goes with --neurobench (the accuracy is always on the whole split)")
    r = eval_run(Path(args.run_dir))
    print(
        f"{r['recipe']} ({r['stage']}): test accuracy {100 * r['accuracy']:.2f} % "
        f"(stored: {100 * r['stored_accuracy']:.2f} %)"
    )
    if args.neurobench:  # with --neurobench: NeuroBench's metrics, recorded in the run dir
        from .neurobench import measure_run, record

        run_dir = Path(args.run_dir)
        args.hold(run_lock(run_dir))
        r["neurobench"] = measure_run(run_dir, args.limit)
        record(run_dir, r["neurobench"])
        for stage, m in r["neurobench"]["models"].items():
            ops = m["synaptic_operations"]
            print(
                f"NeuroBench {stage}: footprint {m['footprint_bytes']:,} bytes, connection "
                f"sparsity {m['connection_sparsity']:.4f}, activation sparsity "
                f"{m['activation_sparsity']:.4f}, {ops['dense']:,.0f} dense synaptic ops, "
                f"{ops['effective_macs']:,.0f} MACs + {ops['effective_acs']:,.0f} ACs per sample"
            )
        print(f"→ {run_dir}/neurobench.json, metrics.json, report.md")
    return r


def cmd_export(args) -> dict:
    """Lowers a quantized run to an integer graph (graph.json + graph.npz: codes, fixed-point
    multipliers and shifts, lookup tables), writes ONNX files that onnxruntime runs (qcdq: step.onnx
    for streaming and sequence.onnx, a Scan around the same step; qonnx: step_qonnx.onnx with Quant
    nodes) and verify.json: Brevitas fake-quant vs the integer reference, onnxruntime vs the integer
    reference, and the streamed step graph vs the sequence graph, on the recipe's test split.  A
    check that misses its threshold exits 1 and leaves earlier files as they were."""
    from hwmap.export import export_run  # onnx and onnxruntime load only when exporting

    r = _gated(export_run, args, fmt=args.format)
    out = Path(args.out) if args.out else Path(args.run_dir) / "hw"
    fq, ox, st = r["fakequant_vs_intref"], r["onnx_vs_intref"], r["step_vs_sequence"]
    print(
        f"fake-quant vs intref: {100 * fq['prediction_agreement']:.2f} % same predictions, "
        f"codes within {fq['max_code_diff']} LSB per op; onnxruntime vs intref: "
        f"{100 * ox['code_agreement']:.2f} % identical codes; step vs sequence graph: "
        f"{100 * st['code_agreement']:.2f} % → {out}/verify.json"
    )
    return r


def cmd_map(args) -> dict:
    """Everything `qssm export` writes, plus: the mapping onto the target (mapping.json, arrays.npz:
    differential unit-capacitor counts with dummies, comparator thresholds in volts and DAC codes,
    gate code → switched units, retention units; capacitance, area, energy per timestep), the
    charge-domain simulator with every non-ideality off checked against the integer reference, and a
    Monte-Carlo over chips with every non-ideality on (the nominal chip), swept over unit
    capacitance, residual comparator offset and comparator noise, with an ablation (each effect
    alone on, alone off) — chip batches in --workers processes or as Ray tasks (--executor ray),
    per-setting results in OUT/monte_carlo/ (a rerun resumes after the last batch), report.md,
    monte_carlo.png; with --spice, ngspice netlists of each layer's MAC column, comparator
    threshold and state bank compared with the behavioural formulas (spice.json, spice/*.cir).
    Models the target cannot run are refused with the reason and the recipe change that fixes
    it; a verification check that misses its threshold exits 1."""
    from hwmap.export import map_run
    from hwmap.montecarlo import MonteCarloError

    if args.workers < 1:
        raise RunError("--workers must be at least 1")
    _check_ray(args)
    try:
        r = _gated(
            map_run,
            args,
            target_path=args.target,
            mc_seeds=args.mc_seeds,
            mc_limit=args.mc_limit,
            units=args.mc_units,
            offsets=args.mc_offsets,
            noises=args.mc_noises,
            ablation=not args.no_mc_ablation,
            with_spice=args.spice,
            workers=args.workers,
            executor=args.executor,
            address=args.address,
        )
    except MonteCarloError as err:  # finished chip batches stay: a rerun resumes after them
        raise CheckFailed(str(err)) from None
    t, ideal = r["mapping"]["totals"], r["verify"]["sim_ideal_vs_intref"]
    print(
        f"{t['capacitance_pf']:.1f} pF, {t['area_mm2']:.4f} mm², "
        f"{t['energy_per_step_pj']:.1f} pJ per timestep; ideal simulator vs intref: "
        f"{100 * ideal['decision_agreement']:.2f} % identical decisions"
    )
    for row in r["verify"].get("monte_carlo", []):
        print(
            f"  {row['id']}: {100 * row['mean']:.2f} ± {100 * row['std']:.2f} % over "
            f"{row['chips']} chips × {row['sequences']} sequences (integer model "
            f"{100 * row['ideal']:.2f} %; {100 * row['yield_4']:.0f} % of chips within 4 points)"
        )
    for p in (r["spice"] or {}).get("pieces", []):
        print(
            f"  ngspice {p['layer']} {p['piece']}{' (mismatch)' * p['mismatch']}: "
            f"{p['max_diff_mv']:.4f} mV = {p['max_diff_lsb']:.3g} LSB at most"
        )
    print(f"→ {args.out or Path(args.run_dir) / 'hw'}/report.md")
    return r


def cmd_recipes(args) -> dict:
    """Lists the recipes shipped with qssm by the name `--recipe` takes, from any folder (a
    recipe file of your own is given by its path)."""
    found = {}
    for name, path in shipped_recipes().items():
        try:
            r = load_recipe(path)
            found[name] = f"{r.model.family} on {r.data.name}"
        except RecipeError as err:
            found[name] = f"INVALID: {err}"
    for name, what in found.items():
        print(f"{name:30s} {what}")
    return found


def _json_flag(p: argparse.ArgumentParser, default) -> None:
    """--json, before the command or after it (``default`` SUPPRESS: the command's copy does not
    reset the flag given before it)."""
    p.add_argument(
        "--json",
        action="store_true",
        default=default,
        help="print the result dictionary as JSON on stdout",
    )


def _command(sub, name: str, func, help: str, example: str) -> argparse.ArgumentParser:
    """Subcommand ``name``, run by ``func``, described by its docstring, with an example."""
    p = sub.add_parser(
        name,
        help=help,
        description=inspect.cleandoc(func.__doc__),
        epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _json_flag(p, argparse.SUPPRESS)
    p.set_defaults(func=func)
    return p


def _run_args(p: argparse.ArgumentParser, recipe_help: str, from_run: bool = True) -> None:
    """The arguments every command that fills a run dir takes."""
    p.add_argument("--recipe", required=True, help=recipe_help)
    if from_run:
        p.add_argument(
            "--from",
            dest="from_run",
            metavar="RUN_DIR",
            help="reuse the float model of a finished run instead of training one",
        )
    p.add_argument("--out", help="run dir (default runs/<recipe name>)")
    p.add_argument("--force", action="store_true", help="overwrite a finished run dir")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _pool_args(p: argparse.ArgumentParser, units: str) -> None:
    """--workers, --executor and --address: where the ``units`` of a command run."""
    p.add_argument("--workers", type=int, default=1, help=f"{units} in parallel processes")
    p.add_argument(
        "--executor",
        choices=["local", "ray"],
        default="local",
        help=f"ray: run {units} as Ray tasks (pip install 'qssm[ray]')",
    )
    p.add_argument("--address", help="Ray cluster address (default: start a local Ray)")


def _hw_args(p: argparse.ArgumentParser) -> None:
    """The arguments of the commands that write RUN_DIR/hw (export, map-to-hw)."""
    p.add_argument("run_dir", help="a run dir written by `qssm quantize`")
    p.add_argument("--out", help="output dir (default RUN_DIR/hw)")
    p.add_argument("--limit", type=int, help="verify on the first N test sequences only")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--keep-failed",
        action="store_true",
        help="when a verification check fails (exit 1), still write the files (for debugging)",
    )


EXIT_STATUS = (
    "exit status: 0 done; 1 `sweep --check` regression or a failed verification check of export "
    "/ map-to-hw; 2 bad input (recipe, run dir in use by another process, a size that cannot fit "
    "in memory, a file that cannot be written), one line naming the key or file; 3 a training "
    "stage diverged (non-finite loss or parameter: lower lr or set grad_clip; the last good "
    "checkpoint is kept, no metrics.json); 130 / 143 interrupted by SIGINT / SIGTERM (run the "
    "same command again to resume)."
)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="qssm",
        description="Quantize small sequence models (S4D, minGRU, mGRADE) per component and map "
        "them to switched-capacitor in-memory computing. One recipe file drives a run; "
        "every stage writes its artifacts into a run dir (default runs/<recipe name>).",
        epilog=textwrap.fill(EXIT_STATUS, 90)
        + "\n\nexample:\n  qssm quantize --recipe hetero_4_8 && qssm eval runs/hetero_4_8 --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"qssm {__version__}")
    _json_flag(p, False)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = _command(
        sub,
        "train",
        cmd_train,
        "float training of the recipe's model",
        "qssm train --recipe fp32_s4d_smnist5k",
    )
    _run_args(t, "recipe YAML (see `qssm recipes`)", from_run=False)

    q = _command(
        sub,
        "quantize",
        cmd_quantize,
        "float pre-training, PTQ and QAT of the recipe's model, with a report",
        "qssm quantize --recipe hetero_4_8 --from runs/fp32_s4d_smnist5k",
    )
    _run_args(q, "recipe YAML with a `quant` section")

    e = _command(
        sub,
        "eval",
        cmd_eval,
        "re-evaluate a finished run from its saved files",
        "qssm eval runs/hetero_4_8 --json\n  qssm eval runs/hetero_4_8 --neurobench",
    )
    e.add_argument("run_dir")
    e.add_argument(
        "--neurobench",
        action="store_true",
        help="also NeuroBench's metrics of the float and quantized models (the neurobench "
        "package) into RUN_DIR/neurobench.json, metrics.json and report.md",
    )
    e.add_argument("--limit", type=int, help="NeuroBench on the first N test sequences only")

    s = _command(
        sub,
        "sweep",
        cmd_sweep,
        "bit-accuracy tables: per-role sensitivity, uniform bits, Pareto front",
        "qssm sweep --recipe sweeps/sdigits_s4d --check tests/golden/sdigits_s4d.csv",
    )
    _run_args(s, "recipe YAML with `quant` and `sweep` sections")
    _pool_args(s, "points")
    s.add_argument("--check", metavar="GOLDEN_CSV", help="compare with a golden results table")

    h = _command(
        sub,
        "search",
        cmd_search,
        "choose bits per role under a memory budget, then QAT",
        "qssm search --recipe hetero_4_8 --budget-reduction 8 --from runs/fp32_s4d_smnist5k",
    )
    _run_args(h, "recipe YAML with a `quant` section")
    budget = h.add_mutually_exclusive_group()
    budget.add_argument("--budget-kib", type=float, help="parameters + state budget in KiB")
    budget.add_argument(
        "--budget-reduction",
        type=float,
        metavar="R",
        help="budget as float32 footprint / R (e.g. 8)",
    )
    h.add_argument(
        "--target",
        help="switched-capacitor target (YAML, or minimalist_like / generic_28nm): search only "
        "configurations it maps, and report their capacitor area",
    )
    h.add_argument(
        "--area-budget-mm2",
        type=float,
        metavar="MM2",
        help="capacitor area budget on --target in mm², alone or with a memory budget (e.g. "
        "`--recipe mgrade_hw --from runs/mghw_64 --target generic_28nm --area-budget-mm2 0.06 "
        "--budget-reduction 8.49`; `qssm map-to-hw RUN --target T` prints a run's area)",
    )
    h.add_argument(
        "--bits",
        type=int,
        nargs="+",
        default=[2, 3, 4, 5, 6, 8],
        help="candidate bit-widths of the stored roles (default 2 3 4 5 6 8)",
    )
    h.add_argument(
        "--act-bits",
        type=int,
        nargs="*",
        default=[4, 8],
        help="candidate activation bit-widths (default 4 8; none: the recipe's)",
    )
    h.add_argument(
        "--evaluations", type=int, default=24, help="configurations scored by a short QAT"
    )
    h.add_argument("--population", type=int, default=12, help="first generation's size")
    h.add_argument("--short-epochs", type=int, default=2, help="QAT epochs of the estimate")
    h.add_argument(
        "--finalists",
        type=int,
        default=3,
        help="best estimates given 3× the QAT epochs (0: the best estimate is chosen)",
    )
    h.add_argument(
        "--validate",
        type=int,
        default=0,
        metavar="N",
        help="also train N evaluated configurations with the full QAT and report the rank "
        "correlation of the estimate against it",
    )
    h.add_argument(
        "--validate-epochs", type=int, help="QAT epochs of --validate (default: qat.epochs)"
    )
    _pool_args(h, "points")

    x = _command(
        sub,
        "export",
        cmd_export,
        "integer graph, ONNX files and verification of a quantized run",
        "qssm export runs/hetero_4_8",
    )
    _hw_args(x)
    x.add_argument("--format", choices=["qcdq", "qonnx"], default="qcdq", help="ONNX flavour")

    m = _command(
        sub,
        "map-to-hw",
        cmd_map,
        "map a quantized run onto a switched-capacitor IMC target and simulate it",
        "qssm map-to-hw runs/minimalist --target minimalist_like",
    )
    _hw_args(m)
    m.add_argument(
        "--target",
        required=True,
        help="target YAML, or the name of a shipped one (minimalist_like, generic_28nm)",
    )
    m.add_argument(
        "--mc-seeds", type=int, default=50, help="chips per Monte-Carlo setting (0: none)"
    )
    m.add_argument(
        "--mc-limit", type=int, help="test sequences per Monte-Carlo setting (default: all)"
    )
    for flag, default, swept in (  # the Monte-Carlo grid (empty: no such sweep)
        ("--mc-units", [0.5, 1.0, 2.0, 4.0], "unit capacitances (fF)"),
        ("--mc-offsets", [0.03, 0.1, 0.3, 1.0], "residual comparator offsets σ (mV)"),
        ("--mc-noises", [0.1, 0.25, 0.5, 1.0], "comparator noise σ (mV)"),
    ):
        m.add_argument(flag, type=float, nargs="*", default=default, help=f"{swept} swept")
    m.add_argument(
        "--no-mc-ablation", action="store_true", help="skip the ablation (each effect alone)"
    )
    _pool_args(m, "chip batches")
    m.add_argument(
        "--spice",
        action="store_true",
        help="cross-check a MAC column, a threshold and a state bank per layer in ngspice "
        "(spice.json, netlists in spice/)",
    )

    _command(sub, "recipes", cmd_recipes, "list the shipped recipes", "qssm recipes")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:  # with --json, stdout carries only the JSON; messages go to stderr
        with (
            contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext(),
            interruptible_between_writes(),
            contextlib.ExitStack() as held,  # the run dir's lock, until the command ends
        ):
            args.hold = held.enter_context
            result = args.func(args)
    except USER_ERRORS as err:
        print(f"qssm: error: {err}", file=sys.stderr)
        return 2
    except Diverged as err:
        print(f"qssm: error: {err}", file=sys.stderr)
        return 3
    except Interrupted as err:
        name = signal.Signals(err.signum).name
        print(
            f"qssm: interrupted ({name}) with every file written so far complete; run the same "
            "command again to resume",
            file=sys.stderr,
        )
        return 128 + err.signum
    except Regression as err:
        if args.json:
            print(json.dumps(err.args[0], indent=2))
        return 1
    except CheckFailed as err:
        print(f"qssm: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("qssm: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
