"""Files the pipeline writes: atomically, so a crash never leaves half a file."""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from kd.errors import UserError
from kd.process_id import process_alive, this_process


class OutputFileError(UserError, RuntimeError):
    """An output could not be written: no permission, disk full, file size limit, ..."""


def _atomic(path: Path, write) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # The process in the name tells remove_stale_tmp whose temp file it is.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{this_process()}.", suffix=".tmp")
    except OSError as e:
        raise OutputFileError(f"{path}: cannot write it ({e.strerror or e})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise OutputFileError(f"{path}: cannot write it ({e.strerror or e})") from None
    finally:
        Path(tmp).unlink(missing_ok=True)


def save_torch(obj: Any, path: str | Path, *, stream: bool = False) -> None:
    # Serialised in memory first: torch.save turns a failed write (disk full,
    # file size limit) into a RuntimeError that no longer says why. stream=True
    # (large tensors: no second copy in memory) keeps torch's own words instead.
    if stream:
        def write(f):
            try:
                torch.save(obj, f)
            except RuntimeError as e:
                raise OSError(str(e).splitlines()[0]) from None
        _atomic(Path(path), write)
        return
    buf = io.BytesIO()
    torch.save(obj, buf)
    _atomic(Path(path), lambda f: f.write(buf.getbuffer()))


def remove_stale_tmp(directory: str | Path) -> list[Path]:
    """Remove the temp files and dirs that a killed process left in `directory`
    (those of `_atomic`, `scratch_dir` and `staged_dir`, whose process is gone); returns them."""
    removed = []
    for tmp in Path(directory).glob(".*.tmp"):
        if (owner := _TMP_OWNER.search(tmp.name)) and process_alive(owner.group(1)):
            continue
        shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


# ".<name>.<pid>@<start time>.<mkstemp's random part: no dots>.tmp"
_TMP_OWNER = re.compile(r"\.(\d+@[\d.]+)\.[^.]+\.tmp$")


class InputFileError(UserError, RuntimeError):
    """A file an earlier stage should have written is missing or unreadable."""


def load_torch(path: str | Path, *, mmap: bool = False) -> Any:
    # Our own files hold only tensors, dicts and plain values: weights_only is enough.
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise InputFileError(f"{path}: missing; run `dvc repro` to make it") from None
    except Exception as e:  # truncated zip, foreign pickle, ...
        raise InputFileError(f"{path}: unreadable ({type(e).__name__}: {e}); "
                             "remove it and run `dvc repro` to make it again") from None


def write_json(path: str | Path, obj: Any) -> None:
    text = json.dumps(obj, indent=2, sort_keys=True) + "\n"
    _atomic(Path(path), lambda f: f.write(text.encode()))


def write_bytes(path: str | Path, data: bytes) -> None:
    _atomic(Path(path), lambda f: f.write(data))


def write_csv(path: str | Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else [], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    _atomic(Path(path), lambda f: f.write(buf.getvalue().encode()))


def file_md5(path: str | Path) -> str:
    # Memoised per process: a stage checks an input against dvc.lock, then records its md5
    # (soft labels, MLflow lineage), and the CIFAR-10 training set alone is 150 MB. The key
    # holds what any rewrite changes (atomic writes make a new inode), so it is never stale.
    st = os.stat(path)
    return _md5(os.path.realpath(path), st.st_ino, st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=256)
def _md5(path: str, inode: int, size: int, mtime_ns: int) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@contextmanager
def scratch_dir(parent: str | Path):
    """A temp dir in `parent` (same disk as the outputs), removed afterwards; a killed
    process's is removed by the next run (remove_stale_tmp: its process is in the name)."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".scratch.{this_process()}.", suffix=".tmp"))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def staged_dir(path: str | Path):
    """Yield an empty temp dir beside `path`; it replaces `path` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.{this_process()}.", suffix=".tmp"))
    try:
        yield tmp
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
