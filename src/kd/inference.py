"""Inference: logits of a model for a whole uint8 image tensor, batch by batch."""
from __future__ import annotations

import torch
from torch import nn

from kd.device import autocast, inference_batch


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, *, device: torch.device, precision: str = "fp32",
            batch_size: int | None = None) -> torch.Tensor:
    """Logits (float32, on CPU) for uint8 images x."""
    batch_size = batch_size or inference_batch(x.shape)
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(x), batch_size):
        xb = x[start : start + batch_size].to(device).float().div_(255)
        with autocast(device, precision):
            out.append(model(xb).float().cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0)
