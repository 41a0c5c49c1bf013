"""Pictures for the MLflow UI: learning curves and confusion matrices."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # stages run headless
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def learning_curve(history: list[dict], title: str):
    epochs = [h["epoch"] for h in history]
    fig, (loss, acc) = plt.subplots(1, 2, figsize=(9, 3.5))
    for split in ("train", "val"):
        loss.plot(epochs, [h[f"{split}_loss"] for h in history], marker=".", label=split)
        acc.plot(epochs, [h[f"{split}_acc"] for h in history], marker=".", label=split)
    loss.set(xlabel="epoch", ylabel="loss", title="loss")
    acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in (loss, acc):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def confusion_matrix(logits: torch.Tensor, y: torch.Tensor, classes, title: str):
    n = len(classes)
    counts = torch.zeros(n, n, dtype=torch.long)
    counts.index_put_((y, logits.argmax(1)), torch.ones(len(y), dtype=torch.long), accumulate=True)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    # Log colour scale: the diagonal holds ~99% of the images and would hide every error.
    ax.imshow(counts.clamp(min=1).log().numpy(), cmap="Blues")
    for i in range(n):
        for j in range(n):
            if counts[i, j]:
                ax.text(j, i, int(counts[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if i == j else "black")
    ax.set(xticks=range(n), yticks=range(n), xticklabels=classes, yticklabels=classes,
           xlabel="predicted", ylabel="actual", title=title)
    fig.tight_layout()
    return fig
