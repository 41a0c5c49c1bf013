"""Batched augmentation on tensors: one gather per batch, no per-image Python."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator, flip: bool = False) -> torch.Tensor:
    """Shift each image by its own integer (dy, dx) in [-max_shift, max_shift],
    filling with zeros; optionally mirror half of them left-right.

    With max_shift=4 and flip=True this is the usual CIFAR "pad 4, random crop,
    random flip"; with max_shift=2 it is Hinton's MNIST jitter.
    """
    if max_shift == 0 and not flip:
        return x
    n, c, h, w = x.shape
    s = max_shift
    padded = F.pad(x, (s, s, s, s)) if s else x
    dy = torch.randint(0, 2 * s + 1, (n, 1), generator=generator)
    dx = torch.randint(0, 2 * s + 1, (n, 1), generator=generator)
    rows = dy + torch.arange(h)
    cols = dx + torch.arange(w)
    if flip:
        mirrored = torch.rand(n, generator=generator) < 0.5
        cols = torch.where(mirrored[:, None], cols.flip(1), cols)
    dev = x.device
    return padded[
        torch.arange(n, device=dev)[:, None, None, None],
        torch.arange(c, device=dev)[None, :, None, None],
        rows.to(dev)[:, None, :, None],
        cols.to(dev)[:, None, None, :],
    ]
