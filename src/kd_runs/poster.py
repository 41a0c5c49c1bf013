"""The poster's experiments as DVC experiments: which to run, queueing them, reading results.

Every experiment is params.yaml plus `-S` overrides, queued with `dvc exp run --queue`
and run by one `dvc queue` worker, so experiments sharing a teacher (or a baseline)
train it once and restore it from DVC's run-cache afterwards. An experiment whose
params and pipeline code match what would be queued now is reused, not rerun: a
second `make poster` with nothing changed only rewrites the report.
"""
from __future__ import annotations

import json
import re
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kd_runs.run_info import flatten  # {'teacher': {'lr': 0.1}} -> {'teacher.lr': 0.1}

SEEDS = (0, 1, 2)
TEMPERATURES = (1, 2, 4, 8, 20, 50)
OMITTED_DIGIT = 3
CIFAR_PROFILE = "profiles/cifar10-cpu.yaml"
# (name, teacher arch, student arch) at the CPU profile; the small VGG is the weaker net.
CIFAR_PAIRS = (
    ("reversed", "vgg8", "resnet20"),       # a small teacher, a larger student
    ("self-resnet20", "resnet20", "resnet20"),
    ("self-vgg8", "vgg8", "vgg8"),
    ("hetero", "resnet20", "vgg8"),         # normal KD across architectures
)


class PosterError(RuntimeError):
    """Something the user can fix: a dirty queue, a failed experiment, a bad option."""


@dataclass(frozen=True)
class Experiment:
    name: str                      # the DVC experiment name
    part: str                      # "mnist" | "cifar": budgets and report sections
    kind: str                      # "sweep", "omit", or a CIFAR pair name
    seed: int
    overrides: dict[str, Any] = field(default_factory=dict)   # dotted key -> value

    def set_args(self) -> list[str]:
        return [arg for key, value in self.overrides.items() for arg in ("-S", f"{key}={_yaml_value(value)}")]


def _yaml_value(value) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("\n...")


def profile_overrides(base: dict, profile: dict) -> dict[str, Any]:
    """The `-S` settings that turn params `base` into `profile` (a whole params file)."""
    b, p = flatten(base), flatten(profile)
    missing = sorted(set(b) - set(p))
    if missing:
        raise PosterError(f"{CIFAR_PROFILE} lacks keys that params.yaml has: {missing}")
    return {k: v for k, v in p.items() if b.get(k, object()) != v}


def experiments(root: Path, parts=("mnist", "cifar"), seeds=SEEDS, temperatures=TEMPERATURES,
                profile: str = CIFAR_PROFILE) -> list[Experiment]:
    """Every run of the poster, in queue order (experiments sharing a teacher next to each other)."""
    out = []
    if "mnist" in parts:
        for seed in seeds:
            for t in temperatures:
                out.append(Experiment(f"mnist-T{t:g}-s{seed}", "mnist", "sweep", seed,
                                      {"temperature": t, "seed": seed}))
            out.append(Experiment(f"mnist-omit{OMITTED_DIGIT}-s{seed}", "mnist", "omit", seed,
                                  {"omit_classes": [OMITTED_DIGIT], "seed": seed}))
    if "cifar" in parts:
        base = yaml.safe_load((root / "params.yaml").read_text())
        cifar = profile_overrides(base, yaml.safe_load((root / profile).read_text()))
        for kind, teacher, student in CIFAR_PAIRS:
            for seed in seeds:
                out.append(Experiment(f"cifar-{kind}-s{seed}", "cifar", kind, seed, {
                    **cifar, "teacher.arch": teacher, "student.arch": student, "seed": seed}))
    return out


def expected_params(root: Path, exp: Experiment) -> dict:
    params = flatten(yaml.safe_load((root / "params.yaml").read_text()))
    params.update(exp.overrides)
    return params


# ---- what DVC already holds -------------------------------------------------------------

def _tool(name: str, root: Path, args, check: bool) -> subprocess.CompletedProcess:
    # Output goes to files, not pipes: `dvc queue start` detaches a worker that
    # inherits them, and with pipes we would wait for the worker's end (seen here).
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        code = subprocess.run([name, *args], cwd=root, stdout=out, stderr=err, text=True).returncode
        out.seek(0), err.seek(0)
        done = subprocess.CompletedProcess(args, code, out.read(), err.read())
    if check and code != 0:
        raise PosterError(f"{name} {' '.join(args)} failed:\n{done.stdout}{done.stderr}".rstrip())
    return done


def git(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return _tool("git", root, args, check)


def pipeline_code(root: Path) -> list[str]:
    """Git-tracked files the stages depend on (per dvc.yaml), plus dvc.yaml itself. Not the
    git-tracked outputs of other stages that are deps too (export_onnx's metrics/evaluate.json):
    they are results, which differ between experiments."""
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    outs = {o if isinstance(o, str) else next(iter(o))
            for s in stages.values() for kind in ("outs", "metrics", "plots") for o in s.get(kind, [])}
    deps = {d for s in stages.values() for d in s.get("deps", [])} - outs
    tracked = set(git(root, "ls-files", "--", *sorted(deps)).stdout.split())
    return sorted({d for d in deps if d in tracked or any(t.startswith(d.rstrip("/") + "/") for t in tracked)}
                  | {"dvc.yaml"})


def exp_refs(root: Path) -> dict[str, list[str]]:
    """Experiment name -> its git refs (one per baseline commit it was run on)."""
    refs: dict[str, list[str]] = {}
    for line in git(root, "for-each-ref", "--format=%(refname)", "refs/exps").stdout.split():
        parts = line.split("/")
        if len(parts) == 5:  # refs/exps/ab/<rest of baseline sha>/<name>
            refs.setdefault(parts[4], []).append(line)
    return refs


def read_at(root: Path, ref: str, path: str):
    out = git(root, "show", f"{ref}:{path}", check=False)
    if out.returncode != 0:
        return None
    return yaml.safe_load(out.stdout) if path.endswith(".yaml") else json.loads(out.stdout)


def current(root: Path, ref: str, exp: Experiment, code: list[str]) -> bool:
    """Did experiment `ref` run with exactly the params and pipeline code we would queue now?"""
    params = read_at(root, ref, "params.yaml")
    if params is None or flatten(params) != expected_params(root, exp):
        return False
    return git(root, "diff", "--quiet", ref, "--", *code, check=False).returncode == 0


def find_current(root: Path, exps: list[Experiment]) -> dict[str, str]:
    """Experiment name -> the git ref of an up-to-date run of it, for those that have one."""
    refs, code = exp_refs(root), pipeline_code(root)
    found = {}
    for exp in exps:
        for ref in refs.get(exp.name, []):
            if current(root, ref, exp, code):
                found[exp.name] = ref
                break
    return found


METRIC_FILES = ("evaluate.json", "teacher.json", "baseline.json", "student.json")


def results(root: Path, ref: str) -> dict:
    """The metrics an experiment committed, by file stem (missing files are left out)."""
    out = {}
    for name in METRIC_FILES + tuple(f"timing/{s}.json" for s in
                                     ("train_teacher", "train_baseline", "train_student", "generate_soft_labels")):
        data = read_at(root, ref, f"metrics/{name}")
        if data is not None:
            out[name.removesuffix(".json")] = data
    return out


# ---- running ---------------------------------------------------------------------------

def dvc(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return _tool("dvc", root, args, check)


def queue_state(root: Path) -> tuple[dict[str, int], int]:
    """Tasks per state from `dvc queue status` (Queued, Running, Success, Failed), and
    how many workers are active."""
    counts: dict[str, int] = {}
    workers = 0
    for line in dvc(root, "queue", "status").stdout.splitlines()[1:]:
        if m := re.match(r"Worker status: (\d+) active", line.strip()):
            workers = int(m[1])
            continue
        for state in ("Queued", "Running", "Success", "Failed"):
            if f" {state} " in f" {line} ":
                counts[state] = counts.get(state, 0) + 1
    return counts, workers


# A worker can die and leave its tasks queued (seen once in a 2.5 h run): start a new
# one after this many polls with work left and no active worker, at most this often.
IDLE_POLLS, RESTARTS = 4, 3


def run(root: Path, exps: list[Experiment], *, log=print, poll: float = 15.0) -> float:
    """Queue `exps`, run them with one worker, wait; returns the wall time in seconds."""
    if not exps:
        return 0.0
    busy, _ = queue_state(root)
    if busy.get("Queued") or busy.get("Running"):
        raise PosterError("the DVC queue already holds queued or running experiments (`dvc queue status`); "
                          "let them finish, or `dvc queue kill <name>` a dead running one and "
                          "`dvc queue remove --queued --failed`")
    existing = exp_refs(root)
    head = git(root, "rev-parse", "HEAD").stdout.strip()
    for exp in exps:
        # A stale run of the same name on this commit would block the name; it is ours to replace.
        if any(head[:2] + "/" + head[2:] in ref for ref in existing.get(exp.name, [])):
            dvc(root, "exp", "remove", exp.name)
        dvc(root, "exp", "run", "--queue", "-n", exp.name, *exp.set_args())
    started = time.perf_counter()
    dvc(root, "queue", "start", "-j", "1")
    done, idle, restarts = -1, 0, 0
    while True:
        counts, workers = queue_state(root)
        # `dvc queue status` keeps finished tasks of earlier runs: count only this run's.
        ok, failed = (counts.get(k, 0) - busy.get(k, 0) for k in ("Success", "Failed"))
        if ok + failed != done:
            done = ok + failed
            log(f"  {time.perf_counter() - started:7.0f}s  queued {counts.get('Queued', 0)}, "
                f"running {counts.get('Running', 0)}, done {ok}, failed {failed}", flush=True)
        if not counts.get("Queued") and not counts.get("Running"):
            return time.perf_counter() - started
        idle = 0 if workers else idle + 1
        if idle >= IDLE_POLLS:
            if counts.get("Running"):
                raise PosterError("a task is marked running but no queue worker is alive: see `dvc queue "
                                  "status`, `dvc queue kill <name>`, then rerun (finished experiments are kept)")
            if restarts == RESTARTS:
                raise PosterError(f"the queue worker stopped {restarts + 1} times with experiments left; "
                                  "see `dvc queue logs <name>`")
            restarts, idle = restarts + 1, 0
            log(f"  {time.perf_counter() - started:7.0f}s  no active queue worker with "
                f"{counts['Queued']} queued: starting one again", flush=True)
            dvc(root, "queue", "start", "-j", "1")
        time.sleep(poll)
