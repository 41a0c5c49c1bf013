"""DVC reruns only what changed, also on a machine that writes Python bytecode.

This workplace (and CI) exports PYTHONDONTWRITEBYTECODE=1, which hid that every
stage's `src/kd` dependency changed as soon as Python cached its bytecode there:
the second `dvc repro` reran the whole pipeline. Every command here runs with
bytecode writing on, as on a user's machine.
"""
import re
import sys

import pytest
import yaml

from conftest import REPO, need_mirror, make_project, sh, stages_run

TRAINING = {"train_teacher", "train_baseline", "generate_soft_labels", "train_student"}


def dvc(*args, proj, check=True):
    return sh([sys.executable, "-m", "dvc", *args], proj, check=check, unset=["PYTHONDONTWRITEBYTECODE"],
              env={"KD_TRACKING": "0"})


@pytest.fixture(scope="module")
def bytecode_project(tmp_path_factory):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"].update(mirror=str(need_mirror("mnist")), max_train=300, val_size=100)
    for role in ("teacher", "student"):
        params[role].update(epochs=1, batch_size=64)
    proj = tmp_path_factory.mktemp("bytecode")
    proj, first = make_project(proj, params, run=lambda p: dvc("repro", proj=p))
    assert TRAINING <= stages_run(first)
    # The premise: Python did write bytecode next to the library the stages depend on.
    assert list((proj / "src" / "kd").rglob("*.pyc")), "no bytecode written: the test proves nothing"
    sh(["git", "add", "-A"], proj)
    sh(["git", "commit", "-qm", "first run"], proj)
    return proj


def test_second_repro_runs_nothing(bytecode_project):
    out = dvc("repro", proj=bytecode_project)
    assert stages_run(out) == set()
    assert "Data and pipelines are up to date" in out.stdout


def test_temperature_experiment_retrains_only_the_student(bytecode_project):
    out = dvc("exp", "run", "-S", "temperature=5", proj=bytecode_project)
    # check_params validates params.yaml (milliseconds) whenever it changes; export_onnx
    # follows the student.
    assert stages_run(out) == {"check_params", "train_student", "evaluate", "export_onnx"}


def test_queued_sweep_trains_no_teacher_and_no_baseline(bytecode_project):
    proj = bytecode_project
    sh(["git", "checkout", "--", "params.yaml"], proj)
    dvc("exp", "run", "--queue", "-S", "temperature=2,8", proj=proj)
    # Queued runs execute in a copy under .dvc/tmp/exps and must import the copy's code
    # (dvc.yaml's `PYTHONPATH=src`), not the workspace's: break the workspace's meanwhile.
    losses = proj / "src" / "kd" / "losses.py"
    good = losses.read_text()
    losses.write_text(good + "\nraise RuntimeError('the workspace code was imported')\n")
    try:
        dvc("exp", "run", "--run-all", proj=proj)
    finally:
        losses.write_text(good)
    status = dvc("queue", "status", proj=proj).stdout
    names = [line.split()[1] for line in status.splitlines() if line.split()[-1:] == ["Success"]]
    assert len(names) == 2, status
    for name in names:
        logs = dvc("queue", "logs", name, proj=proj).stdout
        assert stages_run(logs) == {"check_params", "train_student", "evaluate", "export_onnx"}, (name, logs[-3000:])


def test_method_sweep_trains_one_student_per_method_and_unused_sections_retrain_nothing(bytecode_project):
    proj = bytecode_project
    sh(["git", "checkout", "--", "params.yaml"], proj)
    # Tuning a method not in use changes no hash a training stage keys on.
    out = dvc("exp", "run", "-S", "method.dist.beta=3", proj=proj)
    assert stages_run(out) == {"check_params"}, out.stdout[-3000:]
    assert "method.dist (beta=3.0, gamma=1.0, ce=1.0) is ignored: method.name is kd" in out.stdout + out.stderr
    sh(["git", "checkout", "--", "params.yaml"], proj)
    queued = dvc("exp", "run", "--queue", "-S", "method.name=dkd,dist", proj=proj).stdout
    names = re.findall(r"Queued experiment '([^']+)'", queued)
    assert len(names) == 2, queued
    dvc("exp", "run", "--run-all", proj=proj)
    for name in names:
        logs = dvc("queue", "logs", name, proj=proj).stdout
        # teacher, its soft labels and the true-label student come from the run-cache
        assert stages_run(logs) == {"check_params", "train_student", "evaluate", "export_onnx"}, (name, logs[-3000:])
