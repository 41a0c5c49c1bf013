"""Finished experiments, kept in a committed file beside the report so they outlive the clone.

DVC keeps experiments as git refs of one clone; `dvc exp push <remote>` shares them where
there is a git remote to push to. A study that spans sessions on fresh clones (CI, a new
machine) would otherwise start over and its report could not be regenerated. For each
finished experiment the record keeps what the report and the reuse check need: its name,
params, metrics, the commits it ran on, and a fingerprint of the pipeline code it ran.
One JSON object a line, sorted by name, so a new result is a one-line diff.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from kd.files import write_bytes
from kd_study.dvc_exps import Shown, fingerprint
from kd_study.experiments import PosterError


def load(path: Path) -> list[Shown]:
    if not path.is_file():
        return []
    runs = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            run = Shown(**{**json.loads(line), "state": "success"})
            if not (isinstance(run.code, str) and isinstance(run.params, dict) and isinstance(run.metrics, dict)):
                raise ValueError("no code fingerprint, params or metrics")
        except (ValueError, TypeError) as e:
            raise PosterError(f"{path}:{number}: not a recorded experiment ({e}); "
                              "fix or remove the line, and that experiment runs again") from e
        runs.append(run)
    return runs


def save(path: Path, root: Path, code: list[str], runs: list[Shown]) -> None:
    """Add `runs` (from `dvc exp show`, or already recorded) to the record; a run replaces the
    recorded one of the same name, so the record holds one result per experiment."""
    if not runs:
        return
    by_name = {run.name: run for run in load(path)}
    for run in runs:
        by_name[run.name] = run if run.code else dataclasses.replace(run, code=fingerprint(root, code, run.rev))
    lines = [json.dumps({k: v for k, v in dataclasses.asdict(run).items() if k != "state"}, sort_keys=True)
             for _, run in sorted(by_name.items())]
    write_bytes(path, "".join(line + "\n" for line in lines).encode())
