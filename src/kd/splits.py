"""The prepared splits, as the stages read them, and the student's transfer set."""
from __future__ import annotations

import json

import torch

from kd.datasets import ImageSpec
from kd.files import InputFileError, load_torch
from kd.locked_inputs import check_input
from kd.paths import PREPARED_META, split_file


def load_split(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images [N, C, H, W] and int64 labels of data/prepared/<split>.pt.

    Memory-mapped: batches read only the images they hold, so a prepared set larger
    than RAM still trains (from the page cache, or the disk)."""
    check_input(split_file(split))
    blob = load_torch(split_file(split), mmap=True)
    return blob["x"], blob["y"]


def load_spec() -> ImageSpec:
    """Classes, image shape, mean and std of the prepared data (data/prepared/meta.json)."""
    check_input(PREPARED_META)
    try:
        return ImageSpec.from_json(json.loads(PREPARED_META.read_text()))
    except FileNotFoundError:
        raise InputFileError(f"{PREPARED_META}: missing; run `dvc repro` to make it") from None
    except (ValueError, KeyError, TypeError) as e:
        raise InputFileError(f"{PREPARED_META}: unreadable ({e}); run `dvc repro prepare`") from None


def keep_classes(x, y, omit: list[int]):
    """Drop the omitted classes (the student's transfer set); also returns the mask."""
    keep = ~torch.isin(y, torch.tensor(omit, dtype=y.dtype))
    if bool(keep.all()):  # no copy of a memory-mapped set that loses nothing
        return x, y, keep
    return x[keep], y[keep], keep
