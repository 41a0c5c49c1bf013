"""Inference and the numbers we report about a model."""
from __future__ import annotations

import torch
from torch import nn

from kd.device import autocast


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, *, device: torch.device, amp: bool = False,
            batch_size: int = 1000) -> torch.Tensor:
    """Logits (float32, on CPU) for uint8 images x."""
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(x), batch_size):
        xb = x[start : start + batch_size].to(device).float().div_(255)
        with autocast(device, amp):
            out.append(model(xb).float().cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0)


def _rate(hits: torch.Tensor) -> float:
    # Exact counts, rounded for readable metrics files (no float32 noise).
    return round(int(hits.sum()) / len(hits), 6)


def summarize(logits: torch.Tensor, y: torch.Tensor, num_classes: int, omitted: list[int] = ()) -> dict:
    pred = logits.argmax(1)
    right = pred == y
    per_class = {
        str(c): _rate(right[y == c]) for c in range(num_classes) if (y == c).any()
    }
    out = {
        "accuracy": _rate(right),
        "errors": int((~right).sum()),
        "per_class_accuracy": per_class,
    }
    if omitted:
        mask = torch.isin(y, torch.tensor(list(omitted)))
        out["omitted_accuracy"] = _rate(right[mask])
    return out


def confusion_rows(logits: torch.Tensor, y: torch.Tensor, classes) -> list[dict]:
    """One row per test image, the format of DVC's confusion-matrix template."""
    pred = logits.argmax(1).tolist()
    return [{"actual": classes[a], "predicted": classes[p]} for a, p in zip(y.tolist(), pred)]
