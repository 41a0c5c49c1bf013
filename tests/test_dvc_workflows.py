"""What DVC users do with a trained project: plots across commits in a fresh clone,
the run-cache, model artifacts, and a grid sweep from the queue. On a copy of the
tiny built project, with its git history and DVC cache, tracking off."""
import csv
import io
import json
import re
import shutil
import sys

import pytest
import yaml

from conftest import REPO, sh
from kd.files import file_md5

NO_TRACKING = {"KD_TRACKING": "0"}
# The README's command for a readable `dvc exp show`, as it is written there.
README_SHOW = re.search(r"^dvc exp show --only-changed --drop '([^']+)'$", (REPO / "README.md").read_text(), re.M)
READABLE = ["--only-changed", "--drop", README_SHOW.group(1)]


def dvc(proj, *args, check=True):
    return sh([sys.executable, "-m", "dvc", *args], proj, check=check, env=NO_TRACKING)


def set_param(proj, key, value):
    path = proj / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params[key] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def history(built_project, tmp_path_factory):
    """Two commits: the default run, then temperature=2 (only the student and after rerun)."""
    src, _ = built_project
    proj = tmp_path_factory.mktemp("history") / "proj"
    shutil.copytree(src, proj, ignore=shutil.ignore_patterns("mlflow.db", "mlartifacts", "__pycache__"))
    sh(["git", "checkout", "--", "params.yaml"], proj)  # other tests may have run experiments in it
    dvc(proj, "repro")
    sh(["git", "add", "-A"], proj)
    sh(["git", "commit", "-qm", "run 1"], proj)
    set_param(proj, "temperature", 2)
    dvc(proj, "repro")
    sh(["git", "add", "-A"], proj)
    sh(["git", "commit", "-qm", "temperature 2"], proj)
    return proj


def test_plot_files_are_in_git_not_in_the_dvc_cache(history):
    tracked = set(sh(["git", "ls-files", "metrics"], history).stdout.split())
    for role in ("teacher", "baseline", "student"):
        for kind in ("curves", "per_class", "confusion", "calibration"):
            assert f"metrics/{kind}/{role}.csv" in tracked


def test_plots_diff_across_commits_in_a_fresh_clone(history, tmp_path):
    clone = tmp_path / "clone"
    sh(["git", "clone", "-q", str(history), str(clone)], tmp_path)
    assert not (clone / ".dvc" / "cache").exists()  # no DVC cache, no remote: only git
    out = dvc(clone, "plots", "diff", "HEAD~1", "--json")
    shown = json.loads(out.stdout)
    assert not shown.get("errors"), shown.get("errors")
    plots = shown["data"]
    for role in ("teacher", "baseline", "student"):
        for kind in ("curves", "per_class", "confusion", "calibration"):
            (rendered,) = plots[f"metrics/{kind}/{role}.csv"]
            assert set(rendered["revisions"]) == {"workspace", "HEAD~1"}
    # The overlays: train and val loss of all three models, 2 epochs, 2 revisions.
    (loss,) = plots["loss per epoch, train and validation"]
    assert len(loss["content"]["data"]["values"]) == 3 * 2 * 2 * 2
    # What changed between the two students shows: errors per class on a count axis, and the
    # confusion matrix's off-diagonal alone (its colour scale spans the errors, not the diagonal).
    (per_class,) = plots["metrics/per_class/student.csv"]
    assert per_class["content"]["encoding"]["x"]["field"] == "errors"
    errors = {rev: sum(int(v["errors"]) for v in per_class["content"]["data"]["values"] if v["rev"] == rev)
              for rev in ("workspace", "HEAD~1")}
    (confusion,) = plots["metrics/confusion/student.csv"]
    cells = confusion["content"]["data"]["values"]
    assert all(v["actual"] != v["predicted"] for v in cells)
    assert errors == {rev: sum(v["rev"] == rev for v in cells) for rev in errors}
    for rev in errors:
        assert errors[rev] == json.loads(sh(["git", "show", f"{'HEAD' if rev == 'workspace' else rev}:"
                                             "metrics/evaluate.json"], clone).stdout)["student"]["errors"]
    # A reliability diagram is (confidence, accuracy) per non-empty bin.
    (rel,) = plots["metrics/calibration/student.csv"]
    assert all(0 <= float(v["confidence"]) <= 1 and 0 <= float(v["accuracy"]) <= 1
               for v in rel["content"]["data"]["values"])


def test_the_run_cache_restores_stages_with_plots_in_git(history):
    """Uncached plot outputs keep DVC's run-cache: going back to temperature 20 reruns nothing."""
    proj = history
    sh(["git", "checkout", "HEAD~1", "--", "params.yaml"], proj)
    try:
        out = dvc(proj, "repro")
        log = out.stdout + out.stderr
        for stage in ("train_student", "evaluate", "export_onnx"):
            assert f"Stage '{stage}' is cached - skipping run" in log
        for path in ("metrics/curves/student.csv", "metrics/calibration/student.csv", "metrics/export.json"):
            assert (proj / path).read_text() == sh(["git", "show", f"HEAD~1:{path}"], proj).stdout
    finally:
        sh(["git", "checkout", "HEAD", "--", "params.yaml"], proj)
        dvc(proj, "checkout")  # also restores the uncached plots (copied from the run-cache)


def test_dvc_artifacts_get_a_registered_version(history, tmp_path):
    lock = yaml.safe_load(sh(["git", "show", "HEAD:dvc.lock"], history).stdout)
    md5 = {o["path"]: o["md5"] for s in lock["stages"].values() for o in s.get("outs", [])}
    for name, path in (("student", "models/student.pt"), ("student-onnx", "models/student.onnx")):
        # What `gto register <name> --version v1.0.0` writes: DVC finds versions by these tags.
        sh(["git", "tag", "-a", f"{name}@v1.0.0", "-m", f"Registering artifact {name} version v1.0.0"], history)
        dvc(tmp_path, "artifacts", "get", str(history), name, "-o", str(tmp_path / name))
        assert file_md5(tmp_path / name) == md5[path]


def test_a_grid_sweep_from_the_queue(history):
    proj = history
    dvc(proj, "exp", "run", "--queue", "-S", "temperature=1,4", "-S", "alpha=0.5")
    queued = dvc(proj, "queue", "status").stdout
    assert queued.count("Queued") == 2
    dvc(proj, "exp", "run", "--run-all")
    rows = list(csv.DictReader(io.StringIO(dvc(proj, "exp", "show", "--csv").stdout)))
    ran = {(r["temperature"], r["alpha"]): r for r in rows if r["Experiment"]}  # the baseline rows have none
    assert set(ran) == {("1", "0.5"), ("4", "0.5")}
    assert all(0 < float(r["student.accuracy"]) <= 1 for r in ran.values())
    # The README's readable table: params and accuracy-type metrics, no wall times.
    header = dvc(proj, "exp", "show", "--csv", *READABLE).stdout.splitlines()[0].split(",")
    assert {"temperature", "student.accuracy", "student.ece", "kd_gain"} <= set(header)
    assert not [c for c in header if "seconds" in c or "cpu_ms" in c or "/" in c]
