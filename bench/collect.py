"""Turn finished run dirs into committed result files.

    python bench/collect.py RUN_DIR [RUN_DIR ...] [--results bench/results]

For a run of ``qssm quantize`` / ``qssm search`` / ``qssm train`` (a dir with ``metrics.json``)
this writes ``bench/results/runs/<run dir name>.json``: the recipe name, the dataset and model
family (from the run's ``recipe.yaml``), the accuracy of each stage, the footprint, the wall time
of each stage and in all (as the run recorded them), the ``search`` record if there is one, and,
when the run dir holds ``hw/verify.json`` (``qssm export`` / ``qssm map-to-hw``), its
verification figures (per-site tables and per-chip accuracies left out), and with
``hw/mapping.json`` (``qssm map-to-hw``) the mapping's totals (capacitance, area, energy).

For a run of ``qssm sweep`` (a dir with ``results.csv``) it writes
``bench/results/sweeps/<run dir name>.json``: the rows of ``results.csv``.

With ``--neurobench`` it writes only ``bench/results/neurobench/<run dir name>.json``: the run's
``neurobench.json`` (``qssm eval RUN_DIR --neurobench``), NeuroBench's figures beside qssm's
footprint.

Every file carries ``provenance``: when and at which git commit it was collected, when the run
finished (``metrics.json``'s / ``results.csv``'s modification time), the command line and (run
files) the machine it was collected on.  The
run dir itself records no commit, so collect right after the run, from the same checkout.
Files are written atomically.  ``python bench/render_docs.py`` renders them into the docs.
"""

import argparse
import csv
import datetime
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import ROOT, command_line, git_commit, machine, now, write_json_atomic  # noqa: E402

RESULTS = ROOT / "bench" / "results"
# verify.json fields too large for a committed summary
DROP = {"forced_per_site", "free_running_per_site", "accuracies"}


class CollectError(Exception):
    pass


def _mtime(path: Path) -> str:
    t = datetime.datetime.fromtimestamp(path.stat().st_mtime, datetime.timezone.utc)
    return t.replace(microsecond=0).isoformat()


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise CollectError(f"{path}: cannot read it as JSON ({err})") from None


def _recipe_info(run: Path) -> dict:
    """Dataset name and model family from the run's recipe.yaml (None where unreadable)."""
    info = {"data": None, "family": None}
    try:
        import yaml

        recipe = yaml.safe_load((run / "recipe.yaml").read_text()) or {}
    except Exception:  # noqa: BLE001  (the summary does without it)
        return info
    info["data"] = (recipe.get("data") or {}).get("name", "smnist5k")
    info["family"] = (recipe.get("model") or {}).get("family")
    return info


def _prune(obj):
    if isinstance(obj, dict):
        return {k: _prune(v) for k, v in obj.items() if k not in DROP}
    if isinstance(obj, list):
        return [_prune(v) for v in obj]
    return obj


def _stage(metrics: dict, name: str) -> dict | None:
    stage = metrics.get(name)
    if not isinstance(stage, dict):
        return None
    out = {"accuracy": stage.get("accuracy")}
    history = stage.get("history") or []
    if name != "ptq":
        out["epochs"] = stage.get("epochs", len(history) or None)
    if name == "float":
        out["params"] = stage.get("params")
        out["source"] = stage.get("source")  # the --from run, when the float model was reused
        seconds = [h["seconds"] for h in history if "seconds" in h]
        # a reused float model's training time is not this run's
        out["seconds"] = sum(seconds) if seconds and not stage.get("source") else None
    else:
        out["seconds"] = stage.get("seconds")
    return out


def summarize_run(run: Path) -> dict:
    metrics = _read_json(run / "metrics.json")
    stages = {s: _stage(metrics, s) for s in ("float", "ptq", "qat")}
    stages = {k: v for k, v in stages.items() if v is not None}
    seconds = [v["seconds"] for v in stages.values()]
    result = {
        "run": run.name,
        "recipe": metrics.get("recipe"),
        **_recipe_info(run),
        **stages,
        # the stages' own recorded times (a float model reused with --from adds none)
        "wall_seconds": sum(s for s in seconds if s is not None) if seconds else None,
    }
    if "footprint" in metrics:
        result["footprint"] = metrics["footprint"]
    if "search" in metrics:
        result["search"] = metrics["search"]
    verify = run / "hw" / "verify.json"
    if verify.exists():
        result["verify"] = _prune(_read_json(verify))
    if (run / "hw" / "mapping.json").exists():
        result["mapping"] = _read_json(run / "hw" / "mapping.json")["totals"]
    written = _mtime(verify) if verify.exists() else None
    result["provenance"] = _provenance(run / "metrics.json", verify_written=written)
    return result


def _provenance(finished: Path, machine_too: bool = True, **written) -> dict:
    """When and at which commit a file was collected, when the run's ``finished`` file (and
    the ``written`` ones) were written, the command, and (``machine_too``) the machine of the
    collection: collect where the run ran."""
    out = {"collected": now(), **git_commit(), "run_finished": _mtime(finished), **written}
    out["command"] = command_line()
    return out | {"machine": machine()} if machine_too else out


def _number(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def summarize_sweep(run: Path) -> dict:
    with open(run / "results.csv", newline="") as f:
        rows = [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(f)]
    recipe = run / "recipe.json"
    name = _read_json(recipe).get("name") if recipe.exists() else None
    return {
        "run": run.name,
        "recipe": name,
        **_recipe_info(run),
        "rows": rows,
        "provenance": _provenance(run / "results.csv", machine_too=False),
    }


def summarize_neurobench(run: Path) -> dict:
    path = run / "neurobench.json"
    if not path.exists():
        raise CollectError(f"{run}: no neurobench.json; run `qssm eval {run} --neurobench` first")
    return {
        **_read_json(path),
        "provenance": _provenance(path),  # run_finished: the NeuroBench measurement
    }


def collect(run: Path, results: Path = RESULTS, neurobench: bool = False) -> Path:
    """Write the result file for one run dir; return its path."""
    run = Path(run)
    if neurobench:
        out = results / "neurobench" / f"{run.resolve().name}.json"
        write_json_atomic(out, summarize_neurobench(run))
    elif (run / "results.csv").exists():  # a sweep (its dir has a metrics.json too)
        out = results / "sweeps" / f"{run.resolve().name}.json"
        write_json_atomic(out, summarize_sweep(run))
    elif (run / "metrics.json").exists():
        out = results / "runs" / f"{run.resolve().name}.json"
        write_json_atomic(out, summarize_run(run))
    else:
        raise CollectError(
            f"{run}: not a finished run (no metrics.json) nor a finished sweep (no results.csv)"
        )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="finished run or sweep dirs")
    p.add_argument("--results", type=Path, default=RESULTS, help="default: bench/results")
    p.add_argument(
        "--neurobench", action="store_true", help="collect only the run's neurobench.json"
    )
    args = p.parse_args(argv)
    try:
        for run in args.runs:
            print(collect(run, args.results, args.neurobench))
    except CollectError as err:
        print(f"collect: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
