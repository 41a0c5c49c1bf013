"""What a stage's MLflow run records, read from dvc.yaml and params: the stage's
params and metrics files, and the tags that tie the stages of one `dvc repro` /
`dvc exp run` invocation to one parent run (see kd_pipeline.tracking)."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

from kd.dvc_stage import select
from kd.params import Params, flatten
from kd.paths import METRICS

METRICS_DIR = METRICS  # kd.paths


def stage_metrics_files(spec: dict) -> list[Path]:
    files = []
    for entry in spec.get("metrics", []):
        files.extend(entry if isinstance(entry, dict) else [entry])
    return [Path(f) for f in files]


def param_text(value: Any) -> str:
    # YAML-like spelling, so `null`, `true` and `[3]` read as in params.yaml.
    return value if isinstance(value, str) else json.dumps(value)


def stage_params(params: Params, keys: list[str] | None) -> dict[str, str]:
    return {k: param_text(v) for k, v in select(params, keys).items()}


def numeric_leaves(obj: Any) -> dict[str, float]:
    return {k: float(v) for k, v in flatten(obj).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def file_metrics(path: Path) -> dict[str, float]:
    """A metrics JSON as MLflow metrics named like `dvc metrics show` columns,
    e.g. metrics/evaluate.json -> evaluate/student.accuracy."""
    name = path.relative_to(METRICS_DIR).with_suffix("").as_posix() if path.is_relative_to(METRICS_DIR) \
        else path.with_suffix("").as_posix()
    return {f"{name}/{k}": v for k, v in numeric_leaves(json.loads(path.read_text())).items()}


# --- which invocation this stage belongs to -----------------------------------

def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def dvc_invocation() -> str:
    """pid and start time of the nearest `dvc` ancestor process (this process
    itself when the stage was started by hand)."""
    import psutil  # a dependency of dvc

    me = psutil.Process()
    for proc in me.parents():
        try:
            argv = proc.cmdline()
            if any(Path(a).name in ("dvc", "dvc.exe") for a in argv[:3]):
                return f"{proc.pid}@{proc.create_time()}"
        except psutil.Error:
            continue
    return f"{me.pid}@{me.create_time()}"


def run_tags(params: Params) -> dict[str, str]:
    commit = _git("rev-parse", "HEAD")
    tags = {
        "git_commit": commit or "none",
        "dvc_exp_name": os.environ.get("DVC_EXP_NAME", ""),
        "dvc_baseline_rev": os.environ.get("DVC_EXP_BASELINE_REV", ""),
        "dataset": params.data.dataset,
    }
    if commit:
        tags["mlflow.source.git.commit"] = commit
    tags["run_group"] = hashlib.sha256(json.dumps(
        [tags["dvc_exp_name"], tags["git_commit"], dvc_invocation()]).encode()).hexdigest()[:16]
    return {k: v for k, v in tags.items() if v}


def parent_name(tags: dict[str, str]) -> str:
    if tags.get("dvc_exp_name"):
        return tags["dvc_exp_name"]
    commit = tags.get("git_commit", "none")
    return commit[:7] if commit != "none" else "no-commit"


# What the parent run's row says before anyone expands it (the MLflow runs table shows
# the columns of store.training_view): from metrics/evaluate.json, metric <- keys.
HEADLINE = {"teacher.test_accuracy": ("teacher", "accuracy"), "baseline.test_accuracy": ("baseline", "accuracy"),
            "student.test_accuracy": ("student", "accuracy"), "kd_gain": ("kd_gain",)}


def headline_metrics(path: Path) -> dict[str, float]:
    """HEADLINE's metrics when `path` is metrics/evaluate.json, else none."""
    if Path(path) != METRICS_DIR / "evaluate.json":
        return {}
    out = {}
    for name, keys in HEADLINE.items():
        value = json.loads(Path(path).read_text())
        for key in keys:
            value = value.get(key, {}) if isinstance(value, dict) else None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = float(value)
    return out
