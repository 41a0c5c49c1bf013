"""Teacher logits, computed once and stored with the hashes of their inputs.

Logits, not probabilities: the temperature is applied in the loss, so changing
it never recomputes them. The hashes let a student refuse logits that came
from another teacher or another copy of the data.
"""
from __future__ import annotations

from pathlib import Path

import torch

from kd.files import file_md5, load_torch, save_torch


class StaleSoftLabelsError(RuntimeError):
    """Soft labels do not belong to the current teacher or data."""


def save_soft_labels(path: Path, logits: torch.Tensor, *, teacher: Path, data: Path) -> None:
    save_torch({"logits": logits, "teacher_md5": file_md5(teacher), "data_md5": file_md5(data)}, path)


def load_soft_labels(path: Path, *, teacher: Path, data: Path, n: int) -> torch.Tensor:
    blob = load_torch(path)
    for key, src in (("teacher_md5", teacher), ("data_md5", data)):
        if blob[key] != file_md5(src):
            raise StaleSoftLabelsError(
                f"{path} was made from a different {src} ({key} {blob[key]} != {file_md5(src)}); "
                "rerun `dvc repro generate_soft_labels`"
            )
    if len(blob["logits"]) != n:
        raise StaleSoftLabelsError(f"{path} holds {len(blob['logits'])} logits for {n} images")
    return blob["logits"]
