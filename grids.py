"""A picture of counterexamples: for each, the original digit, the perturbed one, and the perturbation magnified."""

from __future__ import annotations

from pathlib import Path

from attacks import Counterexample
from checkpoints import atomic_write


def draw(path: Path, examples: list[Counterexample], eps: float, title: str = "") -> None:
    """One row per counterexample: original (label), perturbed (prediction), perturbation scaled to +-eps with a
    colour bar; `title` above them all."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    rows = max(1, len(examples))
    figure, axes = plt.subplots(rows, 3, figsize=(6.6, 2.0 * rows + 0.4), squeeze=False, layout="constrained")
    for axis in axes.flat:
        axis.set_xticks([])
        axis.set_yticks([])
    for row, example in zip(axes, examples):
        original, perturbed = (image.reshape(28, 28).cpu().numpy() for image in (example.original, example.perturbed))
        row[0].imshow(original, cmap="gray", vmin=0, vmax=1)
        row[0].set_title(f"#{example.index}: label {example.label}", fontsize=9)
        row[1].imshow(perturbed, cmap="gray", vmin=0, vmax=1)
        row[1].set_title(f"predicted {example.predicted} ({example.found_by})", fontsize=9)
        shown = row[2].imshow(perturbed - original, cmap="seismic", vmin=-eps, vmax=eps)
        row[2].set_title(f"perturbation, ±{eps:g}", fontsize=9)
    if examples:
        figure.colorbar(shown, ax=axes[:, 2].tolist(), shrink=min(1.0, 0.9 / rows ** 0.5), label="pixel change")
    else:
        axes[0, 1].set_title("no counterexample found")
    if title:
        figure.suptitle(title, fontsize=10)
    atomic_write(path, lambda stream: figure.savefig(stream, format="png", dpi=100))
    plt.close(figure)
