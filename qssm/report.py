"""report.md and its PNG plots."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .io import atomic_path, atomic_write  # noqa: E402


def save_figure(fig, path: Path) -> None:
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
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
        ax.legend()
    save_figure(fig, path)


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_report(path: Path, title: str, sections: list[tuple[str, str]]) -> None:
    body = [f"# {title}", ""]
    for heading, text in sections:
        body += [f"## {heading}", "", text, ""]
    atomic_write(path, "\n".join(body))


def _pct(x) -> str:
    return "—" if x is None else f"{100 * x:.2f} %"


def plot_footprint(fp: dict, path: Path) -> None:
    """Stored bits per role, quantized against float32."""
    roles = [r for r, e in fp["per_role"].items() if e["elements"]]
    quant = [fp["per_role"][r]["bits_stored"] / 8192 for r in roles]
    flt = [fp["per_role"][r]["elements"] * 32 / 8192 for r in roles]
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(roles) + 1.2))
    y = range(len(roles))
    ax.barh([i + 0.2 for i in y], flt, height=0.4, label="float32", color="#bbb")
    ax.barh([i - 0.2 for i in y], quant, height=0.4, label="quantized", color="#2a7")
    ax.set_yticks(list(y), roles)
    ax.invert_yaxis()
    ax.set(xlabel="KiB", title=f"footprint: {fp['reduction']:.1f}× smaller than float32")
    ax.legend()
    ax.grid(alpha=0.3, axis="x")
    save_figure(fig, path)


def write_run_report(out: Path, recipe, data, metrics: dict) -> None:
    f = metrics["float"]
    rows = [
        [
            "float",
            _pct(f["accuracy"]),
            f.get("epochs", "—"),
            f"{f['seconds_per_epoch']:.1f} s/epoch" if f.get("seconds_per_epoch") else "—",
        ]
    ]
    for stage in ("ptq", "qat"):
        if stage in metrics:
            m = metrics[stage]
            rows.append(
                [stage.upper(), _pct(m["accuracy"]), m.get("epochs", "—"), f"{m['seconds']:.0f} s"]
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
        kib = lambda b: f"{b / 8192:.2f}"  # noqa: E731
        totals = table(
            ["", "bits", "KiB"],
            [
                ["parameters", fp["param_bits"], kib(fp["param_bits"])],
                ["state (per sample)", fp["state_bits"], kib(fp["state_bits"])],
                ["delay buffer (per sample)", fp["buffer_bits"], kib(fp["buffer_bits"])],
                ["total", fp["total_bits"], kib(fp["total_bits"])],
                ["float32", fp["float32_bits"], kib(fp["float32_bits"])],
            ],
        )
        per_role = table(
            ["role", "bits", "elements", "bits stored"],
            [
                [r, "/".join(map(str, e["bits"])), e["elements"], e["bits_stored"]]
                for r, e in fp["per_role"].items()
            ],
        )
        plot_footprint(fp, out / "footprint.png")
        sections.append(
            (
                "Footprint",
                f"{fp['reduction']:.2f}× smaller than float32\n\n{totals}\n\n"
                f"{per_role}\n\n![footprint per role](footprint.png)",
            )
        )
    write_report(out / "report.md", f"qssm run `{recipe.name}`", sections)
