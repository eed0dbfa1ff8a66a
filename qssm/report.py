"""report.md and its PNG plots."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .io import atomic_path, atomic_write  # noqa: E402


def save_figure(fig, path: Path, legend_axes=()) -> None:
    """Write ``fig`` as a PNG and close it; ``legend_axes`` first get a light grid and a legend."""
    for ax in legend_axes:
        ax.grid(alpha=0.3)
        ax.legend()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_curves(histories: dict[str, list[dict]], path: Path) -> None:
    """Test accuracy and loss per epoch, one line per stage (e.g. float, qat)."""
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(9, 3.2))
    for stage, hist in histories.items():
        epochs = [h["epoch"] for h in hist]
        ax_acc.plot(epochs, [100 * h["accuracy"] for h in hist], marker="o", ms=3, label=stage)
        ax_loss.plot(epochs, [h["loss"] for h in hist], marker="o", ms=3, label=stage)
    ax_acc.set(xlabel="epoch", ylabel="test accuracy (%)")
    ax_loss.set(xlabel="epoch", ylabel="test loss")
    save_figure(fig, path, (ax_acc, ax_loss))


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def provenance_table(p: dict) -> str:
    """A provenance record (``qssm.io.provenance``) as a two-column table."""
    rows = [[k, f"`{v}`" if k == "command" else v] for k, v in p.items() if k != "preprocessing"]
    pre = ", ".join(f"{k} {v}" for k, v in p.get("preprocessing", {}).items()) or "none"
    return table(["", ""], [*rows, ["preprocessing", pre]])


def write_report(path: Path, title: str, sections: list[tuple[str, str]]) -> None:
    body = [f"# {title}", ""]
    for heading, text in sections:
        body += [f"## {heading}", "", text, ""]
    atomic_write(path, "\n".join(body))


def put_section(path: Path, heading: str, text: str) -> None:
    """Replace the report's section ``## heading`` (up to the next ``## ``) or append it."""
    lines = path.read_text().rstrip("\n").split("\n") if path.exists() else []
    start = next((i for i, line in enumerate(lines) if line == f"## {heading}"), len(lines))
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), None)
    before, rest = lines[:start], lines[end:] if end is not None else []
    gap = [""] if before and before[-1] else []
    body = [*before, *gap, f"## {heading}", "", text, *([""] if rest else []), *rest]
    atomic_write(path, "\n".join(body) + "\n")


def neurobench_section(nb: dict) -> str:
    """NeuroBench's figures per model (``qssm.neurobench.measure_run``) beside qssm's footprint."""
    fp = nb.get("qssm_footprint") or {}
    rows = []
    for stage, m in nb["models"].items():
        ops = m["synaptic_operations"]
        ours = fp.get("total_bits") if m["quantized"] else fp.get("float32_bits")
        rows.append(
            [
                stage,
                f"{_pct(m['accuracy'])} ({_pct(m['stored_accuracy'])})",
                f"{m['footprint_bytes']:,}",
                "—" if ours is None else f"{ours / 8:,.0f}",
                f"{m['connection_sparsity']:.4f}",
                f"{m['activation_sparsity']:.4f}",
                f"{ops['dense']:,.0f}",
                f"{ops['effective_macs']:,.0f}",
                f"{ops['effective_acs']:,.0f}",
            ]
        )
    header = [
        "model",
        "accuracy (qssm)",
        "NeuroBench footprint, bytes",
        "qssm footprint, bytes",
        "connection sparsity",
        "activation sparsity",
        "dense synaptic ops / sample",
        "effective MACs",
        "effective ACs",
    ]
    seen = list(nb["models"].values())[-1]  # the run's model (the same layers as its float one)
    return (
        f"NeuroBench {nb['neurobench']} on {'the first' if nb['limit'] else 'all'} "
        f"{nb['sequences']} sequences of the test split ({nb['steps']} steps); accuracy in "
        "brackets: qssm's, stored for the whole split. NeuroBench's footprint is the bytes of "
        "the torch module's parameters and buffers (float32 for a fake-quantized model, no "
        "recurrent state); qssm's counts each stored element at its bit width, with the "
        "per-sample state and quantizer scales (float model: float32 as trained). Synaptic "
        "operations count only the layers below, per sample; effective ones skip zero inputs "
        "and zero weights, and a layer whose inputs are all 0 or ±1 counts accumulates (ACs) "
        "instead of MACs.\n\n"
        + table(header, rows)
        + "\n\nCounted (synaptic operations, connection sparsity): "
        + ", ".join(seen["counted"])
        + ".\n\nNot counted: "
        + "; ".join(seen["not_counted"])
        + ".\n\nActivation sparsity over: "
        + ", ".join(seen["activation_points"])
        + "."
    )


def _pct(x) -> str:
    return "—" if x is None else f"{100 * x:.2f} %"


def plot_footprint(fp: dict, path: Path) -> None:
    """Stored bits per role, quantized against the same tensors in float32 (a float32
    deployment), and a last bar for what float32 as trained stores beyond that (an S4D's
    continuous B and dt): the quantized bars add up to the total, the float32 bars to the
    deployment baseline, and with the last bar to the as-trained one."""
    roles = [r for r, e in fp["per_role"].items() if e["elements"]]
    quant = [fp["per_role"][r]["bits_stored"] / 8192 for r in roles]
    flt = [fp["per_role"][r]["float32_bits"] / 8192 for r in roles]
    extra = (fp["float32_bits"] - fp["float32_deploy_bits"]) / 8192
    if extra > 0:
        roles.append("float32 as trained only")
        quant.append(0.0)
        flt.append(0.0)
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(roles) + 1.4))
    y = range(len(roles))
    ax.barh([i + 0.2 for i in y], flt, height=0.4, label="float32 deployment", color="#bbb")
    if extra > 0:
        ax.barh(
            [len(roles) - 1 + 0.2],
            [extra],
            height=0.4,
            color="#ddd",
            hatch="//",
            label="float32 as trained, beyond deployment",
        )
    ax.barh([i - 0.2 for i in y], quant, height=0.4, label="quantized", color="#2a7")
    ax.set_yticks(list(y), roles)
    ax.invert_yaxis()
    ax.set(
        xlabel="KiB",
        title=f"footprint: {fp['reduction']:.2f}× smaller than float32 as trained, "
        f"{fp['reduction_deploy']:.2f}× than a float32 deployment",
    )
    ax.legend()
    ax.grid(alpha=0.3, axis="x")
    save_figure(fig, path)


def write_run_report(out: Path, recipe, data, metrics: dict) -> None:
    f = metrics["float"]
    per_epoch = f"{f['seconds_per_epoch']:.1f} s/epoch" if f.get("seconds_per_epoch") else "—"
    rows = [["float", _pct(f["accuracy"]), f.get("epochs", "—"), per_epoch]]
    for stage in ("ptq", "qat"):
        if stage in metrics:
            m = metrics[stage]
            rows.append(
                [stage.upper(), _pct(m["accuracy"]), m.get("epochs", "—")]
                + [f"{m['seconds']:.0f} s" if "seconds" in m else "—"]
            )
    summary = (
        f"{recipe.model.family} on {data.name} ({data.seq_len} steps), "
        f"{f['params']} float parameters\n\n"
        + table(["stage", "test accuracy", "epochs", "time"], rows)
    )
    sections = [("Accuracy", summary)]
    histories = {
        k: metrics[k]["history"] for k in ("float", "qat") if metrics.get(k, {}).get("history")
    }
    if histories:
        plot_curves(histories, out / "training.png")
        sections.append(("Training", "![training curves](training.png)"))
    if "footprint" in metrics:
        fp = metrics["footprint"]
        parts = (
            ("parameters", "param_bits"),
            ("state (per sample)", "state_bits"),
            ("delay buffer (per sample)", "buffer_bits"),
            ("total", "total_bits"),
            ("float32 deployment (the same tensors, no scales)", "float32_deploy_bits"),
            ("float32 as trained (every float parameter, float state)", "float32_bits"),
        )
        kib = [[label, fp[k], f"{fp[k] / 8192:.2f}"] for label, k in parts]
        totals = table(["", "bits", "KiB"], kib)
        per_role = table(
            ["role", "bits", "elements", "bits stored", "float32 deployment bits"],
            [
                [r, "/".join(map(str, e["bits"])), e["elements"], e["bits_stored"]]
                + [e["float32_bits"]]
                for r, e in fp["per_role"].items()
            ],
        )
        plot_footprint(fp, out / "footprint.png")
        text = (
            f"{fp['reduction']:.2f}× smaller than float32 as trained, "
            f"{fp['reduction_deploy']:.2f}× smaller than a float32 deployment of the same "
            "model. As trained, float32 keeps every parameter of the float model (an S4D's "
            "continuous A, dt and B); a float32 deployment keeps what the quantized model "
            "stores — discrete Ā, B̄ or, with `quant.fold_b`, B̄ folded into C, no dt — at 32 "
            f"bits, and no quantizer scales.\n\n{totals}\n\n{per_role}"
        )
        sections.append(("Footprint", f"{text}\n\n![footprint per role](footprint.png)"))
    if "search" in metrics:
        sections.append(("Bit allocation", search_section(metrics, out)))
    if "provenance" in metrics:
        sections.append(("Provenance", provenance_table(metrics["provenance"])))
    write_report(out / "report.md", f"qssm run `{recipe.name}`", sections)


def _budget_text(s: dict) -> str:
    f32 = s["float32_bits"] / 8192
    parts = []
    if s["budget_bits"] is not None:
        budget = s["budget_bits"] / 8192
        parts.append(f"{budget:.2f} KiB (float32: {f32:.2f} KiB, {f32 / budget:.2f}×)")
    a = s.get("area")
    if a:
        mine = a["recipe"]
        of_recipe = (
            f"the recipe's own allocation {mine['area_mm2']:.6f} mm², "
            f"{mine['capacitance_pf']:.1f} pF"
            if mine
            else "the recipe's own allocation does not map"
        )
        limit = (
            f"{a['budget_mm2']:.6f} mm² of capacitor area"
            if a["budget_mm2"] is not None
            else "no area limit"
        )
        parts.append(
            f"{limit} on `{a['target']}` ({of_recipe}; configurations it cannot map left out)"
        )
    return " and ".join(parts)


def search_section(metrics: dict, out: Path) -> str:
    """The search's budgets, choice, evaluated configurations, validation and Pareto plot."""
    s, stage = metrics["search"], "qat" if "qat" in metrics else "ptq"
    structure = ", ".join(f"{k} {v}" for k, v in s["structure"].items())
    bits = ", ".join(f"{r} {b}" for r, b in sorted(s["chosen_bits"].items()))
    area = s.get("area")
    finalists = sum(e["longer"] is not None for e in s["evaluated"])
    chosen_area = (
        f", {area['chosen']['area_mm2']:.6f} mm² and {area['chosen']['capacitance_pf']:.1f} pF "
        "as calibrated"
        if area
        else ""
    )
    text = (
        f"Budget {_budget_text(s)}. "
        f"{s['candidates']:,} configurations fill it; {len(s['evaluated'])} were scored by a "
        f"{s['short_epochs']}-epoch QAT on a held-out tenth of the training split"
        + (
            f", the best {finalists} by a {3 * s['short_epochs']}-epoch one"
            if finalists
            else "; the best estimate was chosen"
        )
        + f".\n\nChosen: {bits}; {structure}: "
        f"{s['predicted_total_bits']:,} bits{chosen_area}, {stage.upper()} "
        f"{_pct(metrics[stage]['accuracy'])} on the test split.\n\n"
    )
    top = s["evaluated"][:10]
    mm2 = ["area (mm²)"] if area else []
    text += table(
        ["configuration", "bits", *mm2, "estimate (held out)", "longer QAT (held out)"],
        [
            [
                f"`{e['config']}`",
                f"{e['bits']:,}",
                *([f"{e['area_mm2']:.6f}"] if area else []),
                _pct(e["estimate"]),
                _pct(e["longer"]),
            ]
            for e in top
        ],
    )
    v = s.get("validation")
    if v:
        text += (
            f"\n\n**Validation**: {len(v['configs'])} evaluated configurations, spread over the "
            f"estimate's ranking, trained with a {v['epochs']}-epoch QAT and scored on the test "
            f"split. Spearman rank correlation against it: the estimate "
            f"{v['spearman_estimate']:.3f}, PTQ accuracy of the same configuration "
            f"{v['spearman_ptq']:.3f}.\n\n"
        )
        text += table(
            ["configuration", "bits", "estimate", "PTQ", f"QAT {v['epochs']} epochs"],
            [
                [
                    f"`{c['config']}`",
                    f"{c['bits']:,}",
                    _pct(c["estimate"]),
                    _pct(c["ptq"]),
                    _pct(c["measured"]),
                ]
                for c in v["configs"]
            ],
        )
    plot_search(s, metrics[stage]["accuracy"], metrics["footprint"]["total_bits"], out)
    what = "capacitor area" if area and area["budget_mm2"] is not None else "footprint"
    return text + f"\n\n![accuracy against {what}](search.png)"


def plot_search(s: dict, accuracy: float, bits: int, out: Path) -> None:
    """Accuracy against footprint (against capacitor area, when that is a budget) of every
    evaluated configuration, its Pareto front, the validation runs and the chosen one."""
    area = s.get("area") and s["area"]["budget_mm2"] is not None
    if area:
        at, label, budget = (
            (lambda e: e["area_mm2"]),
            "capacitor area (mm²)",
            s["area"]["budget_mm2"],
        )
        x = s["area"]["chosen"]["area_mm2"]
    else:
        at, label = (lambda e: e["bits"] / 8192), "footprint (KiB)"
        budget, x = (s["budget_bits"] or 0) / 8192, bits / 8192
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.scatter(
        [at(e) for e in s["evaluated"]],
        [100 * e["estimate"] for e in s["evaluated"]],
        s=14,
        c="0.6",
        label="estimate (short QAT, held out)",
    )
    front = pareto_front([(at(e), e["estimate"]) for e in s["evaluated"]])
    ax.step(
        [b for b, _ in front],
        [100 * a for _, a in front],
        where="post",
        c="0.3",
        lw=1,
        label="Pareto front of the estimate",
    )
    longer = [e for e in s["evaluated"] if e["longer"] is not None]
    ax.scatter(
        [at(e) for e in longer],
        [100 * e["longer"] for e in longer],
        s=22,
        marker="s",
        label="finalists (longer QAT, held out)",
    )
    if s.get("validation"):
        c = s["validation"]["configs"]
        ax.scatter(
            [at(e) for e in c],
            [100 * e["measured"] for e in c],
            s=22,
            marker="^",
            label=f"validation ({s['validation']['epochs']}-epoch QAT, test)",
        )
    ax.scatter(
        [x], [100 * accuracy], s=90, marker="*", c="C3", zorder=3, label="chosen (full QAT, test)"
    )
    if area or s["budget_bits"] is not None:
        ax.axvline(budget, c="C3", ls="--", lw=1, label="budget")
    ax.set(xlabel=label, ylabel="accuracy (%)")
    save_figure(fig, out / "search.png", (ax,))


def _mean_by(rows: list[dict], key) -> dict:
    groups: dict = {}
    for r in rows:
        groups.setdefault(key(r), []).append(float(r["accuracy"]))
    return {k: sum(v) / len(v) for k, v in groups.items()}


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """(bits, accuracy) points not beaten by a smaller-or-equal, more accurate one."""
    front, best = [], -1.0
    for bits, acc in sorted(points, key=lambda p: (p[0], -p[1])):
        if acc > best:
            front.append((bits, acc))
            best = acc
    return front


def write_sweep_report(out: Path, recipe, rows: list[dict]) -> None:
    sections = []
    for stage in recipe.sweep.stages:
        per_role = [r for r in rows if r["table"] == "per_role" and r["stage"] == stage]
        if per_role:
            acc = _mean_by(per_role, lambda r: (r["config"], int(r["bits"])))
            roles = list(dict.fromkeys(r["config"] for r in per_role))
            bits = sorted({int(r["bits"]) for r in per_role})
            body = table(
                ["role"] + [f"{b} bits" for b in bits],
                [[role] + [_pct(acc.get((role, b))) for b in bits] for role in roles],
            )
            fig, ax = plt.subplots(figsize=(1.1 * len(bits) + 2.5, 0.4 * len(roles) + 1.2))
            grid = [[100 * acc.get((role, b), float("nan")) for b in bits] for role in roles]
            im = ax.imshow(grid, cmap="viridis", vmin=0, vmax=100, aspect="auto")
            ax.set_xticks(range(len(bits)), [str(b) for b in bits])
            ax.set_yticks(range(len(roles)), roles)
            for i, row in enumerate(grid):
                for j, v in enumerate(row):
                    ax.text(j, i, f"{v:.0f}", ha="center", va="center", color="w", fontsize=8)
            ax.set(
                xlabel="bits of this role",
                title=f"{stage.upper()} accuracy (%), other roles at {recipe.sweep.base_bits} bits",
            )
            fig.colorbar(im, ax=ax)
            save_figure(fig, out / f"per_role_{stage}.png")
            title = f"Per-role sensitivity ({stage.upper()})"
            sections.append((title, f"{body}\n\n![per-role](per_role_{stage}.png)"))
    uniform = [r for r in rows if r["table"] == "uniform"]
    if uniform:
        acc = _mean_by(uniform, lambda r: (r["stage"], int(r["bits"])))
        bits = sorted({int(r["bits"]) for r in uniform})
        stages = recipe.sweep.stages
        body = table(
            ["bits"] + [s.upper() for s in stages],
            [[b] + [_pct(acc.get((s, b))) for s in stages] for b in bits],
        )
        fig, ax = plt.subplots(figsize=(5, 3.2))
        for s in stages:
            ax.plot(
                bits, [100 * acc.get((s, b), float("nan")) for b in bits], "o-", label=s.upper()
            )
        ax.set(xlabel="bits (every site)", ylabel="test accuracy (%)")
        save_figure(fig, out / "uniform.png", [ax])
        sections.append(("Uniform bit-width", f"{body}\n\n![uniform](uniform.png)"))
    pareto = [r for r in rows if r["table"] in ("pareto", "uniform", "per_role")]
    if any(r["table"] == "pareto" for r in rows):
        pts = [(int(r["total_bits"]) / 8192, float(r["accuracy"])) for r in pareto]
        front = pareto_front(pts)
        fig, ax = plt.subplots(figsize=(6, 3.8))
        ax.scatter([p[0] for p in pts], [100 * p[1] for p in pts], s=12, alpha=0.5, label="configs")
        ax.plot([p[0] for p in front], [100 * p[1] for p in front], "r.-", label="Pareto front")
        ax.set(xlabel="footprint (KiB: parameters + state)", ylabel="test accuracy (%)")
        save_figure(fig, out / "pareto.png", [ax])
        body = table(
            ["config", "stage", "KiB", "reduction", "accuracy"],
            [
                [r["config"], r["stage"], f"{int(r['total_bits']) / 8192:.2f}"]
                + [f"{float(r['reduction']):.2f}×", _pct(float(r["accuracy"]))]
                for r in sorted(pareto, key=lambda r: int(r["total_bits"]))
                if r["table"] == "pareto"
            ],
        )
        sections.append(("Accuracy–footprint Pareto front", f"{body}\n\n![pareto](pareto.png)"))
    write_report(out / "report.md", f"qssm sweep `{recipe.name}`", sections)
