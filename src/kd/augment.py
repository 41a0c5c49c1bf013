"""Batched augmentation on tensors: one gather per batch, no per-image Python."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Shifts:
    """Per-image random (dy, dx) offsets into the padded image, and mirror flags.

    Drawn apart from the images so that distributed ranks can draw the whole
    batch's shifts from one shared generator and each apply only its own slice:
    the batch is then augmented exactly as in a single-process run.
    """
    jitter: int
    dy: torch.Tensor  # [n, 1]
    dx: torch.Tensor  # [n, 1]
    mirrored: torch.Tensor | None  # [n] bool, None without flips

    def __getitem__(self, index) -> "Shifts":
        m = self.mirrored[index] if self.mirrored is not None else None
        return Shifts(self.jitter, self.dy[index], self.dx[index], m)


def draw_shifts(n: int, jitter: int, generator: torch.Generator, flip: bool = False) -> Shifts | None:
    """None when there is nothing to draw (no shift, no flip)."""
    if jitter == 0 and not flip:
        return None
    s = jitter
    dy = torch.randint(0, 2 * s + 1, (n, 1), generator=generator)
    dx = torch.randint(0, 2 * s + 1, (n, 1), generator=generator)
    mirrored = torch.rand(n, generator=generator) < 0.5 if flip else None
    return Shifts(s, dy, dx, mirrored)


def apply_shifts(x: torch.Tensor, shifts: Shifts | None) -> torch.Tensor:
    if shifts is None:
        return x
    n, c, h, w = x.shape
    s = shifts.jitter
    padded = F.pad(x, (s, s, s, s)) if s else x
    rows = shifts.dy + torch.arange(h)
    cols = shifts.dx + torch.arange(w)
    if shifts.mirrored is not None:
        cols = torch.where(shifts.mirrored[:, None], cols.flip(1), cols)
    dev = x.device
    return padded[
        torch.arange(n, device=dev)[:, None, None, None],
        torch.arange(c, device=dev)[None, :, None, None],
        rows.to(dev)[:, None, :, None],
        cols.to(dev)[:, None, None, :],
    ]


def random_shift(x: torch.Tensor, jitter: int, generator: torch.Generator, flip: bool = False) -> torch.Tensor:
    """Shift each image by its own integer (dy, dx) in [-jitter, jitter],
    filling with zeros; optionally mirror half of them left-right.

    With jitter=4 and flip=True this is the usual CIFAR "pad 4, random crop,
    random flip"; with jitter=2 it is Hinton's MNIST jitter.
    """
    return apply_shifts(x, draw_shifts(len(x), jitter, generator, flip))
