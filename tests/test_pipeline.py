"""End to end: the real dvc.yaml on shrunken params, in a throwaway git repo."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from kd.files import file_md5

PROJECT_FILES = ["dvc.yaml", "params.yaml", "stages", "src", ".dvc/config", ".dvc/.gitignore", ".dvcignore", ".gitignore"]


def sh(args, cwd, check=True):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    out = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if check and out.returncode != 0:
        raise AssertionError(f"{args} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    return out


def stages_run(out) -> set[str]:
    return set(re.findall(r"Running stage '(\w+)'", out.stdout + out.stderr))


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    mirror = REPO.parent / "shared" / "datasets"
    if not (mirror / "mnist").is_dir():
        pytest.skip("needs the MNIST mirror")
    proj = tmp_path_factory.mktemp("proj")
    for name in PROJECT_FILES:
        src, dst = REPO / name, proj / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copyfile)(src, dst)
    params = yaml.safe_load((proj / "params.yaml").read_text())
    params["data"].update(mirror=str(mirror), max_train=400, val_size=200)
    for role in ("teacher", "student"):
        params[role].update(epochs=2, batch_size=64)
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(["git", "init", "-q", "-b", "main"], proj)
    sh(["git", "add", "-A"], proj)
    sh(["git", "commit", "-qm", "init"], proj)
    first = sh([sys.executable, "-m", "dvc", "repro"], proj)
    return proj, first


def test_repro_runs_every_stage_and_writes_metrics(project):
    proj, first = project
    assert stages_run(first) == {"check_params", "prepare", "train_teacher", "generate_soft_labels",
                                 "train_baseline", "train_student", "evaluate"}
    metrics = json.loads((proj / "metrics/evaluate.json").read_text())
    assert metrics["teacher"]["params"] == 2_395_210
    assert metrics["student"]["params"] == metrics["baseline"]["params"] == 1_276_810
    for role in ("teacher", "baseline", "student"):
        assert 0.1 < metrics[role]["accuracy"] <= 1
        assert metrics[role]["errors"] == round((1 - metrics[role]["accuracy"]) * 10000)
        curve = (proj / f"metrics/curves/{role}.csv").read_text().splitlines()
        assert curve[0].startswith("epoch,") and len(curve) == 3  # header + 2 epochs
        assert len((proj / f"metrics/confusion/{role}.csv").read_text().splitlines()) == 10001
    assert (proj / "metrics/timing/train_teacher.json").exists()
    assert sh([sys.executable, "-m", "dvc", "status"], proj).stdout.strip().endswith("up to date.")


def test_temperature_change_reruns_only_the_distilled_student(project):
    proj, _ = project
    before = {r: file_md5(proj / f"models/{r}.pt") for r in ("teacher", "baseline", "student")}
    soft = file_md5(proj / "data/soft_labels.pt")
    out = sh([sys.executable, "-m", "dvc", "exp", "run", "-S", "temperature=5"], proj)
    # check_params reruns (it reads every param) but its marker is unchanged.
    assert stages_run(out) == {"check_params", "train_student", "evaluate"}
    assert file_md5(proj / "models/teacher.pt") == before["teacher"]
    assert file_md5(proj / "models/baseline.pt") == before["baseline"]
    assert file_md5(proj / "data/soft_labels.pt") == soft
    assert file_md5(proj / "models/student.pt") != before["student"]
    shown = sh([sys.executable, "-m", "dvc", "exp", "show", "--csv"], proj).stdout.splitlines()
    header = shown[0].split(",")
    temps = {row.split(",")[header.index("temperature")] for row in shown[1:]}
    assert "5" in temps and "student.accuracy" in header


def test_bad_param_fails_first_and_touches_no_output(project):
    proj, _ = project
    outputs = ["models/student.pt", "models/teacher.pt", "metrics/evaluate.json"]
    before = {p: file_md5(proj / p) for p in outputs}
    out = sh([sys.executable, "-m", "dvc", "exp", "run", "-S", "alpha=1.5"], proj, check=False)
    assert out.returncode != 0
    assert "alpha: Input should be less than or equal to 1" in out.stdout + out.stderr
    assert stages_run(out) == {"check_params"}
    assert {p: file_md5(proj / p) for p in outputs} == before


def test_forced_rerun_gives_identical_metrics(project):
    proj, _ = project
    sh(["git", "checkout", "--", "params.yaml"], proj)
    sh([sys.executable, "-m", "dvc", "repro"], proj)
    files = ["metrics/evaluate.json", "metrics/teacher.json", "metrics/student.json",
             "metrics/curves/student.csv", "metrics/confusion/student.csv"]
    first = {f: (proj / f).read_bytes() for f in files}
    sh([sys.executable, "-m", "dvc", "repro", "--force"], proj)
    assert {f: (proj / f).read_bytes() for f in files} == first
