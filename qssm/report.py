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
