"""A stage's inputs checked against what dvc.lock records, before they are used.

DVC trusts its cache: an object whose bytes changed on disk (bit rot, a stray
write, a bad copy) is checked out as it is, `dvc status` still says up to date
(DVC hashes a file once and then goes by its inode and mtime), and every stage
downstream would silently compute on the damaged file. So before a stage loads a
model, soft labels or prepared data, it compares the file's md5 with the one
dvc.lock records for the output of the stage that made it (a file of a directory
output, such as data/prepared/train.pt, by the per-file md5 in the cache's `.dir`
listing), and refuses a file whose cached copy no longer has the md5 it is filed under.

A file that differs from dvc.lock while its cache object is sound was rebuilt since
the lock was written (a stage run by hand): DVC sees that change itself and reruns
what depends on it, so it passes. No dvc.lock, no entry for the file or no cache
object (a first run, a stage run by hand, a cache-less clone): nothing to compare with.
"""
from __future__ import annotations

import configparser
import json
from functools import lru_cache
from pathlib import Path

from kd.errors import UserError
from kd.files import file_md5
from kd.yaml_reader import parse_yaml

DVC_LOCK = Path("dvc.lock")


class CorruptInputError(UserError, RuntimeError):
    """An input is not the file dvc.lock records, because DVC's cached copy was damaged."""


def check_input(path: str | Path) -> None:
    """Refuse `path` if it and its cache object no longer hold what dvc.lock records."""
    path = Path(path)
    recorded = _recorded(path.as_posix())
    if recorded is None or not path.is_file():
        return  # nothing to compare with; a missing file is the loader's error to report
    want, producer = recorded
    got = file_md5(path)  # memoised: each file is hashed once per process
    if got == want:
        return
    obj = cache_object(want)
    if obj is None or not obj.is_file() or file_md5(obj) == want:
        return  # rebuilt since dvc.lock was written; DVC reruns what depends on it
    raise CorruptInputError(
        f"{path}: md5 {got}, but dvc.lock records {want} for {producer}'s output, and DVC's cached copy "
        f"{obj} no longer has that md5 (the cache is damaged); repair: `{repair_command(path, obj)}`")


def repair_command(path: Path, obj: Path) -> str:
    """Drop the damaged object and the file checked out from it: `dvc repro` then finds the
    output missing and reruns its stage (the run-cache cannot restore what is gone), and the
    new file goes into the cache under its own md5."""
    return f"rm -f {obj} {path} && dvc repro"


def _recorded(path: str) -> tuple[str, str] | None:
    """(md5, producing stage) that dvc.lock records for `path`, or None."""
    try:
        stat = DVC_LOCK.stat()
    except OSError:
        return None
    for stage, out, md5 in _lock_outs(str(DVC_LOCK.resolve()), stat.st_mtime_ns, stat.st_size):
        if path == out:
            return (md5, stage) if not md5.endswith(".dir") else None
        if md5.endswith(".dir") and path.startswith(out.rstrip("/") + "/"):
            inner = dir_listing(md5).get(path[len(out.rstrip("/")) + 1:])
            return (inner, stage) if inner else None
    return None


@lru_cache(maxsize=4)
def _lock_outs(lock: str, mtime_ns: int, size: int) -> list[tuple[str, str, str]]:
    """(stage, out path, md5) of every output in dvc.lock; parsed once per version of the file."""
    try:
        stages = parse_yaml(Path(lock).read_text(encoding="utf-8")).get("stages") or {}
    except (OSError, ValueError, AttributeError):
        return []
    return [(name, Path(o["path"]).as_posix(), o["md5"]) for name, s in stages.items() if isinstance(s, dict)
            for o in s.get("outs") or [] if isinstance(o, dict) and o.get("path") and o.get("md5")]


@lru_cache(maxsize=16)
def dir_listing(dir_md5: str) -> dict[str, str]:
    """relpath -> md5 of a directory output, from its `.dir` object in the cache."""
    obj = cache_object(dir_md5)
    try:
        return {e["relpath"]: e["md5"] for e in json.loads(obj.read_text())} if obj else {}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def cache_object(md5: str) -> Path | None:
    """Where DVC 3 keeps the object of `md5` (its cache may be moved by `cache.dir`)."""
    cache = _cache_dir()
    return cache / "files" / "md5" / md5[:2] / md5[2:] if cache else None


def _cache_dir() -> Path | None:
    dvc = Path(".dvc")
    if not dvc.is_dir():
        return None
    cache = dvc / "cache"
    for name in ("config", "config.local"):  # the local config wins
        cfg = configparser.ConfigParser(strict=False, interpolation=None)
        try:
            cfg.read(dvc / name)
            if cfg.has_option("cache", "dir"):
                cache = dvc / cfg.get("cache", "dir").strip().strip("'\"")
        except configparser.Error:
            pass
    return cache
