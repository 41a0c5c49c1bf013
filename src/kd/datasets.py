"""Raw datasets: fetched from a local mirror or the official source, checked, and
turned into uint8 tensors (MNIST 47 MB, CIFAR-10 184 MB); a folder of your own
images is read by kd.image_folder."""
from __future__ import annotations

import os
import shutil
import socket
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from kd.errors import UserError
from kd.files import file_md5, write_json


class DataError(UserError, RuntimeError):
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


@dataclass(frozen=True)
class ImageSpec:
    """What a model needs to know of its data, kept in data/prepared/meta.json and in
    every checkpoint, so a model file alone says how to feed it and name its outputs."""
    classes: tuple[str, ...]
    shape: tuple[int, int, int]  # C, H, W
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_json(self) -> dict:
        return {"classes": list(self.classes), "shape": list(self.shape), "mean": list(self.mean),
                "std": list(self.std)}

    @classmethod
    def from_json(cls, d: dict) -> "ImageSpec":
        return cls(tuple(d["classes"]), tuple(d["shape"]), tuple(d["mean"]), tuple(d["std"]))


# torchvision's own names and md5s; the mirror holds exactly these files.
MNIST_FILES = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}


# A base URL that replaces the official source (a proxy, a company mirror, a
# test server); it must hold the official files: same names, same md5s.
DOWNLOAD_URL_VAR = "KD_DOWNLOAD_URL"
# Per socket operation (connect, each read), not per download: torchvision sets
# none, so a server that accepts and then stalls would hang the stage forever;
# a slow but live server still finishes.
DOWNLOAD_TIMEOUT_S = 30.0


def _download_url() -> str | None:
    return os.environ.get(DOWNLOAD_URL_VAR) or None


def _source() -> str:
    url = _download_url()
    return f"{url} ({DOWNLOAD_URL_VAR})" if url else "the official source"


def _existing_mirror(mirror: Path | None, dataset: str) -> Path | None:
    """The mirror if it exists; else None (download), said in one line. The
    default mirror then works both where it exists and on a fresh machine."""
    if mirror is None or mirror.is_dir():
        return mirror
    print(f"[prepare] data.mirror: {mirror} not found; downloading {dataset} from {_source()}", flush=True)
    return None


def _download_failed(what: str, mirror: Path | None, e: Exception) -> DataError:
    """One line naming the missing mirror (if any) and why the download failed."""
    why = " ".join(str(e).split()) or type(e).__name__  # torchvision's messages span lines
    if mirror is not None:  # a mirror was named but not found, or we would not download
        return DataError(f"data.mirror: {mirror} not found, and downloading {what} from {_source()} failed: {why}")
    return DataError(f"{what}: downloading from {_source()} failed (no network?): {why}")


@contextmanager
def _download_timeout():
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


def _mnist_class():
    from torchvision.datasets import MNIST

    url = _download_url()
    if url is None:
        return MNIST
    # The same class name: torchvision keeps its files under <root>/<class name>/raw.
    return type("MNIST", (MNIST,), {"mirrors": [url.rstrip("/") + "/"]})


def fetch_mnist(mirror: Path | None, raw_dir: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Return {"train": (x, y), "test": (x, y)} with x uint8 [N, 1, 28, 28].

    From the mirror if it exists, else downloaded; torchvision checks the md5s either way."""
    MNIST = _mnist_class()
    target = raw_dir / "MNIST" / "raw"
    src_dir = _existing_mirror(mirror, "MNIST")
    if src_dir is not None:
        src_dir = src_dir / "mnist"
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
            with _download_timeout():
                ds = MNIST(raw_dir, train=train, download=True)
        except Exception as e:  # torchvision raises URLError, RuntimeError, TimeoutError, ...
            if src_dir is not None:
                raise DataError(f"MNIST {split}: could not load the mirror copy: {e}") from e
            raise _download_failed(f"MNIST {split}", mirror, e) from e
        out[split] = (ds.data.unsqueeze(1).contiguous(), ds.targets.long())
    return out


CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_PER_CLASS = {"train": 5000, "test": 1000}


def _decode_jpegs(files: list[Path]) -> torch.Tensor:
    """uint8 [N, 3, 32, 32]; one batched decode, a clear error naming a bad file."""
    from torchvision.io import ImageReadMode, decode_jpeg, read_file

    blobs = [read_file(str(f)) for f in files]
    try:
        images = decode_jpeg(blobs, mode=ImageReadMode.RGB)
    except RuntimeError:
        images = []
        for f, b in zip(files, blobs):  # the batch failed: find the culprit
            try:
                images.append(decode_jpeg(b, mode=ImageReadMode.RGB))
            except RuntimeError as e:
                raise DataError(f"{f}: not a decodable JPEG ({e})") from None
    for f, img in zip(files, images):
        if tuple(img.shape) != (3, 32, 32):
            raise DataError(f"{f}: expected a 32x32 RGB image, got shape {tuple(img.shape)}")
    return torch.stack(images)


class JpegFiles:
    """Images decoded only when indexed, so a smoke test on a subset decodes only the subset."""

    def __init__(self, files: list[Path]):
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, idx) -> torch.Tensor:
        idx = torch.arange(len(self.files))[idx]
        return _decode_jpegs([self.files[i] for i in idx.tolist()])


def _unexpected(folder: Path, expected: set[Path], what: str) -> None:
    if not folder.is_dir():
        raise DataError(f"{folder}: missing from the CIFAR-10 mirror")
    extra = sorted(set(folder.iterdir()) - expected)
    if extra:
        raise DataError(f"{extra[0]}: unexpected {what} in the CIFAR-10 mirror")


def _cifar10_from_jpegs(root: Path, split: str) -> tuple[JpegFiles, torch.Tensor]:
    per_class = CIFAR10_PER_CLASS[split]
    folders = [root / split / name for name in CIFAR10_CLASSES]  # class index = alphabetical order
    # An extra class folder (or a stray file) would otherwise be silently left out.
    _unexpected(root / split, set(folders), "entry (not one of the 10 class folders)")
    for folder in folders:
        for i in range(per_class):
            if not (folder / f"{i:04d}.jpg").is_file():
                raise DataError(f"{folder / f'{i:04d}.jpg'}: missing from the CIFAR-10 mirror")
        _unexpected(folder, {folder / f"{i:04d}.jpg" for i in range(per_class)}, "extra file")
    # Round-robin over classes (image i of class c at 10*i + c), so that every
    # prefix, e.g. data.max_train, is class-balanced like the official order.
    files = [folder / f"{i:04d}.jpg" for i in range(per_class) for folder in folders]
    labels = torch.arange(len(CIFAR10_CLASSES)).repeat(per_class)
    return JpegFiles(files), labels


def _cifar10_class():
    from torchvision.datasets import CIFAR10

    url = _download_url()
    if url is None:
        return CIFAR10
    return type("CIFAR10", (CIFAR10,), {"url": f"{url.rstrip('/')}/{CIFAR10.filename}"})


def fetch_cifar10(mirror: Path | None, raw_dir: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Return {"train": (x, y), "test": (x, y)}; x[idx] gives uint8 [n, 3, 32, 32].

    The mirror is a JPEG (q75) copy: it is decoded straight from the read-only
    tree (lazily: only the images indexed), nothing is copied. Without one
    (null, or not found): torchvision's official pickles.
    """
    raw_dir.mkdir(parents=True, exist_ok=True)
    if (found := _existing_mirror(mirror, "CIFAR-10")) is not None:
        root = found / "cifar10-jpeg"
        if not root.is_dir():
            raise DataError(f"{root}: no CIFAR-10 JPEG tree in the mirror")
        _unexpected(root, {root / "train", root / "test"}, "entry (not train/ or test/)")
        out = {split: _cifar10_from_jpegs(root, split) for split in ("train", "test")}
        source = {"source": str(root), "format": "jpeg-q75"}
    else:
        CIFAR10 = _cifar10_class()
        out = {}
        for split, train in (("train", True), ("test", False)):
            try:
                with _download_timeout():
                    ds = CIFAR10(raw_dir, train=train, download=True)
            except Exception as e:  # URLError, RuntimeError (bad md5), TimeoutError, ...
                raise _download_failed(f"CIFAR-10 {split}", mirror, e) from e
            out[split] = (torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(ds.targets))
        source = {"source": "torchvision CIFAR10", "format": "official pickles"}
    for split, (_, y) in out.items():
        counts = torch.bincount(y, minlength=len(CIFAR10_CLASSES)).tolist()
        if counts != [CIFAR10_PER_CLASS[split]] * len(CIFAR10_CLASSES):
            raise DataError(f"CIFAR-10 {split}: class counts {counts}, expected {CIFAR10_PER_CLASS[split]} each")
    # Says which copy the numbers were measured on (JPEG accuracies run a little lower).
    write_json(raw_dir / "source.json", source)
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
    "cifar10": DatasetInfo(
        num_classes=10,
        train_size=50000,
        shape=(3, 32, 32),
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
        fetch=fetch_cifar10,
        classes=CIFAR10_CLASSES,
    ),
}


# A folder of your own images (kd.image_folder): its classes, size and statistics
# are known only once `prepare` has read it.
FOLDER = "folder"
DATASET_NAMES = (*DATASETS, FOLDER)


def builtin_spec(name: str) -> ImageSpec:
    info = DATASETS[name]
    return ImageSpec(info.classes, info.shape, info.mean, info.std)


def split_train_val(x, y: torch.Tensor, val_size: int, seed: int, max_train: int | None = None):
    """Seeded split; then only the first max_train training images (smoke tests).
    val_size 0: an empty validation split, every image trains."""
    if not 0 <= val_size < len(y):
        raise DataError(f"data.val_size={val_size} must be between 0 and {len(y) - 1}")
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    val, train = perm[:val_size].sort().values, perm[val_size:].sort().values[:max_train]
    return (x[train], y[train]), (x[val], y[val])


def check_split(name: str, x: torch.Tensor, y: torch.Tensor, info: DatasetInfo | ImageSpec,
                empty_ok: bool = False) -> None:
    if x.dtype != torch.uint8 or tuple(x.shape[1:]) != info.shape:
        raise DataError(f"{name}: expected uint8 images of shape {info.shape}, got {x.dtype} {tuple(x.shape[1:])}")
    if len(x) != len(y):
        raise DataError(f"{name}: {len(x)} images but {len(y)} labels")
    if len(y) == 0:
        if empty_ok:
            return
        raise DataError(f"{name}: no images (give it a larger share, or more images)")
    if not (0 <= int(y.min()) and int(y.max()) < info.num_classes):
        raise DataError(f"{name}: labels outside 0..{info.num_classes - 1}")
