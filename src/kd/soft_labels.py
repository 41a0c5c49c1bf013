"""Teacher logits, computed once and stored with the hashes of their inputs.

Logits, not probabilities: the temperature is applied in the loss, so changing
it never recomputes them. The hashes let a student refuse logits that came
from another teacher or another copy of the data.

Under augmentation the student must be matched to the teacher's logits for the
*same* augmented image, not for the clean one. The view cache stores, for each
training image i and view k < K, the augmentation parameters and the teacher's
logits of that view; the student draws one view per sample. View k of image i
is the i-th draw of a generator seeded with (seed, k), so the views can be
regenerated exactly (`view_shifts`). With no augmentation and K=1 the single
view is the clean image: plain Hinton soft labels.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from kd.augment import Shifts, apply_shifts, draw_shifts
from kd.device import autocast, inference_batch, prepare_model
from kd.errors import UserError
from kd.files import file_md5, load_torch, save_torch
from kd.locked_inputs import check_input


class StaleSoftLabelsError(UserError, RuntimeError):
    """Soft labels do not belong to the current teacher, data or augmentation."""


@dataclass(frozen=True)
class ViewCache:
    """The cached teacher signal: K augmented views per image and their teacher logits."""
    shifts: Shifts | None  # indexed [view, image]; None: no augmentation, every view is the clean image
    jitter: int
    flip: bool
    logits: torch.Tensor  # float32 [K, N, classes]

    @property
    def views(self) -> int:
        return self.logits.shape[0]

    def __len__(self) -> int:
        return self.logits.shape[1]

    def subset(self, keep: torch.Tensor) -> "ViewCache":
        """Only the images selected by `keep` (a mask or index over N)."""
        shifts = self.shifts[:, keep] if self.shifts else None
        return ViewCache(shifts, self.jitter, self.flip, self.logits[:, keep])

    def view_shifts(self, view: torch.Tensor, idx: torch.Tensor) -> Shifts | None:
        """The augmentation of view view[j] of image idx[j]: what the student is shown."""
        return self.shifts[view, idx] if self.shifts else None

    def logits_for(self, x: torch.Tensor, idx: torch.Tensor, view: torch.Tensor | None) -> torch.Tensor:
        """The teacher's logits of the images the student sees (x is view `view` of images `idx`)."""
        return self.logits[view, idx].to(x.device)


class LiveTeacher:
    """The live teacher signal (`soft_labels.mode: live`): the teacher runs on every batch."""

    def __init__(self, teacher: nn.Module, device: torch.device, precision: str):
        # The layout the teacher trained in: channels_last doubles conv inference in bf16 here.
        self.teacher = prepare_model(teacher).to(device).eval()
        self.device, self.precision = device, precision

    def subset(self, keep: torch.Tensor) -> "LiveTeacher":
        return self

    @torch.no_grad()
    def logits_for(self, x: torch.Tensor, idx: torch.Tensor, view: torch.Tensor | None) -> torch.Tensor:
        with autocast(self.device, self.precision):
            return self.teacher(x).float()


def view_shifts(n: int, views: int, jitter: int, flip: bool, seed: int) -> Shifts | None:
    """The augmentation of every (view, image), indexed [view, image]; None without augmentation."""
    per_view = [draw_shifts(n, jitter, torch.Generator().manual_seed(seed * 1_000_003 + k), flip)
                for k in range(views)]
    if per_view[0] is None:
        return None
    mirrored = torch.stack([v.mirrored for v in per_view]) if flip else None
    return Shifts(jitter, torch.stack([v.dy for v in per_view]), torch.stack([v.dx for v in per_view]), mirrored)


@torch.no_grad()
def teacher_view_logits(teacher: nn.Module, x: torch.Tensor, shifts: Shifts | None, views: int, *,
                        device: torch.device, precision: str = "fp32", batch_size: int | None = None) -> torch.Tensor:
    """float32 [views, N, classes] logits of the teacher on each view of uint8 images x."""
    batch_size = batch_size or inference_batch(x.shape)
    teacher.eval()
    out = []
    for k in range(views):
        chunks = []
        for start in range(0, len(x), batch_size):
            sl = slice(start, start + batch_size)
            xb = apply_shifts(x[sl], shifts[k, sl] if shifts else None)
            with autocast(device, precision):
                chunks.append(teacher(xb.to(device).float().div_(255)).float().cpu())
        out.append(torch.cat(chunks))
    return torch.stack(out)


def save_soft_labels(path: Path, cache: ViewCache | None, *, teacher: Path, data: Path, mode: str,
                     made_with: dict | None = None) -> None:
    """cache=None in live mode: the file then only records that choice. `made_with`:
    the params the views depend on (flat keys, e.g. {"seed": 0}), checked on load."""
    blob = {"mode": mode, "teacher_md5": file_md5(teacher), "data_md5": file_md5(data),
            "params": dict(made_with or {})}
    if cache is not None:
        sh = cache.shifts
        blob.update(logits=cache.logits, jitter=cache.jitter, flip=cache.flip,
                    shift_dy=sh.dy if sh else None, shift_dx=sh.dx if sh else None,
                    shift_mirrored=sh.mirrored if sh else None)
    save_torch(blob, path)


def load_soft_labels(path: Path, *, teacher: Path, data: Path, n: int, params: dict) -> ViewCache | None:
    """The view cache (None in live mode), once the one check of it has passed: it was
    made from this teacher and this data, for `n` images, with the same values of every
    param it depends on (`params`: the current ones, flat; the file records its own)."""
    for f in (path, teacher, data):  # the md5s recorded below are only as good as these files
        check_input(f)
    blob = load_torch(path)
    for key, src in (("teacher_md5", teacher), ("data_md5", data)):
        if blob[key] != file_md5(src):
            raise StaleSoftLabelsError(
                f"{path} was made from a different {src} ({key} {blob[key]} != {file_md5(src)}); "
                "rerun `dvc repro generate_soft_labels`"
            )
    if not blob.get("params"):
        raise StaleSoftLabelsError(f"{path} does not record the params it was made with; "
                                   "rerun `dvc repro generate_soft_labels`")
    changed = [f"{k}={v!r} (now {params.get(k, '(none)')!r})" for k, v in sorted(blob["params"].items())
               if params.get(k, "(none)") != v]
    if changed:
        raise StaleSoftLabelsError(f"{path} was made with other params: {', '.join(changed)}; "
                                   "rerun `dvc repro generate_soft_labels`")
    if blob["mode"] == "live":
        return None
    if blob["logits"].shape[1] != n:
        raise StaleSoftLabelsError(f"{path} holds {blob['logits'].shape[1]} logits for {n} images")
    shifts = None
    if blob["shift_dy"] is not None:
        shifts = Shifts(blob["jitter"], blob["shift_dy"], blob["shift_dx"], blob["shift_mirrored"])
    return ViewCache(shifts, blob["jitter"], blob["flip"], blob["logits"])


def teacher_signal(path: Path, *, teacher: Path, data: Path, n: int, params: dict, device: torch.device,
                   precision: str) -> ViewCache | LiveTeacher:
    """What the student learns from: the cached views, or the teacher itself in live mode.
    Either way the file is checked first, so a stale one fails before any training."""
    cache = load_soft_labels(path, teacher=teacher, data=data, n=n, params=params)
    if cache is not None:
        return cache
    from kd.checkpoint import load_model

    return LiveTeacher(load_model(teacher)[0], device, precision)
