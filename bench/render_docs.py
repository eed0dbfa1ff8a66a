"""Render measured figures into the docs from the committed result files.

    python bench/render_docs.py           # rewrite the marked blocks (make docs)
    python bench/render_docs.py --check   # exit 1, naming each stale doc, if anything would change

A marked block in README.md or docs/*.md

    <!-- render: KIND [ARG ...] -->
    ...generated, do not edit...
    <!-- /render -->

is replaced by what KIND renders from the result files:

    KIND                 reads
    headline RUN ...     bench/results/runs/RUN.json       one line per run: stages, footprint
    accuracy [RUN ...]   bench/results/runs/*.json         accuracy per stage, stage time
    footprint [RUN ...]  bench/results/runs/*.json         bits: parameters, state, buffer, total
    roles RUN            bench/results/runs/RUN.json       footprint per role
    verify [RUN ...]     bench/results/runs/*.json         the verification chain (hw/verify.json)
    montecarlo [RUN ...] bench/results/runs/*.json         ideal simulator, Monte-Carlo over chips
    targets [GROUP ...]  runs/hetero_4_8.json, performance.json   targets (accuracy, speed)
    sweep NAME           bench/results/sweeps/NAME.json    per-role / uniform / Pareto tables
    golden NAME          tests/golden/NAME.csv             the same for a golden CI table
    bench                bench/results/performance.json    speed and memory per family
    threads FILE         performance.json, bench/results/FILE   one thread against two
    mcspeed              bench/results/montecarlo.json     Monte-Carlo throughput per run, workers
    mcbench              bench/results/performance.json    Monte-Carlo throughput per mapped family
    provenance FILE      bench/results/FILE                date, commit, machine, command

Without RUN arguments a block covers every committed run file.  A block whose file is missing
renders a line saying so and which command produces it; ``--check`` still compares it.
Standard library only.
"""

import argparse
import csv
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"<!-- render: (?P<spec>[^>]*?) -->\n(?P<body>.*?)<!-- /render -->", re.S)
BENCH_CMD = "OMP_NUM_THREADS=1 python bench/run.py --steps 9 --out bench/results/performance.json"


class RenderError(Exception):
    pass


# ----------------------------------------------------------------------------------- formatting


def pct(x) -> str:
    return "—" if x is None else f"{100 * x:.2f} %"


def fine(x) -> str:  # a fraction near 1, to a part in 10^7
    return "—" if x is None else f"{100 * x:.5f} %"


def num(x) -> str:
    return "—" if x is None else f"{x:,}"


def ratio(x) -> str:
    return "—" if x is None else f"{x:.2f}×"


def fixed(x, digits=1) -> str:
    return "—" if x is None else f"{x:,.{digits}f}"


def duration(s) -> str:
    if s is None:
        return "—"
    s = round(s)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def missing(what: str, command: str) -> str:
    return f"*No measurement committed yet for {what} — run {command}.*"


def run_command(run: str) -> str:
    return f"`qssm quantize --recipe recipes/{run}.yaml`, then `python bench/collect.py runs/{run}`"


def measured(prov: dict) -> str:
    """'`abc1234`, 2026-12-01, 2 cores' from a provenance record ('+': uncommitted changes)."""
    commit = (prov.get("commit") or "?")[:7] + ("+" if prov.get("dirty") else "")
    date = (prov.get("run_finished") or prov.get("date") or "?")[:10]
    cores = (prov.get("machine") or {}).get("cores")
    return f"`{commit}`, {date}" + (f", {cores} cores" if cores else "")


# ----------------------------------------------------------------------------------- result files


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise RenderError(f"{path}: not valid JSON ({err})") from None


def runs(root: Path, names: list[str]) -> tuple[list[dict], list[str]]:
    """(run files found, names asked for but missing).  No names: every committed run file."""
    folder = root / "bench" / "results" / "runs"
    if not names:
        return [read_json(p) for p in sorted(folder.glob("*.json"))], []
    found, absent = [], []
    for name in names:
        path = folder / f"{name}.json"
        if path.exists():
            found.append(read_json(path))
        else:
            absent.append(name)
    return found, absent


def with_missing(body: str | None, absent: list[str], command=run_command) -> str:
    parts = [body] if body else []
    parts += [missing(f"`{name}`", command(name)) for name in absent]
    if not parts:
        parts = [missing("any run", command("<run>"))]
    return "\n\n".join(parts)


# ----------------------------------------------------------------------------------- block kinds


def r_headline(root: Path, args: list[str]) -> str:
    found, absent = runs(root, args)
    lines = []
    for r in found:
        fp = r.get("footprint", {})
        stages = [f"float {pct(r.get('float', {}).get('accuracy'))}"]
        if "ptq" in r:
            stages.append(f"PTQ {pct(r['ptq']['accuracy'])}")
        if "qat" in r:
            stages.append(f"QAT {pct(r['qat']['accuracy'])} ({r['qat'].get('epochs')} epochs)")
        lines.append(
            f"- `{r['run']}`: {', '.join(stages)}; {num(fp.get('total_bits'))} bits, "
            f"{ratio(fp.get('reduction'))} less memory than float32; stages "
            f"{duration(r.get('wall_seconds'))} (measured at {measured(r['provenance'])})"
        )
    return with_missing("\n".join(lines), absent)


def r_accuracy(root: Path, args: list[str]) -> str:
    found, absent = runs(root, args)
    rows = []
    for r in found:
        qat = r.get("qat")
        float_ = r.get("float", {})
        rows.append(
            [
                f"`{r['run']}`",
                f"`{r.get('data')}`",
                pct(float_.get("accuracy")) + (" (`--from`)" if float_.get("source") else ""),
                pct(r.get("ptq", {}).get("accuracy")) if "ptq" in r else "—",
                f"{pct(qat['accuracy'])} ({qat.get('epochs')})" if qat else "—",
                duration(r.get("wall_seconds")),
                measured(r["provenance"]),
            ]
        )
    header = ["run", "data", "float", "PTQ", "QAT (epochs)", "stage time", "measured at"]
    return with_missing(table(header, rows) if rows else None, absent)


def r_footprint(root: Path, args: list[str]) -> str:
    found, absent = runs(root, args)
    rows = [
        [
            f"`{r['run']}`",
            num(fp.get("param_bits")),
            num(fp.get("state_bits")),
            num(fp.get("buffer_bits")),
            num(fp.get("total_bits")),
            num(fp.get("float32_bits")),
            f"**{ratio(fp.get('reduction'))}**",
        ]
        for r in found
        if (fp := r.get("footprint"))
    ]
    header = ["run", "parameters", "state", "buffer", "total", "float32", "reduction"]
    return with_missing(table(header, rows) if rows else None, absent)


def r_roles(root: Path, args: list[str]) -> str:
    if len(args) != 1:
        raise RenderError("roles takes one run name")
    found, absent = runs(root, args)
    rows = []
    for r in found:
        for role, e in r.get("footprint", {}).get("per_role", {}).items():
            bits = "/".join(str(b) for b in e.get("bits", []))
            rows.append([f"`{role}`", num(e.get("elements")), bits, num(e.get("bits_stored"))])
    header = ["role", "elements", "bits", "bits stored"]
    return with_missing(table(header, rows) if rows else None, absent)


def export_command(run: str) -> str:
    return f"`qssm export runs/{run}`, then `python bench/collect.py runs/{run}`"


def r_verify(root: Path, args: list[str]) -> str:
    found, absent = runs(root, args)
    rows = []
    for r in found:
        v = r.get("verify")
        if v is None:
            absent.append(r["run"])
            continue
        fq, ox, ss = (
            v.get(k, {}) for k in ("fakequant_vs_intref", "onnx_vs_intref", "step_vs_sequence")
        )
        rows.append(
            [
                f"`{r['run']}`",
                num(fq.get("sequences")),
                pct(fq.get("prediction_agreement")),
                num(fq.get("max_code_diff")),
                num(fq.get("free_running_max_code_diff")),
                pct(ox.get("code_agreement"))
                + {True: ", logits identical", False: ", logits differ"}.get(
                    ox.get("logits_identical"), ""
                ),
                pct(ss.get("code_agreement")),
                measured(
                    {**r["provenance"], "run_finished": r["provenance"].get("verify_written")}
                ),
            ]
        )
    header = [
        "run",
        "sequences",
        "fake-quant vs intref: predictions",
        "max code diff per op (forced)",
        "free-running max diff",
        "onnxruntime vs intref: codes",
        "step vs sequence: codes",
        "measured at",
    ]
    return with_missing(table(header, rows) if rows else None, absent, export_command)


def mapping_command(run: str) -> str:
    return (
        f"`qssm map-to-hw runs/{run} --target <target>`, then `python bench/collect.py runs/{run}`"
    )


def r_montecarlo(root: Path, args: list[str]) -> str:
    found, absent = runs(root, args)
    checks, rows = [], []
    for r in found:
        v = r.get("verify") or {}
        ideal = v.get("sim_ideal_vs_intref")
        if ideal is None:
            if args:
                absent.append(r["run"])
            continue
        checks.append(
            [
                f"`{r['run']}`",
                num(ideal.get("decisions")),
                *(fine(ideal.get(k)) for k in ("decision_agreement", "dac_agreement")),
                pct(ideal.get("prediction_agreement")),
            ]
        )
        for mc in v.get("monte_carlo", []):
            rows.append(
                [
                    f"`{r['run']}`",
                    f"`{mc.get('id')}`",
                    fixed(mc.get("unit_ff"), 2),
                    fixed(mc.get("residual_offset_mv"), 4),
                    fixed(mc.get("noise_mv"), 2),
                    f"{mc.get('chips')} × {num(mc.get('sequences'))}",
                    pct(mc.get("ideal")),
                    f"{pct(mc.get('mean'))} ± {pct(mc.get('std'))}",
                    f"{pct(mc.get('p5'))} / {pct(mc.get('p95'))}",
                    f"{pct(mc.get('yield_2'))} / {pct(mc.get('yield_4'))}",
                ]
            )
    if not checks and not absent:
        return missing("any mapped run", mapping_command("<run>"))
    parts = []
    if checks:
        head = ["run", "decisions", "exact thresholds", "threshold DAC on", "predictions"]
        parts.append("Ideal simulator vs the integer reference (forced per step):\n\n")
        parts.append(table(head, checks))
    if rows:
        head = ["run", "setting", "C_u (fF)", "residual offset (mV)", "noise (mV)"]
        head += ["chips × sequences", "integer model", "chips", "p5 / p95", "within 2 / 4 points"]
        parts.append("\n\nMonte-Carlo, every effect on unless the setting says otherwise:\n\n")
        parts.append(table(head, rows))
    return with_missing("".join(parts) if parts else None, absent, mapping_command)


# (group, file under bench/results, description, measured value, format, limit, met if ≤ limit)
TARGETS = [
    (
        "accuracy",
        "runs/hetero_4_8.json",
        "`hetero_4_8`: QAT within 2 points of float",
        lambda r: 100 * (r["float"]["accuracy"] - r["qat"]["accuracy"]),
        "{:.2f} points",
        2,
        True,
    ),
    (
        "accuracy",
        "runs/hetero_4_8.json",
        "`hetero_4_8`: ≥ 6× less memory than float32 (parameters, state, every scale)",
        lambda r: r["footprint"]["reduction"],
        "{:.2f}×",
        6,
        False,
    ),
    (
        "speed",
        "performance.json",
        "S4D: QAT step ≤ 1.5× the float step (one thread)",
        lambda r: r["s4d"]["qat_vs_float_ratio"],
        "{:.2f}×",
        1.5,
        True,
    ),
    (
        "speed",
        "performance.json",
        "S4D: QAT peak memory ≤ 1 GiB at batch 64",
        lambda r: r["s4d"]["qat_peak_rss_gib"],
        "{:.2f} GiB",
        1,
        True,
    ),
    (
        "speed",
        "performance.json",
        "S4D: streaming ≤ 3 µs per timestep at batch 1 (compiled integer step)",
        lambda r: r["s4d"]["intref_compiled_step_latency_us"],
        "{:.1f} µs",
        3,
        True,
    ),
    (
        "speed",
        "performance.json",
        "S4D: streaming ≤ 20 µs per timestep at batch 1 (onnxruntime step graph)",
        lambda r: r["s4d"]["onnx_step_latency_us"],
        "{:.1f} µs",
        20,
        True,
    ),
] + [
    (
        "speed",
        "performance.json",
        f"`{recipe}`: {step} training step ≥ 600 samples/s (one thread)",
        lambda r, family=family, key=key: r[family][key],
        "{:.0f} samples/s",
        600,
        False,
    )
    for family, recipe in (("mingru_hw", "minimalist"), ("mgrade", "mgrade_8"))
    for step, key in (("float", "float_conv_samples_per_s"), ("QAT", "qat_samples_per_s"))
]


def r_targets(root: Path, args: list[str]) -> str:
    """The project's targets, met or not, from the committed files (``accuracy``, ``speed``)."""
    groups = args or ["accuracy", "speed"]
    rows = []
    for group, file, text, value, fmt, limit, at_most in TARGETS:
        if group not in groups:
            continue
        path = root / "bench" / "results" / file
        try:
            v = value(read_json(path)) if path.exists() else None
        except (KeyError, TypeError):
            v = None
        if v is None:
            rows.append([text, f"not measured (`bench/results/{file}`)", "—"])
        else:
            met = v <= limit if at_most else v >= limit
            rows.append([text, fmt.format(v), "met" if met else "**not met**"])
    return table(["target", "measured", "status"], rows)


def sweep_tables(rows: list[dict]) -> str:
    """Accuracy per (role, bits), per uniform width and per Pareto point, one table each."""
    parts = []
    for stage in sorted({r["stage"] for r in rows}):
        rs = [r for r in rows if r["stage"] == stage]
        per_role = [r for r in rs if r["table"] == "per_role"]
        if per_role:
            bits = sorted({int(r["bits"]) for r in per_role})
            cells: dict[str, dict[int, str]] = {}
            for r in per_role:
                cells.setdefault(r["config"], {})[int(r["bits"])] = f"{100 * r['accuracy']:.1f}"
            body = [[f"`{role}`", *(c.get(b, "") for b in bits)] for role, c in cells.items()]
            parts.append(
                f"{stage.upper()} accuracy (%), one role at the given width, every "
                "other site at the base width:\n\n"
                + table(["role", *(f"{b} bits" for b in bits)], body)
            )
        for name, title in (("uniform", "every site at one width"), ("pareto", "Pareto grid")):
            sel = [r for r in rs if r["table"] == name]
            if sel:
                body = [
                    [
                        f"`{r['config']}`",
                        str(r["bits"]),
                        f"{100 * r['accuracy']:.1f}",
                        num(r["total_bits"]),
                        ratio(r["reduction"]),
                    ]
                    for r in sel
                ]
                parts.append(
                    f"{stage.upper()}, {title}:\n\n"
                    + table(["config", "bits", "accuracy (%)", "total bits", "reduction"], body)
                )
    return "\n\n".join(parts)


def sweep_file(root: Path, args: list[str], kind: str, source: str) -> dict | str:
    """The committed result file of the one sweep ``args`` names, or the line saying which
    commands make it (``source``: the run whose float model the sweep reuses)."""
    if len(args) != 1:
        raise RenderError(f"{kind} takes one sweep run name")
    path = root / "bench" / "results" / "sweeps" / f"{args[0]}.json"
    if not path.exists():
        recipe = args[0].removeprefix("sweep_")
        return missing(
            f"`{args[0]}`",
            f"`qssm sweep --recipe recipes/sweeps/{recipe}.yaml --from runs/{source}`, then "
            f"`python bench/collect.py runs/{args[0]}`",
        )
    return read_json(path)


def r_sweep(root: Path, args: list[str]) -> str:
    data = sweep_file(root, args, "sweep", "fp32_s4d_smnist5k")
    if isinstance(data, str):
        return data
    return sweep_tables(data["rows"]) + f"\n\nMeasured at {measured(data['provenance'])}."


def r_golden(root: Path, args: list[str]) -> str:
    if len(args) != 1:
        raise RenderError("golden takes one table name")
    path = root / "tests" / "golden" / f"{args[0]}.csv"
    if not path.exists():
        raise RenderError(f"{path} does not exist (golden tables are committed with the tests)")
    with open(path, newline="") as f:
        rows = []
        for row in csv.DictReader(f):
            row["accuracy"] = float(row["accuracy"])
            row["total_bits"] = int(row["total_bits"])
            row["reduction"] = float(row["reduction"])
            rows.append(row)
    return sweep_tables(rows)


def r_search(root: Path, args: list[str]) -> str:
    """``qssm search`` runs: budget, chosen configuration, accuracy, and how the estimate
    ranked its validation configurations."""
    found, absent = runs(root, args)
    rows, configs = [], []
    for r in found:
        s, qat, fp = r["search"], r.get("qat", {}), r.get("footprint", {})
        v = s.get("validation") or {}
        rho = (
            f"{fixed(v['spearman_estimate'], 2)} (PTQ {fixed(v['spearman_ptq'], 2)}; "
            f"{len(v['configs'])} configs, {v['epochs']}-epoch QAT)"
            if v
            else "—"
        )
        rows.append(
            [
                f"`{r['run']}`",
                ratio(s["float32_bits"] / s["budget_bits"]) if s["budget_bits"] else "—",
                f"{len(s['evaluated'])} of {num(s['candidates'])}",
                num(fp.get("total_bits")),
                f"**{pct(qat.get('accuracy'))}** ({qat.get('epochs')})",
                pct(r.get("float", {}).get("accuracy")),
                rho,
                f"{duration(s.get('seconds'))} + {duration(r.get('wall_seconds'))}",
                measured(r["provenance"]),
            ]
        )
        configs.append(f"- `{r['run']}`: `{s['chosen']}`")
    header = [
        "run",
        "budget",
        "evaluated",
        "bits",
        "QAT (epochs)",
        "float",
        "Spearman: estimate",
        "search + PTQ/QAT time",
        "measured at",
    ]
    body = table(header, rows) + "\n\nChosen configurations:\n\n" + "\n".join(configs)
    return with_missing(body if rows else None, absent, search_command)


def r_search_area(root: Path, args: list[str]) -> str:
    """``qssm search --target`` runs against the hand allocation of their recipe (the first
    argument: its `qssm quantize` run): budgets, capacitor area and capacitance (calibrated, and
    after QAT as `qssm map-to-hw` maps the run), footprint and QAT accuracy."""
    if len(args) < 2:
        raise RenderError("search_area takes the hand recipe's run, then search runs")
    hands, _ = runs(root, args[:1])
    if not hands:
        return missing(f"`{args[0]}`", run_command(args[0]))
    hand, (found, absent) = hands[0], runs(root, args[1:])

    def area(t) -> str:
        return "—" if not t else f"{t['area_mm2']:.6f} mm², {t['capacitance_pf']:.1f} pF"

    def qat(r) -> str:
        q = r.get("qat", {})
        return f"**{pct(q.get('accuracy'))}** ({q.get('epochs')})"

    rows, notes = [], []
    for r in found:
        s, a = r["search"], r["search"]["area"]
        budget = [f"{a['budget_mm2']} mm²" if a["budget_mm2"] is not None else "—"]
        budget.append(num(round(s["budget_bits"])) + " bits" if s["budget_bits"] else "—")
        rows.append(
            [
                f"`{hand['run']}` (the recipe's)",
                f"`{a['target']}`",
                "",
                "",
                num(hand.get("footprint", {}).get("total_bits")),
                area(a["recipe"]),
                area(hand.get("mapping")),
                qat(hand),
                duration(hand.get("wall_seconds")),
                measured(hand["provenance"]),
            ]
        )
        rows.append(
            [
                f"`{r['run']}` (searched)",
                f"`{a['target']}`",
                *budget,
                num(r.get("footprint", {}).get("total_bits")),
                area(a["chosen"]),
                area(r.get("mapping")),
                qat(r),
                f"{duration(s.get('seconds'))} + {duration(r.get('wall_seconds'))}",
                measured(r["provenance"]),
            ]
        )
        est = [e["estimate"] for e in s["evaluated"]]
        notes.append(
            f"- `{r['run']}`: {len(s['evaluated'])} of {num(s['candidates'])} configurations "
            f"evaluated, estimates {pct(min(est))} to {pct(max(est))}; chosen `{s['chosen']}`"
        )
    header = [
        "allocation",
        "target",
        "area budget",
        "memory budget",
        "bits",
        "area, calibrated",
        "area after QAT (map-to-hw)",
        "QAT (epochs)",
        "time (search + PTQ/QAT)",
        "measured at",
    ]
    body = table(header, rows) + "\n\n" + "\n".join(notes) if rows else None
    return with_missing(body, absent, search_command)


def search_command(run: str) -> str:
    budget = run.removeprefix("search_")
    return (
        f"`qssm search --recipe recipes/hetero_4_8.yaml --from runs/hetero_4_8 "
        f"--budget-reduction {budget} --out runs/{run}`, then `python bench/collect.py runs/{run}`"
    )


def r_interaction(root: Path, args: list[str]) -> str:
    """A two-group Pareto sweep as a grid per stage: measured accuracy, and what adding the two
    one-group losses to the corner where both groups are widest predicts."""
    data = sweep_file(root, args, "interaction", "hetero_4_8")
    if isinstance(data, str):
        return data
    parts = []
    for stage in sorted({r["stage"] for r in data["rows"]}):
        acc, names = {}, None
        for r in data["rows"]:
            if r["stage"] == stage and r["table"] == "pareto":
                a, b = (int(x) for x in str(r["bits"]).split("/"))
                acc[a, b] = 100 * float(r["accuracy"])
                names = [g.split("=")[0] for g in r["config"].split(";")]
        rows_, cols = sorted({a for a, _ in acc}), sorted({b for _, b in acc})
        ta, tb = rows_[-1], cols[-1]
        worst, body = 0.0, []
        for a in rows_:
            cells = []
            for b in cols:
                additive = acc[a, tb] + acc[ta, b] - acc[ta, tb]
                worst = max(worst, abs(acc[a, b] - additive))
                cells.append(f"{acc[a, b]:.1f} ({additive:.1f})")
            body.append([f"`{names[0]}` {a} bits", *cells])
        header = ["", *(f"`{names[1]}` {b} bits" for b in cols)]
        parts.append(
            f"{stage.upper()}: accuracy % (additive prediction); largest difference "
            f"{worst:.1f} points\n\n" + table(header, body)
        )
    return "\n\n".join(parts) + f"\n\nMeasured at {measured(data['provenance'])}."


BENCH_ROWS = [
    ("float_conv_samples_per_s", "float training step, samples/s (recipe's float.mode)", 1),
    ("qat_samples_per_s", "QAT training step, samples/s (state quantized every step)", 1),
    ("qat_vs_float_ratio", "**QAT / float**", None),
    ("qat_step_ms.float", "ms per step: float step", 1),
    ("qat_step_ms.scan_forward", "QAT step: recurrence node, forward", 1),
    ("qat_step_ms.scan_backward", "QAT step: recurrence node, backward", 1),
    ("qat_step_ms.fakequant_forward", "QAT step: other sites' fake-quant, forward", 1),
    ("qat_step_ms.fakequant_backward", "QAT step: other sites' fake-quant, backward", 1),
    ("qat_step_ms.rest", "QAT step: the rest (layers, loss, optimizer)", 1),
    ("qat_peak_rss_gib", "**QAT peak memory**, GiB", 2),
    ("process_peak_rss_gib", "process peak incl. calibration, GiB", 2),
    ("fakequant_step_latency_us", "streaming µs/step, batch 1: Brevitas fake-quant (torch)", 1),
    ("intref_step_latency_us", "integer reference, numpy interpreter", 1),
    ("intref_compiled_step_latency_us", "**integer reference, compiled step** (numba)", 1),
    ("onnx_step_latency_us", "onnxruntime, `step_deploy.onnx`, state fed back (IOBinding)", 1),
    ("onnx_step_cpu_us", "the same, CPU time of the process", 1),
    ("onnx_step_nodes.optimized", "its nodes, after onnxruntime's optimizer", 0),
    ("intref_sequence_samples_per_s", "whole sequences, samples/s: integer reference", 1),
    ("onnx_sequence_samples_per_s", "onnxruntime `sequence_deploy.onnx` (Scan)", 1),
]


def families(data: dict, figure: str = "qat_samples_per_s") -> list[str]:
    """The model families of a bench file with ``figure`` (the training figures, or
    ``montecarlo``: bench/run.py times mgrade_hw's Monte-Carlo only)."""
    return [k for k, v in data.items() if isinstance(v, dict) and "recipe" in v and figure in v]


def load(data: dict) -> str:
    """ ", load average A → B" of a bench file, or nothing where it has none."""
    la = data.get("load_average")
    return f", load average {la['start']:.1f} → {la['end']:.1f}" if la else ""


def r_bench(root: Path, args: list[str]) -> str:
    path = root / "bench" / "results" / "performance.json"
    if not path.exists():
        return missing("the benchmark", f"`{BENCH_CMD}`")
    data = read_json(path)
    fams = families(data)
    header = ["figure", *(f"{f} (`{data[f]['recipe'].removesuffix('.yaml')}`)" for f in fams)]
    body = []
    for key, label, digits in BENCH_ROWS:
        cells = []
        for f in fams:
            v = data[f]
            for part in key.split("."):  # "a.b": field b of the record a
                v = v.get(part) if isinstance(v, dict) else None
            cells.append(ratio(v) if digits is None else fixed(v, digits))
        body.append([label, *cells])
    return (
        table(header, body) + f"\n\nBatch {data.get('batch')}, median of {data.get('steps')} "
        f"timed steps after a warm-up; measured at {measured(data['provenance'])}{load(data)}."
    )


THREADS_CMD = (
    "OMP_NUM_THREADS=2 python bench/run.py --steps 9 --out bench/results/performance_2threads.json"
)


def r_threads(root: Path, args: list[str]) -> str:
    """Training speed on one torch thread (performance.json) against two (``args[0]``), and the
    S4D QAT speed-up against its target (≥ 1.6×)."""
    one = read_json(root / "bench" / "results" / "performance.json")
    path = root / "bench" / "results" / args[0]
    if not path.exists():
        return missing("the two-thread benchmark", f"`{THREADS_CMD}`")
    two = read_json(path)
    header = ["family", "step", "1 thread, samples/s", "2 threads, samples/s", "speed-up"]
    body = []
    for fam in families(one):
        for key, step in (("float_conv_samples_per_s", "float"), ("qat_samples_per_s", "QAT")):
            a, b = one[fam].get(key), two.get(fam, {}).get(key)
            up = ratio(b / a) if a and b else "—"
            body.append(
                [
                    f"{fam} (`{one[fam]['recipe'].removesuffix('.yaml')}`)",
                    step,
                    fixed(a),
                    fixed(b),
                    up,
                ]
            )
    a, b = one["s4d"]["qat_samples_per_s"], two["s4d"]["qat_samples_per_s"]
    status = "met" if b / a >= 1.6 else "**not met**"

    def ms(data: dict, key: str) -> float | None:
        return data["s4d"].get("qat_step_ms", {}).get(key.removeprefix("qat_step_ms."))

    parts = [  # where the S4D QAT step's time goes on one thread and on two
        [
            label.removeprefix("QAT step: "),
            fixed(t1),
            fixed(t2),
            ratio(t1 / t2) if t1 and t2 else "—",
        ]
        for key, label, _ in BENCH_ROWS
        if key.startswith("qat_step_ms.") and key != "qat_step_ms.float"
        for t1, t2 in [(ms(one, key), ms(two, key))]
    ]
    return (
        table(header, body) + f"\n\nTarget: S4D QAT ≥ 1.6× faster on two threads than on one: "
        f"{b / a:.2f}×, {status}. Two threads measured at {measured(two['provenance'])}{load(two)}."
        "\n\nThe S4D QAT step (`hetero_4_8`), ms per step:\n\n"
        + table(["part", "1 thread", "2 threads", "speed-up"], parts)
    )


MC_CMD = (
    "OMP_NUM_THREADS=1 python bench/montecarlo.py runs/minimalist runs/mgrade_hw --workers 1 2 "
    "--out bench/results/montecarlo.json"
)


def r_mcspeed(root: Path, args: list[str]) -> str:
    path = root / "bench" / "results" / "montecarlo.json"
    if not path.exists():
        return missing("the Monte-Carlo throughput", f"`{MC_CMD}`")
    data = read_json(path)
    header = ["run", "workers", "chips × sequences × steps", "seconds", "chip·sequences/s"]
    header += ["CPU seconds", "chip·sequences per CPU-second", "load average"]
    body = [
        [
            f"`{r['name']}`",
            str(r["workers"]),
            f"{r['chips']} × {r['sequences']:,} × {r['steps']}",
            fixed(r["seconds"]),
            f"**{fixed(r['chip_sequences_per_s'], 0)}**",
            fixed(r["cpu_seconds"]),
            fixed(r["chip_sequences_per_cpu_s"], 0),
            f"{r['load_average']['start']:.1f} → {r['load_average']['end']:.1f}",
        ]
        for r in data["montecarlo"]
    ]
    return table(header, body) + f"\n\nMeasured at {measured(data['provenance'])}."


def r_mcbench(root: Path, args: list[str]) -> str:
    """bench/run.py's Monte-Carlo figure per family that maps onto the chip (a bench file
    written before bench/run.py measured it says so)."""
    path = root / "bench" / "results" / "performance.json"
    data = read_json(path) if path.exists() else {}
    fams = families(data, "montecarlo")
    if not fams:
        return missing("the Monte-Carlo figure of `bench/run.py`", f"`{BENCH_CMD}`")
    header = ["family", "target", "chips × sequences × steps", "seconds", "chip·sequences/s"]
    header += ["CPU ms per chip·sequence", "load average"]
    body = []
    for f in fams:
        r = data[f]["montecarlo"]
        la = r.get("load_average")
        body.append(
            [
                f"{f} (`{data[f]['recipe'].removesuffix('.yaml')}`)",
                f"`{r.get('target')}`",
                f"{r.get('chips')} × {num(r.get('sequences'))} × {r.get('steps')}",
                fixed(r.get("seconds")),
                f"**{fixed(r.get('chip_sequences_per_s'), 0)}**",
                fixed(r.get("cpu_ms_per_chip_sequence"), 2),
                f"{la['start']:.1f} → {la['end']:.1f}" if la else "—",
            ]
        )
    return (
        "`bench/run.py` times the simulator on the calibrated, untrained model of each family "
        "that maps onto the chip, over random input (the simulator's work depends on the "
        "model's shape and the sequences' length, not on the weights): the nominal chip, one "
        "process, its kernels compiled before the timing. Its chip batches hold fewer sequences "
        "than `bench/montecarlo.py`'s above, so a step's fixed costs are shared by fewer rows.\n\n"
        + table(header, body)
        + f"\n\nMeasured at {measured(data['provenance'])}{load(data)} (the whole bench run)."
    )


def r_provenance(root: Path, args: list[str]) -> str:
    if len(args) != 1:
        raise RenderError("provenance takes one file under bench/results")
    path = root / "bench" / "results" / args[0]
    if not path.exists():
        cmd = BENCH_CMD if args[0] == "performance.json" else "python bench/collect.py RUN_DIR"
        return missing(f"`bench/results/{args[0]}`", f"`{cmd}`")
    p = read_json(path)["provenance"]
    m = p.get("machine", {})
    v = m.get("versions", {})
    lines = [
        f"- date: {p.get('date')}; commit `{p.get('commit')}`"
        + (" (uncommitted changes)" if p.get("dirty") else ""),
        f"- command: `{p.get('command')}`",
    ]
    if m:
        lines.append(
            f"- machine: {m.get('cpu')}, {m.get('cores')} cores, {m.get('memory_gib')} GiB; "
            f"{m.get('threads')} torch thread(s); {m.get('platform')}"
        )
        lines.append("- versions: " + ", ".join(f"{k} {val}" for k, val in v.items()))
    return "\n".join(lines)


def neurobench_command(run: str) -> str:
    return (
        f"`qssm eval runs/{run} --neurobench`, then "
        f"`python bench/collect.py --neurobench runs/{run}`"
    )


def r_neurobench(root: Path, args: list[str]) -> str:
    """NeuroBench's figures per run and model beside qssm's footprint, and what it counts."""
    folder = root / "bench" / "results" / "neurobench"
    found = [read_json(folder / f"{a}.json") for a in args if (folder / f"{a}.json").exists()]
    absent = [a for a in args if not (folder / f"{a}.json").exists()]
    rows, notes = [], []
    for r in found:
        fp = r.get("qssm_footprint") or {}
        for stage, m in r["models"].items():
            ops = m["synaptic_operations"]
            ours = fp.get("total_bits") if m["quantized"] else fp.get("float32_bits")
            rows.append(
                [
                    f"`{r['run']}`",
                    stage,
                    f"{pct(m['accuracy'])} ({pct(m['stored_accuracy'])})",
                    num(m["footprint_bytes"]),
                    num(None if ours is None else round(ours / 8)),
                    f"{m['connection_sparsity']:.4f}",
                    f"{m['activation_sparsity']:.4f}",
                    num(round(ops["dense"])),
                    num(round(ops["effective_macs"])),
                    num(round(ops["effective_acs"])),
                    measured(r["provenance"]),
                ]
            )
        m = list(r["models"].values())[-1]
        notes.append(
            f"- `{r['run']}` ({r['sequences']:,} test sequences, {r['steps']} steps, NeuroBench "
            f"{r['neurobench']}): counted {', '.join(m['counted'])}; not counted "
            f"{'; '.join(m['not_counted'])}."
        )
    header = [
        "run",
        "model",
        "accuracy",
        "NeuroBench footprint (bytes)",
        "qssm footprint (bytes)",
        "connection sparsity",
        "activation sparsity",
        "dense ops / sample",
        "effective MACs",
        "effective ACs",
        "measured at",
    ]
    body = table(header, rows) + "\n\n" + "\n".join(notes) if rows else None
    return with_missing(body, absent, neurobench_command)


KINDS = {
    "headline": r_headline,
    "accuracy": r_accuracy,
    "footprint": r_footprint,
    "roles": r_roles,
    "verify": r_verify,
    "montecarlo": r_montecarlo,
    "targets": r_targets,
    "sweep": r_sweep,
    "golden": r_golden,
    "search": r_search,
    "search_area": r_search_area,
    "interaction": r_interaction,
    "bench": r_bench,
    "threads": r_threads,
    "mcspeed": r_mcspeed,
    "mcbench": r_mcbench,
    "provenance": r_provenance,
    "neurobench": r_neurobench,
}


# ----------------------------------------------------------------------------------- documents


def render_block(spec: str, root: Path) -> str:
    kind, *args = spec.split()
    if kind not in KINDS:
        raise RenderError(f"unknown block `{kind}` (known: {', '.join(KINDS)})")
    return KINDS[kind](root, args).rstrip("\n") + "\n"


def render_text(text: str, root: Path = ROOT, name: str = "<text>") -> str:
    """The text with every marked block re-rendered."""
    if text.count("<!-- render:") != len(BLOCK.findall(text)):
        raise RenderError(f"{name}: a `<!-- render: … -->` block without its `<!-- /render -->`")

    def sub(m: re.Match) -> str:
        try:
            body = render_block(m["spec"], root)
        except RenderError as err:
            raise RenderError(f"{name}: block `{m['spec']}`: {err}") from None
        return f"<!-- render: {m['spec']} -->\n{body}<!-- /render -->"

    return BLOCK.sub(sub, text)


def documents(root: Path) -> list[Path]:
    return [p for p in [root / "README.md", *sorted((root / "docs").glob("*.md"))] if p.exists()]


def main(argv: list[str] | None = None, root: Path = ROOT) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--check", action="store_true", help="exit 1 if a doc is stale; write nothing")
    args = p.parse_args(argv)
    stale = []
    try:
        for doc in documents(root):
            text = doc.read_text()
            new = render_text(text, root, str(doc.relative_to(root)))
            if new != text:
                stale.append(doc.relative_to(root))
                if not args.check:
                    doc.write_text(new)
    except RenderError as err:
        print(f"render_docs: {err}", file=sys.stderr)
        return 2
    for doc in stale:
        if args.check:
            print(
                f"stale: {doc} (run `python bench/render_docs.py` or `make docs`)", file=sys.stderr
            )
        else:
            print(f"rendered {doc}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
