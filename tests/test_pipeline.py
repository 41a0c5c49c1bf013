"""End to end: the real dvc.yaml on shrunken params, in a throwaway git repo."""
import csv
import io
import json
import os
import shutil
import sys

import pytest

from conftest import REPO, sh, stages_run
from kd.files import file_md5

ALL_STAGES = {"check_params", "prepare", "train_teacher", "generate_soft_labels",
              "train_baseline", "train_student", "evaluate", "export_onnx"}


@pytest.fixture(scope="module")
def project(built_project):
    return built_project


def test_repro_runs_every_stage_and_writes_metrics(project):
    proj, first = project
    assert stages_run(first) == ALL_STAGES
    metrics = json.loads((proj / "metrics/evaluate.json").read_text())
    assert metrics["teacher"]["params"] == 2_395_210
    assert metrics["student"]["params"] == metrics["baseline"]["params"] == 1_276_810
    for role in ("teacher", "baseline", "student"):
        assert 0.1 < metrics[role]["accuracy"] <= 1
        assert metrics[role]["errors"] == round((1 - metrics[role]["accuracy"]) * 10000)
        curve = (proj / f"metrics/curves/{role}.csv").read_text().splitlines()
        assert curve[0].startswith("epoch,") and len(curve) == 3  # header + 2 epochs
        # Plots of the errors: per class, and the confusion matrix's off-diagonal (one row per error).
        per_class = list(csv.DictReader(io.StringIO((proj / f"metrics/per_class/{role}.csv").read_text())))
        assert [r["class"] for r in per_class] == list("0123456789")
        assert sum(int(r["images"]) for r in per_class) == 10000
        assert sum(int(r["errors"]) for r in per_class) == metrics[role]["errors"]
        confusion = list(csv.DictReader(io.StringIO((proj / f"metrics/confusion/{role}.csv").read_text())))
        assert len(confusion) == metrics[role]["errors"] and all(r["actual"] != r["predicted"] for r in confusion)
        for c in per_class:  # the rows of the matrix add up to the class's errors
            assert sum(r["actual"] == c["class"] for r in confusion) == int(c["errors"])
        reliability = (proj / f"metrics/calibration/{role}.csv").read_text().splitlines()
        assert reliability[0] == "confidence,accuracy" and 2 <= len(reliability) <= 16  # <= 15 bins
        assert 0 <= metrics[role]["ece"] <= 1
        assert "corrected" not in metrics[role]  # omit_classes is empty
    for role in ("baseline", "student"):  # fidelity to the teacher
        assert 0 <= metrics[role]["agreement"] <= 1 and metrics[role]["kl_from_teacher"] >= 0
    assert "agreement" not in metrics["teacher"]
    assert (proj / "metrics/timing/train_teacher.json").exists()
    cost = json.loads((proj / "metrics/model_cost.json").read_text())
    assert cost["teacher"] == {"macs": 784 * 1200 + 1200 * 1200 + 1200 * 10, "params": 2_395_210}
    assert cost["student"] == cost["baseline"] == {"macs": 784 * 800 + 800 * 800 + 800 * 10, "params": 1_276_810}
    latency = json.loads((proj / "metrics/latency.json").read_text())
    assert all(latency[r]["cpu_ms_per_image_batch1"] > 0 for r in ("teacher", "baseline", "student"))
    export = json.loads((proj / "metrics/export.json").read_text())
    assert export["onnx"]["agreement"] == 1.0 and export["onnx"]["max_abs_logit_diff"] < 1e-4
    assert export["onnx"]["accuracy"] == export["pytorch"]["accuracy"]  # both on the CPU
    # evaluate may have run on a GPU
    assert export["pytorch"]["accuracy"] == pytest.approx(metrics["student"]["accuracy"], abs=5e-4)
    assert export["onnx_int8"]["size_bytes"] < export["onnx"]["size_bytes"] / 3
    assert (proj / "models/student.onnx").stat().st_size == export["onnx"]["size_bytes"]
    onnx_latency = json.loads((proj / "metrics/export_latency.json").read_text())
    assert all(onnx_latency[k]["cpu_ms_per_image_batch256"] > 0 for k in ("pytorch", "onnx", "onnx_int8"))
    assert sh([sys.executable, "-m", "dvc", "status"], proj).stdout.strip().endswith("up to date.")


def mlflow_store(proj):
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{proj}/mlflow.db")
    exp = client.get_experiment_by_name("kd-mnist")
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = {p.info.run_id: {r.info.run_name: r for r in runs
                                if r.data.tags.get("mlflow.parentRunId") == p.info.run_id} for p in parents}
    return client, exp, parents, children


def test_mlflow_has_a_parent_run_and_a_child_per_stage(project):
    proj, first = project
    client, exp, parents, children = mlflow_store(proj)
    commit = sh(["git", "rev-parse", "HEAD"], proj).stdout.strip()
    assert len(parents) == 1  # the one `dvc repro` so far
    parent = parents[0]
    assert parent.info.run_name == commit[:7] and parent.info.status == "FINISHED"
    assert parent.data.tags["git_commit"] == commit and parent.data.params["teacher.epochs"] == "2"
    stages = children[parent.info.run_id]
    assert set(stages) == ALL_STAGES
    for name, run in stages.items():
        assert run.info.status == "FINISHED"
        assert run.data.tags["stage"] == name and run.data.tags["dataset"] == "mnist"
        assert run.data.tags["git_commit"] == commit and "dvc_exp_name" not in run.data.tags
        assert run.data.metrics["seconds"] > 0

    teacher = stages["train_teacher"]
    # Only the params the stage reads, as dvc.yaml lists them: teacher.* (its own seed included).
    assert teacher.data.params["teacher.epochs"] == "2" and teacher.data.params["teacher.seed"] == "0"
    assert not any(k.startswith(("student.", "data.")) or k in ("temperature", "seed") for k in teacher.data.params)
    assert set(stages["check_params"].data.params) == set(parent.data.params)  # reads all of params.yaml
    # The teacher's views are drawn with the student's augmentation.
    assert set(stages["generate_soft_labels"].data.params) == {
        "seed", "soft_labels.mode", "soft_labels.views", "student.jitter", "student.flip", "teacher.precision"}
    curve = [m.step for m in client.get_metric_history(teacher.info.run_id, "val_acc")]
    assert curve == [1, 2]
    # Size numbers come from evaluate (model_cost.json); training runs say what ran them.
    assert teacher.data.tags["precision"] in ("fp32", "bf16") and teacher.data.tags["cpu_capability"]
    assert teacher.data.metrics["teacher/epochs"] == 2
    assert {a.path for a in client.list_artifacts(teacher.info.run_id)} >= {
        "metrics", "curves"}

    evaluate = stages["evaluate"]
    test = json.loads((proj / "metrics/evaluate.json").read_text())
    for run in (evaluate, parent):  # final test metrics, named like `dvc metrics show` columns
        assert run.data.metrics["evaluate/student.accuracy"] == pytest.approx(test["student"]["accuracy"])
        assert run.data.metrics["model_cost/teacher.macs"] == 784 * 1200 + 1200 * 1200 + 1200 * 10
    # The headline columns of the runs table's training view (kd_pipeline.store.VIEW_COLUMNS).
    assert {k: parent.data.metrics[k] for k in ("teacher.test_accuracy", "baseline.test_accuracy",
                                                "student.test_accuracy", "kd_gain")} == pytest.approx({
        "teacher.test_accuracy": test["teacher"]["accuracy"], "baseline.test_accuracy": test["baseline"]["accuracy"],
        "student.test_accuracy": test["student"]["accuracy"], "kd_gain": test["kd_gain"]})
    assert exp.tags["mlflow.sharedViewState.kd-training"]
    assert {a.path for a in client.list_artifacts(evaluate.info.run_id, "confusion")} == {
        f"confusion/{r}.png" for r in ("teacher", "baseline", "student")}
    assert {a.path for a in client.list_artifacts(evaluate.info.run_id, "metrics")} >= {
        "metrics/evaluate.json", "metrics/model_cost.json", "metrics/latency.json"}

    models = {m.name: m for m in client.search_logged_models([exp.experiment_id])}
    assert {n: m.source_run_id for n, m in models.items()} == {
        "teacher": teacher.info.run_id, "baseline": stages["train_baseline"].info.run_id,
        "student": stages["train_student"].info.run_id, "student_onnx": stages["export_onnx"].info.run_id,
        "student_onnx_int8": stages["export_onnx"].info.run_id}
    assert models["student_onnx"].tags["dvc_md5"] == file_md5(proj / "models/student.onnx")
    import mlflow.pytorch
    import mlflow.pyfunc
    import numpy as np
    import torch

    mlflow.set_tracking_uri(f"sqlite:///{proj}/mlflow.db")
    loaded = mlflow.pytorch.load_model(f"models:/{models['teacher'].model_id}")
    assert loaded(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    for name in ("teacher", "student_onnx"):  # the class names travel inside the models
        assert mlflow.models.get_model_info(f"models:/{models[name].model_id}").metadata["classes"] == list("0123456789")
    onnx = mlflow.pyfunc.load_model(f"models:/{models['student_onnx'].model_id}")
    assert onnx.predict(np.zeros((3, 1, 28, 28), np.float32))["logits"].shape == (3, 10)

    # `champion` only for a student that beats the baseline, with an ONNX copy that agrees.
    export = json.loads((proj / "metrics/export.json").read_text())
    deserves = test["student"]["accuracy"] > test["baseline"]["accuracy"] and export["onnx"]["agreement"] == 1.0
    aliases = client.get_registered_model("kd-mnist-student").aliases
    assert ("champion" in aliases) == deserves and str(aliases.get("candidate")) == "1"
    assert ("kd-mnist-student version 1 is now champion" if deserves else
            "kd-mnist-student version 1 is not made champion") in first.stdout
    # Every stage ends with the link to the runs table in the MLflow UI.
    link = (f"MLflow runs: http://127.0.0.1:5000/#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning"
            "&viewStateShareKey=kd-training (start the UI first: mlflow ui --backend-store-uri sqlite:///mlflow.db "
            "--port 5000)")
    assert all(f"[{name}] {link}" in first.stdout for name in ALL_STAGES), first.stdout[-2000:]


def test_mlflow_ui_lists_the_stage_runs(project, tmp_path):
    """Headless Chromium (Debian's chromium + chromium-driver) on `mlflow server`, opened on the
    link the stages print: the training runs table, the parent's headline metrics as columns."""
    from system import require_apt

    # `make test` installs both; require_apt covers a bare `pytest` (and fails under CI).
    chromium = require_apt("chromium", "/usr/bin/chromium")
    chromedriver = require_apt("chromium-driver", "/usr/bin/chromedriver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from kd_pipeline.store import ui_link
    from mlflow_server import mlflow_server

    proj, _ = project
    _, exp, parents, _ = mlflow_store(proj)
    headline = ("teacher.test_accuracy", "baseline.test_accuracy", "student.test_accuracy", "kd_gain")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1500,820"):
        opts.add_argument(arg)
    with mlflow_server(f"sqlite:///{proj}/mlflow.db", proj / "mlartifacts", tmp_path / "server.log") as server:
        link = ui_link(server.url, exp.experiment_id).removeprefix("MLflow runs: ")
        browser = webdriver.Chrome(service=Service(chromedriver), options=opts)
        try:
            browser.get(link)
            wait = WebDriverWait(browser, 90)
            # Child runs sit folded under their parent until its row is expanded.
            expand = wait.until(lambda b: b.find_elements(
                By.CSS_SELECTOR, 'button[data-component-id*="runnamecellrenderer"]'))
            for close in browser.find_elements(By.CSS_SELECTOR, 'button[aria-label="Close"]'):
                close.click()  # the assistant side panel and the shared-view banner, which hide the table
            wait.until(lambda b: all(h in b.find_element(By.TAG_NAME, "body").text for h in headline))
            parent_row = browser.find_element(By.TAG_NAME, "body").text
            expand[0].click()
            wait.until(lambda b: "train_teacher" in b.find_element(By.TAG_NAME, "body").text)
            table = browser.find_element(By.TAG_NAME, "body").text
            shot = tmp_path / "mlflow-ui.png"
            browser.save_screenshot(str(shot))
        finally:
            browser.quit()
    assert "Model training" in table and "Traces" in table and "Usage" not in table  # not GenAI's overview
    assert parents[0].info.run_name in parent_row
    # The parent's row, folded, already shows its headline numbers (evaluate.json, 4 decimals).
    test = json.loads((proj / "metrics/evaluate.json").read_text())
    assert f"{test['student']['accuracy']:.4f}".rstrip("0") in parent_row
    missing = {name for name in ALL_STAGES if name not in table}
    assert not missing, f"stage runs not in the MLflow runs table: {missing}"
    assert shot.stat().st_size > 10_000
    if os.environ.get("KD_SAVE_SCREENSHOT"):  # refresh the README picture: docs/mlflow-ui.png
        shutil.copyfile(shot, REPO / "docs" / "mlflow-ui.png")


@pytest.fixture(scope="module")
def temperature_exp(project):
    """`dvc exp run -S temperature=5` on the built project, once for the tests that look at it,
    whichever of them runs (alone or first): (its output, the models' and soft labels' md5s
    before it, the MLflow parent runs before it)."""
    proj, _ = project
    before = {r: file_md5(proj / f"models/{r}.pt") for r in ("teacher", "baseline", "student")}
    before["soft_labels"] = file_md5(proj / "data/soft_labels.pt")
    parents_before = {p.info.run_id for p in mlflow_store(proj)[2]}
    out = sh([sys.executable, "-m", "dvc", "exp", "run", "-S", "temperature=5"], proj)
    return out, before, parents_before


def test_temperature_change_reruns_only_the_distilled_student(project, temperature_exp):
    proj, _ = project
    out, before, _ = temperature_exp
    # check_params reruns (it reads every param) but its marker is unchanged.
    assert stages_run(out) == {"check_params", "train_student", "evaluate", "export_onnx"}
    assert file_md5(proj / "models/teacher.pt") == before["teacher"]
    assert file_md5(proj / "models/baseline.pt") == before["baseline"]
    assert file_md5(proj / "data/soft_labels.pt") == before["soft_labels"]
    assert file_md5(proj / "models/student.pt") != before["student"]
    shown = sh([sys.executable, "-m", "dvc", "exp", "show", "--csv"], proj).stdout.splitlines()
    header = shown[0].split(",")
    temps = {row.split(",")[header.index("temperature")] for row in shown[1:]}
    assert "5" in temps and "student.accuracy" in header


def test_exp_run_gets_its_own_parent_run(project, temperature_exp):
    proj, _ = project
    _, _, parents_before = temperature_exp
    _, _, parents, children = mlflow_store(proj)
    new = [p for p in parents if p.info.run_id not in parents_before]
    assert len(new) == 1, [p.info.run_name for p in new]  # one parent for the one `dvc exp run`
    exp = new[0]
    commit = sh(["git", "rev-parse", "HEAD"], proj).stdout.strip()
    exp_name = exp.data.tags["dvc_exp_name"]
    assert exp.info.run_name == exp_name and exp_name in sh([sys.executable, "-m", "dvc", "exp", "list"], proj).stdout
    assert exp.data.tags["dvc_baseline_rev"] == commit and exp.data.params["temperature"] == "5.0"
    stages = children[exp.info.run_id]
    assert set(stages) == {"check_params", "train_student", "evaluate", "export_onnx"}  # what actually ran
    assert all(r.data.tags["dvc_exp_name"] == exp_name for r in stages.values())


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
    # Tracking off (also saves time): results must not depend on it. The teacher's
    # files still come from the first, tracked `dvc repro`.
    sh([sys.executable, "-m", "dvc", "repro"], proj, env={"KD_TRACKING": "0"})
    files = ["metrics/evaluate.json", "metrics/teacher.json", "metrics/student.json",
             "metrics/curves/student.csv", "metrics/confusion/student.csv"]
    first = {f: (proj / f).read_bytes() for f in files}
    sh([sys.executable, "-m", "dvc", "repro", "--force"], proj, env={"KD_TRACKING": "0"})
    assert {f: (proj / f).read_bytes() for f in files} == first


def test_final_models_train_on_every_image_under_max_norm(project):
    """data.val_size 0 (Hinton's final models): no validation split, val metrics null, and every
    stage from prepare to export still runs, tracking on; in a temp workspace, leaving ours."""
    proj, _ = project
    sh([sys.executable, "-m", "dvc", "exp", "run", "--temp", "-n", "noval", "-S", "data.val_size=0",
        "-S", "teacher.max_norm=3", "-S", "student.max_norm=3"], proj)
    ref = next(r for r in sh(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], proj).stdout.split()
               if r.endswith("/noval"))
    teacher = json.loads(sh(["git", "show", f"{ref}:metrics/teacher.json"], proj).stdout)
    assert teacher["val_acc"] is None and teacher["train_samples"] == 400  # max_train, none held out
    evaluated = json.loads(sh(["git", "show", f"{ref}:metrics/evaluate.json"], proj).stdout)
    assert 0.1 < evaluated["student"]["accuracy"] <= 1
    assert json.loads(sh([sys.executable, "-m", "dvc", "status", "--json"], proj).stdout) == {}


def test_an_edit_only_evaluate_uses_changes_only_evaluate(project):
    """Stage deps are the code each stage imports: ECE binning retrains nothing."""
    proj, _ = project
    code = proj / "src/kd/evaluate.py"
    original = code.read_text()
    assert "bins: int = 15" in original
    code.write_text(original.replace("bins: int = 15", "bins: int = 10"))
    try:
        changed = json.loads(sh([sys.executable, "-m", "dvc", "status", "--json"], proj).stdout)
    finally:
        code.write_text(original)
    assert set(changed) == {"evaluate"}, changed
    assert json.loads(sh([sys.executable, "-m", "dvc", "status", "--json"], proj).stdout) == {}
