"""Pictures for the MLflow UI that it cannot chart from logged metrics: confusion
matrices and reliability diagrams. (Learning curves it draws itself from the
per-epoch metrics.)"""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # stages run headless
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402


def confusion_matrix(logits: torch.Tensor, y: torch.Tensor, classes, title: str):
    n = len(classes)
    counts = torch.zeros(n, n, dtype=torch.long)
    counts.index_put_((y, logits.argmax(1)), torch.ones(len(y), dtype=torch.long), accumulate=True)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    # Log colour scale: the diagonal holds ~99% of the images and would hide every error.
    # log1p, not log: a single error must not get the colour of none.
    ax.imshow(counts.double().log1p().numpy(), cmap="Blues")
    for i in range(n):
        for j in range(n):
            if counts[i, j]:
                ax.text(j, i, int(counts[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if i == j else "black")
    ax.set(xticks=range(n), yticks=range(n), xticklabels=classes, yticklabels=classes,
           xlabel="predicted", ylabel="actual", title=title)
    fig.tight_layout()
    return fig


def reliability_diagram(rows: list[dict], title: str):
    """rows: kd.evaluate.reliability_rows."""
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], ls="--", color="grey", label="calibrated")
    ax.plot([r["confidence"] for r in rows], [r["accuracy"] for r in rows], marker="o", label="model")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (top-1 probability)", ylabel="accuracy", title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    fig.tight_layout()
    return fig
