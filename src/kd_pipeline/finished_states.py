"""Resume states that DVC made useless.

A resume state is a stage's progress towards its outputs for one set of inputs (its
key: kd.dvc_stage.stage_fingerprint). When DVC restores those outputs from its
run-cache instead of running the stage, the state is never resumed, yet it would be
kept among the newest states of other keys (kd.resume.KEEP_OTHER_STATES) for up to a
week. So as a stage starts, it removes the states of the other stages that are
finished for exactly their current inputs: the state's key is what the stage's params
and deps are now, dvc.lock records those same params and deps for it, and its outputs
are in the workspace as dvc.lock records them.
"""
from __future__ import annotations

import fcntl
from pathlib import Path

from kd.dvc_stage import declared_params, dvc_stage, interpolate, stage_fingerprint
from kd.files import file_md5
from kd.locked_inputs import dir_listing
from kd.params import Params, flatten, project_root
from kd.yaml_reader import parse_yaml


def remove_finished_states(current: str, params: Params) -> list[Path]:
    """Remove the states of stages other than `current` whose outputs DVC already holds."""
    resume = project_root() / ".resume"
    try:
        lock = parse_yaml(Path("dvc.lock").read_text(encoding="utf-8"))["stages"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    removed = []
    for stage, entry in lock.items():
        if stage == current or not isinstance(entry, dict) or not list(resume.glob(f"{stage}-*.pt")):
            continue
        if _running(Path(".resume") / f"{stage}.lock") or not dvc_stage(stage):  # this workspace's lock
            continue
        state = resume / f"{stage}-{stage_fingerprint(stage, params, f'stages/{stage}.py')}.pt"
        if state.exists() and _as_locked(stage, entry, params):
            state.unlink()
            removed.append(state)
    return removed


def _running(lock: Path) -> bool:
    """Whether a run of the stage holds its lock (kd_pipeline.stage_lock)."""
    try:
        with open(lock) as f:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        pass
    return False


def _as_locked(stage: str, entry: dict, params: Params) -> bool:
    """dvc.lock's entry for the stage is for its current params and deps (a directory's by
    the cache's listing of it), and its file outputs are in the workspace with the md5s
    recorded there."""
    locked = {k: v for file in (entry.get("params") or {}).values() for k, v in flatten(file).items()}
    if any(locked.get(k, v) != v for k, v in declared_params(stage, params).items()):
        return False
    deps = {interpolate(d, params) for d in dvc_stage(stage).get("deps", [])}
    files = [(o["path"], o["md5"]) for o in [*(entry.get("deps") or []), *(entry.get("outs") or [])]
             if not o.get("md5", ".dir").endswith(".dir")]
    if not any(o["path"] not in deps for o in entry.get("outs") or []):
        return False  # nothing it outputs to go by
    dirs = [(Path(o["path"]), dir_listing(o["md5"])) for o in entry.get("deps") or []
            if o.get("md5", "").endswith(".dir")]
    return (all(Path(p).is_file() and file_md5(p) == md5 for p, md5 in files)
            and all(listing and listing == {f.relative_to(d).as_posix(): file_md5(f)
                                            for f in d.rglob("*") if f.is_file()} for d, listing in dirs))
