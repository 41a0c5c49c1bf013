"""Your own images as a dataset: `<root>/<class>/<image>`, optionally split as
`<root>/{train,val,test}/<class>/<image>`.

Every image is decoded once, in parallel, turned into RGB (EXIF orientation
applied), resized so its shorter side is `image_size` and centre-cropped to a
square, so training works on the same uint8 tensors as for the built-in data.
Class index = position of the folder name in sorted (code point) order, as in
torchvision's ImageFolder.
"""
from __future__ import annotations

import hashlib
import io
import multiprocessing
import os
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from kd.errors import UserError

SPLITS = ("train", "val", "test")


class ImageFolderError(UserError, RuntimeError):
    """The image folder is missing, malformed or holds something that is not a usable image."""


def _visible(path: Path | str) -> bool:
    return not Path(path).name.startswith(".")  # .DS_Store, .git, editors' swap files


def _class_dirs(folder: Path, where: str) -> list[Path]:
    entries = sorted((e for e in folder.iterdir() if _visible(e)), key=lambda e: e.name)
    stray = [e for e in entries if not e.is_dir()]
    if stray:
        raise ImageFolderError(f"{stray[0]}: a file where {where} holds only class folders "
                               "(<class>/<image>)")
    return entries


def layout(root: str | Path) -> dict[str, list[Path]]:
    """{split: [class folder, ...]}: the splits the folder holds ("all" when it has none),
    each with its class folders in class-index order. Raises on anything ambiguous."""
    root = Path(root)
    if not root.is_dir():
        raise ImageFolderError(f"data.path: {root} is not a folder "
                               "(expected <path>/<class>/<image>; see README, 'Distil your own classifier')")
    top = _class_dirs(root, "data.path")
    if not top:
        raise ImageFolderError(f"data.path: {root} is empty (expected <path>/<class>/<image>)")
    names = {d.name for d in top}
    if "train" in names and names & {"val", "test"}:
        if names - set(SPLITS):
            raise ImageFolderError(f"data.path: {root} mixes split folders (train/val/test) with "
                                   f"{sorted(names - set(SPLITS))}; use one layout")
        if "test" not in names:
            raise ImageFolderError(f"data.path: {root} has train/ and val/ but no test/")
        splits = {d.name: _class_dirs(d, str(d)) for d in top}
        _same_classes(splits)
    else:
        splits = {"all": top}
    classes = [d.name for d in next(iter(splits.values()))]
    if len(classes) < 2:
        raise ImageFolderError(f"data.path: {root} holds a single class ({classes[0] if classes else 'none'}); "
                               "a classifier needs at least 2 class folders")
    return splits


def _same_classes(splits: dict[str, list[Path]]) -> None:
    ref = [d.name for d in splits["train"]]
    for split, dirs in splits.items():
        names = [d.name for d in dirs]
        if names != ref:
            missing, extra = sorted(set(ref) - set(names)), sorted(set(names) - set(ref))
            raise ImageFolderError(
                f"data.path: the class folders of {split}/ differ from train/'s: "
                + "; ".join(x for x in (f"missing {missing}" if missing else "",
                                        f"extra {extra}" if extra else "") if x))


def class_names(root: str | Path) -> list[str]:
    """The class names, in class-index order (cheap: folder names only)."""
    return [d.name for d in next(iter(layout(root).values()))]


def list_images(class_dir: Path) -> list[Path]:
    """Every visible file below a class folder (subfolders too), in a stable order."""
    files = sorted(p for p in class_dir.rglob("*")
                   if p.is_file() and all(_visible(q) for q in p.relative_to(class_dir.parent).parts))
    if not files:
        raise ImageFolderError(f"{class_dir}: class folder with no images")
    return files


def to_rgb(im):
    """Any Pillow mode as 8-bit RGB: palette and grey expanded, alpha composited on
    white, CMYK converted, 16-bit scaled down (not clipped)."""
    from PIL import Image

    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im, dtype=np.int64).clip(0, 65535) >> 8
        return Image.fromarray(arr.astype(np.uint8), "L").convert("RGB")
    if im.mode == "F":
        return Image.fromarray(np.asarray(im).clip(0, 255).astype(np.uint8), "L").convert("RGB")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


def load_image(data: bytes, size: int, channels: int = 3) -> np.ndarray:
    """uint8 [channels, size, size]: EXIF-oriented, RGB (or grey for 1 channel),
    shorter side resized to `size` (antialiased bilinear), centre-cropped. The first
    frame of an animation. Raises what Pillow raises; a decompression bomb is an error."""
    from PIL import Image, ImageOps

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(io.BytesIO(data)) as im:
            im.seek(0)
            im = to_rgb(ImageOps.exif_transpose(im))
    if channels == 1:
        im = im.convert("L")
    w, h = im.size
    scale = size / min(w, h)
    im = im.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.Resampling.BILINEAR)
    w, h = im.size
    left, top = round((w - size) / 2), round((h - size) / 2)
    arr = np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def why_unreadable(e: Exception) -> str:
    from PIL import Image

    if isinstance(e, (Image.DecompressionBombWarning, Image.DecompressionBombError)):
        return (f"larger than Pillow's decompression-bomb limit (PIL.Image.MAX_IMAGE_PIXELS = "
                f"{Image.MAX_IMAGE_PIXELS:,} pixels); refused ({e})")
    if isinstance(e, Image.UnidentifiedImageError):
        return "not an image Pillow can read"
    return f"cannot be decoded ({type(e).__name__}: {e})"


def _decode(job: tuple[int, str, int]) -> tuple[int, str, np.ndarray | None, str | None]:
    i, path, size = job
    try:
        data = Path(path).read_bytes()
        digest = hashlib.md5(data).hexdigest()
        return i, digest, load_image(data, size), None
    except Exception as e:  # one bad file must not stop the others: all are reported
        return i, "", None, why_unreadable(e)


def decode_all(groups: dict[str, list[Path]], size: int, alloc, *, workers: int | None = None
               ) -> tuple[dict[str, torch.Tensor], dict[str, list[str]], float]:
    """Decode every file of every group over the machine's cores, with one progress bar, into
    `alloc(group, n)` (a uint8 [n, 3, size, size] tensor each); returns the tensors, the md5
    of each file's bytes and the seconds. Every file is tried; then the first failure is
    raised, naming the file and how many more failed."""
    workers = workers or len(os.sched_getaffinity(0))
    out = {g: alloc(g, len(fs)) for g, fs in groups.items()}
    md5 = {g: [""] * len(fs) for g, fs in groups.items()}
    where = [(g, i) for g, fs in groups.items() for i in range(len(fs))]
    files = [f for fs in groups.values() for f in fs]
    jobs = [(j, str(f), size) for j, f in enumerate(files)]
    bad = []
    t0 = time.perf_counter()
    # fork: workers need no re-import of torch; they only run Pillow.
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(workers) if workers > 1 else _Serial() as pool:
        results = pool.imap_unordered(_decode, jobs, chunksize=max(1, min(64, len(jobs) // (4 * workers) or 1)))
        for j, digest, arr, err in tqdm(results, total=len(jobs), desc="decoding", unit="img", disable=None):
            if err:
                bad.append((j, err))
            else:
                g, i = where[j]
                out[g][i] = torch.from_numpy(arr)
                md5[g][i] = digest
    if bad:
        bad.sort(key=lambda b: str(files[b[0]]))  # by path, whatever order the splits put them in
        first = f"{files[bad[0][0]]}: {bad[0][1]}"
        more = (f"; {len(bad) - 1} more unreadable: " + ", ".join(str(files[j]) for j, _ in bad[1:4])
                + (", ..." if len(bad) > 4 else "")) if len(bad) > 1 else ""
        raise ImageFolderError(first + more + " (fix or remove them)")
    return out, md5, time.perf_counter() - t0


class _Serial:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    @staticmethod
    def imap_unordered(fn, jobs, chunksize=1):
        return map(fn, jobs)


def stratified_split(labels: torch.Tensor, sizes: dict[str, int | float], seed: int) -> dict[str, torch.Tensor]:
    """Indices per split: for each class, a seeded shuffle cut into the requested shares
    (a float is a fraction of each class, an int a total count spread over the classes
    in proportion). Whatever is left is "train"; every class keeps at least one."""
    n = len(labels)
    g = torch.Generator().manual_seed(seed)
    out: dict[str, list[torch.Tensor]] = {name: [] for name in [*sizes, "train"]}
    for c in labels.unique().tolist():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        start = 0
        for name, size in sizes.items():
            share = size if isinstance(size, float) else size / n
            k = min(round(share * len(idx)), len(idx) - start - 1)
            out[name].append(idx[start : start + max(k, 0)])
            start += max(k, 0)
        out["train"].append(idx[start:])
    return {name: torch.cat(parts).sort().values for name, parts in out.items()}


def round_robin(labels: torch.Tensor) -> torch.Tensor:
    """An order that cycles through the classes, so any prefix (data.max_train) is balanced."""
    rank = torch.empty_like(labels)
    for c in labels.unique():
        where = torch.nonzero(labels == c).flatten()
        rank[where] = torch.arange(len(where))
    return torch.argsort(rank * (int(labels.max()) + 1) + labels, stable=True)


def check_leakage(md5: dict[str, list[str]], files: dict[str, list[Path]]) -> None:
    """The same bytes in two splits would score the model on what it trained on."""
    seen: dict[str, tuple[str, Path]] = {}
    clashes = []
    for split in SPLITS:
        for digest, f in zip(md5.get(split, []), files.get(split, [])):
            if digest in seen and seen[digest][0] != split:
                clashes.append(f"{seen[digest][1]} = {f}")
            else:
                seen.setdefault(digest, (split, f))
    if clashes:
        raise ImageFolderError(
            f"the same image is in two splits ({len(clashes)} pair(s), a leak from training into evaluation): "
            + "; ".join(clashes[:3]) + ("; ..." if len(clashes) > 3 else "") + "; remove the duplicates")


def channel_stats(x: torch.Tensor, budget: int = 1 << 25) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images, in [0, 1]: float64 sums over chunks of about
    `budget` bytes, so a large set needs no float copy of itself."""
    c = x.shape[1]
    s, s2, n = torch.zeros(c, dtype=torch.float64), torch.zeros(c, dtype=torch.float64), 0
    chunk = max(1, budget // (8 * x[0].numel()))
    for start in range(0, len(x), chunk):
        xb = x[start : start + chunk].to(torch.float64).div_(255).transpose(0, 1).reshape(c, -1)
        s += xb.sum(1)
        s2 += (xb * xb).sum(1)
        n += xb.shape[1]
    mean = s / n
    std = (s2 / n - mean * mean).clamp_min(1e-12).sqrt()
    return [round(v, 6) for v in mean.tolist()], [round(v, 6) for v in std.tolist()]


def file_backed(folder: Path, size: int):
    """An allocator for decode_all: each split's tensor mapped onto a file in `folder`, so its
    pages are the page cache's to write out and drop, not memory the process must hold."""
    def alloc(split: str, n: int) -> torch.Tensor:
        shape = (n, 3, size, size)
        if n == 0:
            return torch.empty(shape, dtype=torch.uint8)
        path = folder / f"{split}.uint8"
        return torch.from_file(str(path), shared=True, size=n * 3 * size * size, dtype=torch.uint8).view(shape)
    return alloc


def read_folder(root: str | Path, size: int, *, val_size: int | float, test_size: int | float, seed: int,
                max_train: int | None = None, scratch: Path | None = None) -> dict:
    """Split the folder by its file list, then decode each split straight into its own tensor
    (file-backed in `scratch` if given): {"splits": {split: (x, y)}, "classes", "images",
    "seconds", "layout"}. Train is in round-robin class order, cut to `max_train`."""
    splits = layout(root)
    classes = [d.name for d in next(iter(splits.values()))]
    files: dict[str, list[Path]] = {}
    labels: dict[str, torch.Tensor] = {}
    for split, dirs in splits.items():
        per_class = [list_images(d) for d in dirs]
        files[split] = [f for fs in per_class for f in fs]
        labels[split] = torch.tensor([c for c, fs in enumerate(per_class) for _ in fs], dtype=torch.long)
    wanted = {"val": val_size, "test": test_size} if "all" in splits else (
        {} if "val" in splits else {"val": val_size})
    if wanted:  # carve what the folder does not hold, stratified
        source = "all" if "all" in splits else "train"
        counts = {k: v for k, v in wanted.items() if isinstance(v, int)}
        if sum(counts.values()) >= len(files[source]):
            key = next(iter(counts))
            raise ImageFolderError(f"data.{key}_size: {counts[key]} images, but {source} holds "
                                   f"{len(files[source])}; give a fraction such as 0.1, or a smaller count")
        src_files, y = files.pop(source), labels.pop(source)
        for split, idx in stratified_split(y, wanted, seed).items():
            files[split] = [src_files[i] for i in idx.tolist()]
            labels[split] = y[idx]
    order = round_robin(labels["train"])[:max_train]
    files["train"] = [files["train"][i] for i in order.tolist()]
    labels["train"] = labels["train"][order]
    groups = {split: files[split] for split in SPLITS}
    alloc = file_backed(scratch, size) if scratch else (
        lambda split, n: torch.empty((n, 3, size, size), dtype=torch.uint8))
    images, md5, seconds = decode_all(groups, size, alloc)
    check_leakage(md5, groups)
    return {"splits": {split: (images[split], labels[split]) for split in SPLITS}, "classes": classes,
            "seconds": seconds, "images": sum(len(f) for f in groups.values()), "layout": sorted(splits)}
