"""Named DVC experiments: which are current, running the rest, their metrics.

What DVC knows comes from `dvc exp show --json` (each experiment's name, state, commit,
params and metrics files, nested as the files are; `dvc.api.exp_show` flattens them into
columns whose names depend on which other files exist, and turns `[3]` into a string).
An experiment is current when its params and pipeline code equal what would be queued
now; only current experiments are reused, so a second run with nothing changed queues
nothing.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from kd.params import flatten
from kd.yaml_reader import parse_yaml
from kd_study.experiments import Experiment, PosterError

BUSY = ("queued", "running")


@dataclass(frozen=True)
class Shown:
    """One experiment as `dvc exp show` lists it."""
    name: str
    state: str                     # success | failed | queued | running
    baseline: str                  # the commit it was queued from
    rev: str                       # its own commit (for a failed one: what was queued)
    params: dict                   # params.yaml, flattened
    metrics: dict[str, dict]       # metrics file path -> its content, for those it wrote
    code: str | None = None        # recorded runs (kd_study.record): the fingerprint of the code it ran


def _tool(name: str, root: Path, args, check: bool) -> subprocess.CompletedProcess:
    # Output goes to files, not pipes: a queue worker that dvc detaches inherits them,
    # and with pipes we would wait for the worker's end.
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        code = subprocess.run([name, *args], cwd=root, stdout=out, stderr=err, text=True).returncode
        out.seek(0), err.seek(0)
        done = subprocess.CompletedProcess(args, code, out.read(), err.read())
    if check and code != 0:
        raise PosterError(f"{name} {' '.join(args)} failed:\n{done.stdout}{done.stderr}".rstrip())
    return done


def git(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return _tool("git", root, args, check)


def dvc(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return _tool("dvc", root, args, check)


def baselines(root: Path) -> list[str]:
    """HEAD and every commit an experiment was queued from: refs/exps/ab/<rest of sha>/<name>.
    (`dvc exp show --all-commits` would read params and metrics of every commit.)"""
    refs = git(root, "for-each-ref", "--format=%(refname)", "refs/exps").stdout.split()
    shas = {"".join(ref.split("/")[2:4]) for ref in refs if len(ref.split("/")) == 5}
    return [git(root, "rev-parse", "HEAD").stdout.strip(), *sorted(shas)]


def show(root: Path, *more: str) -> list[Shown]:
    """Every experiment DVC lists on those baselines and the commits `more`: finished, failed,
    queued or running."""
    revs = [arg for sha in dict.fromkeys([*baselines(root), *more]) for arg in ("--rev", sha)]
    out = []
    for baseline in json.loads(dvc(root, "exp", "show", "--json", *revs).stdout):
        for exp in baseline.get("experiments") or []:
            if not exp.get("revs"):
                continue
            data = exp["revs"][0]
            state = (exp.get("executor") or {}).get("state", "success")
            files = data.get("data", {})
            out.append(Shown(exp.get("name") or data.get("name"), state, baseline["rev"], data["rev"],
                             flatten(files.get("params", {}).get("params.yaml", {}).get("data", {})),
                             {path: m["data"] for path, m in files.get("metrics", {}).items() if "data" in m}))
    return out


def pipeline_code(root: Path) -> list[str]:
    """Git-tracked files the stages depend on (per dvc.yaml), plus dvc.yaml itself. Not the
    git-tracked outputs of other stages that are deps too (export_onnx's metrics/evaluate.json):
    they are results, which differ between experiments."""
    stages = parse_yaml((root / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    outs = {o if isinstance(o, str) else next(iter(o))
            for s in stages.values() for kind in ("outs", "metrics", "plots") for o in s.get(kind, [])}
    deps = {d for s in stages.values() for d in s.get("deps", [])} - outs
    tracked = set(git(root, "ls-files", "--", *sorted(deps)).stdout.split())
    return sorted({d for d in deps if d in tracked or any(t.startswith(d.rstrip("/") + "/") for t in tracked)}
                  | {"dvc.yaml"})


def _path(entry) -> str:
    return entry if isinstance(entry, str) else next(iter(entry))


def stage_metrics(root: Path, targets: tuple[str, ...]) -> set[str]:
    """The metrics files that `dvc exp run <targets>` writes: those of the targets and of every
    stage upstream of them (a stage is upstream when a dep of a downstream one is, or lies
    under, one of its outputs)."""
    stages = parse_yaml((root / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    produced = {name: {_path(o).rstrip("/") for kind in ("outs", "metrics", "plots") for o in s.get(kind, [])}
                for name, s in stages.items()}
    todo, ran = list(targets), set()
    while todo:
        name = todo.pop()
        if name in ran or name not in stages:
            continue
        ran.add(name)
        deps = [str(d).rstrip("/") for d in stages[name].get("deps", [])]
        todo += [other for other, outs in produced.items()
                 if any(d == o or d.startswith(o + "/") for d in deps for o in outs)]
    return {_path(m) for name in ran for m in stages[name].get("metrics", [])}


def ran_only(root: Path, run: Shown, targets: tuple[str, ...]) -> Shown:
    """`run` with only the metrics files its stages wrote: an experiment of some stages (a
    teacher-only one) also carries the workspace's other metrics files, which it did not
    regenerate (the default run's MNIST scores, say)."""
    if not targets:
        return run
    keep = stage_metrics(root, targets)
    return dataclasses.replace(run, metrics={p: m for p, m in run.metrics.items() if p in keep})


def fingerprint(root: Path, code: list[str], rev: str | None = None) -> str:
    """Hash of (path, blob) of every tracked file under `code`: at commit `rev`, or as the
    working tree has it now (uncommitted edits included, as `git diff` would see them)."""
    if rev is not None:
        rows = git(root, "ls-tree", "-r", rev, "--", *code).stdout.splitlines()
        blobs = sorted((row.split("\t", 1)[1], row.split()[2]) for row in rows)
    else:
        files = [f for f in git(root, "ls-files", "--", *code).stdout.splitlines() if (root / f).is_file()]
        hashes = git(root, "hash-object", "--", *files).stdout.split() if files else []
        blobs = sorted(zip(files, hashes))
    return hashlib.sha256("".join(f"{path} {blob}\n" for path, blob in blobs).encode()).hexdigest()


def current(root: Path, exps: list[Experiment], shown: list[Shown], state: str = "success") -> dict[str, Shown]:
    """Experiment name -> a run of it (from `show`, or recorded) in `state` with the params and
    pipeline code we would queue now, for those that have one. DVC's own runs come first."""
    code, found, now = pipeline_code(root), {}, None
    for exp in exps:
        want = exp.params(root)
        for run in sorted(shown, key=lambda run: run.code is not None):
            if run.name != exp.name or run.state != state or run.params != want:
                continue
            if run.code is None:
                same = git(root, "diff", "--quiet", run.rev, "--", *code, check=False).returncode == 0
            else:
                now = now or fingerprint(root, code)
                same = run.code == now
            if same:
                found[exp.name] = ran_only(root, run, exp.targets)
                break
    return found


DIVERGED = re.compile(r"\[(train_\w+)\] error: (loss is \S+ at epoch \d+, batch \d+)")


def diverged(root: Path, exps: list[Experiment], shown: list[Shown]) -> dict[str, str]:
    """Experiment name -> how it diverged, for those whose run on this code and params failed
    because a training loss became NaN or inf (`dvc queue logs` says so). A tuning choice counts
    such a point as the worst; a run that failed for any other reason (killed, a bug) is not a
    result, and runs again."""
    out = {}
    for name in current(root, exps, shown, state="failed"):
        logs = dvc(root, "queue", "logs", name, check=False).stdout
        if found := DIVERGED.findall(logs):
            stage, what = found[-1]
            out[name] = f"{stage}: {what}"
    return out


def run(root: Path, exps: list[Experiment], shown: list[Shown], deadline: float | None = None) -> list[str]:
    """Queue `exps` and run them with `dvc exp run --run-all` (blocks; one worker, so
    experiments run one at a time and the first to need a teacher trains it for the others:
    two workers would race to train it). A failed experiment is simply not current afterwards.
    `shown`: what `show` says now. With a `deadline` (time.time()), experiments are queued one
    at a time and none starts after it, so a session can stop without a half-run queue.
    Returns the names of those it left unstarted for that reason."""
    if not exps:
        return []
    busy = sorted({s.name for s in shown if s.state in BUSY})
    if busy:
        raise PosterError(f"DVC already has queued or running experiments ({', '.join(busy)}): "
                          "let them finish (`dvc exp run --run-all`), or `dvc queue kill <name>` a dead "
                          "running one and `dvc queue remove --queued`")
    head = baselines(root)[0]
    names = {e.name for e in exps}
    # A stale or failed run of the same name on this commit would block the name; it is ours to replace.
    stale = sorted({s.name for s in shown if s.baseline == head and s.name in names})
    if stale:
        dvc(root, "exp", "remove", *stale)
    batches = [exps] if deadline is None else [[e] for e in exps]
    for done, batch in enumerate(batches):
        if deadline is not None and time.time() >= deadline:
            print(f"poster: the time limit is reached: {len(exps) - done} experiments left for the next run",
                  flush=True)
            return [e.name for b in batches[done:] for e in b]
        if not workers_gone(root):
            print(f"poster: warning: a DVC queue worker is still up after {WORKER_S:.0f} s; queueing anyway",
                  flush=True)
        on = git(root, "rev-parse", "HEAD").stdout.strip()  # the baseline DVC gives what it queues now
        for exp in batch:
            dvc(root, "exp", "run", "--queue", "-n", exp.name, *exp.set_args(), *exp.targets)
        # DVC's own log of every experiment, streamed to ours; it exits 0 even when one failed.
        subprocess.run(["dvc", "exp", "run", "--run-all", "--jobs", "1"], cwd=root)
        wait(root, {e.name for e in batch}, on)
    return []


POLL_S, LOST_S = 30.0, 600.0
WORKER_S, WORKER_POLL_S = 120.0, 1.0


def workers_gone(root: Path, timeout: float | None = None) -> bool:
    """Wait (up to WORKER_S) until the previous experiment's queue worker has exited. DVC's worker
    stays up about 10 s after its queue empties, and a task queued while it shuts down can be
    taken by it and dropped: listed as running with no worker, while `dvc exp run --run-all`
    follows it forever (DVC 3.67.1, seen on 2026-12-07; treeverse/dvc#10398). Each worker is
    a dvc_task managed process, described by .dvc/tmp/exps/celery/dvc-exp-worker-<n>.json."""
    end = time.time() + (WORKER_S if timeout is None else timeout)
    while any(_alive(f) for f in (root / ".dvc" / "tmp" / "exps" / "celery").glob("dvc-exp-worker-*.json")):
        if time.time() >= end:
            return False
        time.sleep(WORKER_POLL_S)
    return True


def _alive(info: Path) -> bool:
    try:
        process = json.loads(info.read_text())
        if process.get("returncode") is not None:
            return False
        return psutil.Process(int(process["pid"])).status() != psutil.STATUS_ZOMBIE
    except (OSError, ValueError, KeyError, TypeError, psutil.Error):  # gone, or not a worker's file
        return False


def wait(root: Path, names: set[str], baseline: str) -> None:
    """Block until every experiment of `names` queued on `baseline` has succeeded or failed.
    `dvc exp run --run-all` follows the experiments it finds queued or running when it starts,
    and a worker left by the previous call can take a new task before the queue lists it as
    running (DVC 3.67.1, seen on 2026-12-07): that call then returns at once, the experiment
    still running in the background. One that stays unlisted for LOST_S is given up on (it is
    then "not run", as a failed one is)."""
    listed = time.time()
    while True:
        # HEAD may have moved on (a commit while it runs): ask for the baseline by name.
        states = {s.name: s.state for s in show(root, baseline) if s.baseline == baseline and s.name in names}
        if all(states.get(n) in ("success", "failed") for n in names):
            return
        if any(states.get(n) in BUSY for n in names):
            listed = time.time()
        elif time.time() - listed > LOST_S:
            return
        time.sleep(POLL_S)
