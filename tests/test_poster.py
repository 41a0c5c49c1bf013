"""`make poster`: which experiments it queues, that they share work through DVC's
run-cache, that a second run trains nothing, and the report's arithmetic."""
import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from conftest import MIRROR, PROJECT_FILES, REPO, sh
from kd_runs.poster import Experiment, PosterError, experiments, profile_overrides
from kd_runs.report import gain_test, pct, verdict, write_report


def test_profile_overrides_are_the_changed_leaves():
    base = {"temperature": 20, "data": {"dataset": "mnist", "mirror": "m"}, "omit_classes": []}
    profile = {"temperature": 4, "data": {"dataset": "cifar10", "mirror": "m"}, "omit_classes": []}
    assert profile_overrides(base, profile) == {"temperature": 4, "data.dataset": "cifar10"}
    with pytest.raises(PosterError, match="data.mirror"):
        profile_overrides(base, {"temperature": 4, "data": {"dataset": "cifar10"}, "omit_classes": []})


def test_set_args_are_yaml_values_dvc_parses():
    exp = Experiment("x", "mnist", "omit", 0, {"omit_classes": [3], "teacher.flip": True,
                                               "data.mirror": None, "teacher.weight_decay": 0.0005})
    assert exp.set_args() == ["-S", "omit_classes=[3]", "-S", "teacher.flip=true", "-S", "data.mirror=null",
                              "-S", "teacher.weight_decay=0.0005"]


def test_the_poster_list():
    exps = experiments(REPO)
    names = [e.name for e in exps]
    assert len(names) == len(set(names))
    mnist = [e for e in exps if e.part == "mnist"]
    assert {e.overrides["temperature"] for e in mnist if e.kind == "sweep"} >= {1, 2, 4, 8, 20, 50}
    assert all(e.overrides.get("omit_classes") == [3] for e in mnist if e.kind == "omit")
    cifar = [e for e in exps if e.part == "cifar"]
    pairs = {(e.overrides["teacher.arch"], e.overrides["student.arch"]) for e in cifar}
    assert pairs == {("vgg8", "resnet20"), ("resnet20", "resnet20"), ("vgg8", "vgg8"), ("resnet20", "vgg8")}
    # Every comparison over >= 3 seeds; no override touches the teacher's seed, so seeds share teachers.
    for kind in {e.kind for e in exps}:
        assert len({e.seed for e in exps if e.kind == kind}) >= 3
    assert not any("teacher.seed" in e.overrides for e in exps)


def test_gain_test_separates_signal_from_noise():
    clear = gain_test([0.991, 0.992, 0.990], [0.985, 0.985, 0.984])
    assert clear["mean"] == pytest.approx(0.0063333, abs=1e-6) and clear["p"] < 0.05
    assert verdict(clear).startswith("yes, a gain")
    noisy = gain_test([0.99, 0.98, 0.995], [0.985, 0.99, 0.985])
    assert noisy["p"] > 0.05 and verdict(noisy).startswith("no")
    assert verdict({"gains": [0.6, 0.62, 0.61], "mean": 0.61, "p": 0.0004}) == "yes, a gain (p<0.001)"
    assert pct([0.99, 0.98]) == "98.50 ± 0.71" and pct([]) == "not run" and pct([0.9]) == "90.00 (n=1)"


def _fake(acc_b, acc_s, seed):
    role = lambda a: {"accuracy": a, "errors": round((1 - a) * 10000), "ece": 0.01}  # noqa: E731
    ev = {"teacher": role(0.993), "baseline": {**role(acc_b), "agreement": 0.98, "kl_from_teacher": 0.1},
          "student": {**role(acc_s), "agreement": 0.99, "kl_from_teacher": 0.05}}
    return {"evaluate": ev}


def test_report_rows_hold_mean_std_and_the_papers_numbers(tmp_path):
    er = [(Experiment(f"mnist-T20-s{s}", "mnist", "sweep", s, {"temperature": 20, "seed": s}),
           _fake(0.985 + s / 1000, 0.991 + s / 1000, s)) for s in range(3)]
    er.append((Experiment("mnist-T1-s0", "mnist", "sweep", 0, {"temperature": 1, "seed": 0}), None))
    out = tmp_path / "reports" / "poster.md"
    write_report(out, er, header=["header line"], temperatures=[1, 20])
    text = out.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| student, distilled (T=20)"))
    assert "99.20 ± 0.10" in row and "99.26 (74 errors)" in row
    assert "+0.60 ± 0.00" in text  # identical per-seed gains
    assert "mnist-T1-s0" in text.split("## Not run")[1]
    # Every table row has as many cells as its header (no stray `|` inside a cell).
    for block in re.findall(r"((?:^\|.*\n)+)", text, flags=re.M):
        widths = {line.count("|") for line in block.splitlines()}
        assert len(widths) == 1, block
    assert (out.parent / "poster" / "temperature.png").stat().st_size > 1000


@pytest.mark.skipif(not (MIRROR / "mnist").is_dir(), reason="needs the MNIST mirror")
def test_poster_shares_the_teacher_and_a_rerun_trains_nothing(tmp_path):
    proj = tmp_path / "proj"
    for name in [*PROJECT_FILES, "scripts", "profiles"]:
        src, dst = REPO / name, proj / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copyfile)(src, dst)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"].update(mirror=str(MIRROR), max_train=300, val_size=200)
    for role in ("teacher", "student"):
        params[role].update(epochs=1, batch_size=64)
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(["git", "init", "-q", "-b", "main"], proj)
    sh(["git", "add", "-A"], proj)
    sh(["git", "commit", "-qm", "init"], proj)
    cmd = [sys.executable, "scripts/poster.py", "--parts", "mnist", "--seeds", "0", "1", "--temperatures", "20"]
    env = {"KD_TRACKING": "0"}

    out = sh(cmd, proj, env=env)
    assert "4 experiments, 0 up to date, 4 to run" in out.stdout
    names = ["mnist-T20-s0", "mnist-omit3-s0", "mnist-T20-s1", "mnist-omit3-s1"]
    trained = {n: re.findall(r"Running stage '(\w+)'", sh(["dvc", "queue", "logs", n], proj, env=env).stdout)
               for n in names}
    assert sum("train_teacher" in stages for stages in trained.values()) == 1, trained  # the run-cache shares it
    assert all("train_student" in stages for stages in trained.values())
    shown = json.loads(sh(["dvc", "exp", "show", "--json"], proj, env=env).stdout)
    listed = {e["name"] for row in shown for e in (row.get("experiments") or [])}
    assert set(names) <= listed
    report = (proj / "reports" / "poster.md").read_text()
    assert "## Not run" not in report and "4 run now and 0 reused" in report
    omit_row = next(line for line in report.splitlines() if line.startswith("| student, distilled | after |"))
    assert "±" in omit_row and "not run" not in omit_row

    again = sh(cmd, proj, env=env)
    assert "4 experiments, 4 up to date, 0 to run" in again.stdout
    assert "0 run now and 4 reused" in (proj / "reports" / "poster.md").read_text()


def _scripted_queue(monkeypatch, statuses):
    """Replace `dvc` in kd_runs.poster by a script: `queue status` answers from `statuses`
    (the last one repeats); every call is recorded."""
    import kd_runs.poster as poster

    calls, left = [], list(statuses)
    header = "Task     Name  Created    Status\n"

    def fake(root, *args, check=True):
        calls.append(args)
        out = ""
        if args[:2] == ("queue", "status"):
            tasks, workers = left.pop(0) if len(left) > 1 else left[0]
            out = header + "".join(f"abc  exp-{i}  08:00 AM   {s}\n" for i, s in enumerate(tasks))
            out += f"\nWorker status: {workers} active, 0 idle\n"
        return poster.subprocess.CompletedProcess(args, 0, out, "")

    monkeypatch.setattr(poster, "dvc", fake)
    monkeypatch.setattr(poster, "exp_refs", lambda root: {})
    monkeypatch.setattr(poster, "git", lambda root, *a, **k: poster.subprocess.CompletedProcess(a, 0, "f" * 40, ""))
    return calls


def test_a_dead_queue_worker_is_restarted(monkeypatch):
    from kd_runs.poster import IDLE_POLLS, run

    exps = [Experiment("a", "mnist", "sweep", 0, {}), Experiment("b", "mnist", "sweep", 0, {})]
    # Before queueing: empty. Then one finishes, the worker dies with one queued, a new one finishes it.
    statuses = ([([], 0)], [(["Running", "Queued"], 1)], [(["Success", "Queued"], 0)] * IDLE_POLLS,
                [(["Success", "Running"], 1)], [(["Success", "Success"], 0)])
    calls = _scripted_queue(monkeypatch, [s for group in statuses for s in group])
    log = []
    run(REPO, exps, log=lambda *a, **k: log.append(a[0]), poll=0)
    assert [c for c in calls if c[:2] == ("queue", "start")] == [("queue", "start", "-j", "1")] * 2
    assert any("starting one again" in line for line in log)


def test_an_orphaned_running_task_is_an_error_not_a_hang(monkeypatch):
    from kd_runs.poster import run

    calls = _scripted_queue(monkeypatch, [([], 0), (["Running"], 0)])
    with pytest.raises(PosterError, match="dvc queue kill"):
        run(REPO, [Experiment("a", "mnist", "sweep", 0, {})], log=lambda *a, **k: None, poll=0)
    assert [c for c in calls if c[:2] == ("queue", "start")] == [("queue", "start", "-j", "1")]


def test_a_busy_queue_is_refused_before_anything_is_queued(monkeypatch):
    from kd_runs.poster import run

    calls = _scripted_queue(monkeypatch, [(["Queued"], 1)])
    with pytest.raises(PosterError, match="already holds"):
        run(REPO, [Experiment("a", "mnist", "sweep", 0, {})], log=lambda *a, **k: None, poll=0)
    assert not [c for c in calls if c[:2] != ("queue", "status")]


def test_starting_the_queue_worker_does_not_wait_for_it(tmp_path, monkeypatch):
    """`dvc queue start` detaches a worker that inherits its stdout: we must not wait on it."""
    from kd_runs.poster import dvc

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    done = tmp_path / "worker-finished"
    fake = bin_dir / "dvc"
    fake.write_text(f"#!/bin/sh\necho starting a worker\n(sleep 5; touch {done}) &\nexit 0\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    out = dvc(tmp_path, "queue", "start", "-j", "1")
    assert out.returncode == 0 and "starting a worker" in out.stdout
    assert not done.exists()  # returned while the "worker" still runs
