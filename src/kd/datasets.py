"""Raw datasets: fetched from a local mirror or the official source, checked, and
turned into uint8 tensors that fit in memory (MNIST 47 MB, CIFAR-10 184 MB)."""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from kd.files import file_md5


class DataError(RuntimeError):
    """Raw data is missing, corrupt or not what we expect."""


@dataclass(frozen=True)
class DatasetInfo:
    num_classes: int
    train_size: int  # before the validation split
    shape: tuple[int, int, int]  # C, H, W
    mean: tuple[float, ...]
    std: tuple[float, ...]
    fetch: Callable[[Path | None, Path], dict[str, tuple[torch.Tensor, torch.Tensor]]]
    classes: tuple[str, ...] = ()


# torchvision's own names and md5s; the mirror holds exactly these files.
MNIST_FILES = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}


def fetch_mnist(mirror: Path | None, raw_dir: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Return {"train": (x, y), "test": (x, y)} with x uint8 [N, 1, 28, 28]."""
    from torchvision.datasets import MNIST

    target = raw_dir / "MNIST" / "raw"
    if mirror is not None:
        src_dir = mirror / "mnist"
        for name, md5 in MNIST_FILES.items():  # check all before copying any
            src = src_dir / name
            if not src.is_file():
                raise DataError(f"{src}: missing from the MNIST mirror")
            if file_md5(src) != md5:
                raise DataError(f"{src}: md5 mismatch (file truncated or altered), expected {md5}")
        target.mkdir(parents=True, exist_ok=True)
        for name in MNIST_FILES:
            shutil.copyfile(src_dir / name, target / name)
    out = {}
    for split, train in (("train", True), ("test", False)):
        try:
            ds = MNIST(raw_dir, train=train, download=True)
        except Exception as e:  # torchvision raises URLError, RuntimeError, ...
            where = "the mirror copy" if mirror else "the official download (no network?)"
            raise DataError(f"MNIST {split}: could not load from {where}: {e}") from e
        out[split] = (ds.data.unsqueeze(1).contiguous(), ds.targets.long())
    return out


DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo(
        num_classes=10,
        train_size=60000,
        shape=(1, 28, 28),
        mean=(0.1307,),
        std=(0.3081,),
        fetch=fetch_mnist,
        classes=tuple(str(d) for d in range(10)),
    ),
}


def split_train_val(x: torch.Tensor, y: torch.Tensor, val_size: int, seed: int):
    if not 0 < val_size < len(y):
        raise DataError(f"data.val_size={val_size} must be between 1 and {len(y) - 1}")
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    val, train = perm[:val_size].sort().values, perm[val_size:].sort().values
    return (x[train], y[train]), (x[val], y[val])


def check_split(name: str, x: torch.Tensor, y: torch.Tensor, info: DatasetInfo) -> None:
    if x.dtype != torch.uint8 or tuple(x.shape[1:]) != info.shape:
        raise DataError(f"{name}: expected uint8 images of shape {info.shape}, got {x.dtype} {tuple(x.shape[1:])}")
    if len(x) != len(y):
        raise DataError(f"{name}: {len(x)} images but {len(y)} labels")
    if len(y) and not (0 <= int(y.min()) and int(y.max()) < info.num_classes):
        raise DataError(f"{name}: labels outside 0..{info.num_classes - 1}")
