"""End to end: the real dvc.yaml on shrunken params, in a throwaway git repo."""
import json
import sys

import pytest

from conftest import sh, stages_run
from kd.files import file_md5

@pytest.fixture(scope="module")
def project(built_project):
    return built_project


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
