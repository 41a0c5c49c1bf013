"""What a stage declares in dvc.yaml: its params and its deps.

The same lists DVC hashes to decide whether a stage must rerun, so whatever a
stage keys on them (its resume state, the params its soft labels were made
with, the check that params.yaml did not change under it) agrees with DVC.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from kd.files import file_md5
from kd.params import PARAMS_FILE, Params, flatten
from kd.yaml_reader import parse_yaml

DVC_YAML = Path("dvc.yaml")


def dvc_stage(name: str, dvc_yaml: Path = DVC_YAML) -> dict:
    """The stage's entry in dvc.yaml, or {} when it has none (a script run by hand)."""
    try:
        stages = parse_yaml(dvc_yaml.read_text(encoding="utf-8")).get("stages", {})  # as DVC reads it
    except (OSError, AttributeError, ValueError):  # ValueError: not UTF-8, or not YAML
        return {}
    return stages.get(name) or {}


def stage_param_keys(spec: dict) -> list[str] | None:
    """The params.yaml keys a stage depends on; None means the whole file."""
    keys: list[str] = []
    for entry in spec.get("params", []):
        if isinstance(entry, str):
            keys.append(entry)
        elif isinstance(entry, dict):
            for file, sub in entry.items():
                if Path(file).name != PARAMS_FILE:
                    continue
                if sub is None:
                    return None
                keys.extend(sub)
    return keys


def select(params: Params, keys: list[str] | None) -> dict[str, Any]:
    """The validated values (defaults filled in) of `keys` and everything under them, flat."""
    flat = flatten(params.model_dump())
    if keys is None:
        return flat
    keys = [_fill(k, flat) for k in keys]  # `method.${method.name}`: the chosen method's section only
    return {k: v for k, v in flat.items() if any(k == s or k.startswith(s + ".") for s in keys)}


def declared_params(stage: str, params: Params) -> dict[str, Any]:
    """The params the stage lists in dvc.yaml; all of them for a stage dvc.yaml does not know."""
    spec = dvc_stage(stage)
    return select(params, stage_param_keys(spec) if spec else None)


def _files(path: Path):
    if path.is_dir():
        for f in sorted(path.rglob("*")):
            if f.is_file() and "__pycache__" not in f.parts and f.suffix != ".pyc":
                yield f
    elif path.exists():
        yield path


def deps_md5(deps: list[str]) -> dict[str, str]:
    """md5 of every file of every dep (directories file by file); a missing dep is left out."""
    return {str(f): file_md5(f) for d in deps for f in _files(Path(d))}


def interpolate(path: str, params: Params) -> str:
    """`${data.path}` -> its value, as DVC's templating fills dvc.yaml from params.yaml."""
    return _fill(path, flatten(params.model_dump()))


def _fill(text: str, flat: dict[str, Any]) -> str:
    return re.sub(r"\$\{([^}]+)\}", lambda m: str(flat[m.group(1).strip()]), text)


def stage_fingerprint(stage: str, params: Params, script: str) -> str:
    """A hash of what the stage declares: its params and the content of its deps.
    A stage dvc.yaml does not know hashes all params and its own script."""
    spec = dvc_stage(stage)
    deps = [interpolate(d, params) for d in spec["deps"]] if spec else [script]
    blob = {"stage": stage, "params": select(params, stage_param_keys(spec) if spec else None),
            "deps": deps_md5(deps)}
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


def stage_outputs(spec: dict) -> list[Path]:
    """The stage's outs and metrics, as paths."""
    paths = []
    for entry in [*spec.get("outs", []), *spec.get("metrics", []), *spec.get("plots", [])]:
        paths.extend(entry if isinstance(entry, dict) else [entry])
    return [Path(p) for p in paths]
