"""The prepared splits, as the stages read them, and the student's transfer set."""
from __future__ import annotations

import torch

from kd.files import load_torch
from kd.paths import split_file


def load_split(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images [N, C, H, W] and int64 labels of data/prepared/<split>.pt."""
    blob = load_torch(split_file(split))
    return blob["x"], blob["y"]


def keep_classes(x, y, omit: list[int]):
    """Drop the omitted classes (the student's transfer set); also returns the mask."""
    keep = ~torch.isin(y, torch.tensor(omit, dtype=y.dtype))
    return x[keep], y[keep], keep
