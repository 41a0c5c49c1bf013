"""MLflow tracking: what a stage logs, and that a tracking failure never fails a stage."""
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import REPO
from kd.datasets import builtin_spec
from kd.files import save_torch, write_json
from kd.params import Params
from kd.dvc_stage import dvc_stage, stage_param_keys
from kd_pipeline.run_info import file_metrics, stage_params
from kd_pipeline.tracking import ENV_DEFAULTS, Tracker
from mlflow_server import mlflow_server
from system import free_port


def repo_params(**changes) -> dict:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["data"]["mirror"] = None
    for key, value in changes.items():
        raw[key].update(value)
    return raw


def test_stage_params_are_the_ones_dvc_yaml_lists():
    p = Params.model_validate(repo_params())
    teacher = stage_params(p, stage_param_keys(dvc_stage("train_teacher", REPO / "dvc.yaml")))
    assert teacher["teacher.seed"] == "0" and teacher["teacher.arch"] == "mlp1200"
    # Not the students' seed: a seed sweep must not retrain the teacher.
    assert not any(k.startswith("student.") or k in ("temperature", "seed") for k in teacher)
    student = stage_params(p, stage_param_keys(dvc_stage("train_student", REPO / "dvc.yaml")))
    assert student["omit_classes"] == "[]" and student["temperature"] == "20.0" and "teacher.lr" not in student
    assert stage_param_keys(dvc_stage("check_params", REPO / "dvc.yaml")) is None  # all of params.yaml
    assert stage_params(p, None)["data.mirror"] == "null"
    assert stage_param_keys(dvc_stage("no_such_stage", REPO / "dvc.yaml")) == []


def test_metrics_files_become_metrics_named_like_dvc_columns(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("metrics").mkdir()
    Path("metrics/evaluate.json").write_text(json.dumps(
        {"student": {"accuracy": 0.98, "errors": 200}, "kd_gain": 0.01, "note": "text", "ok": True}))
    assert file_metrics(Path("metrics/evaluate.json")) == {
        "evaluate/student.accuracy": 0.98, "evaluate/student.errors": 200.0, "evaluate/kd_gain": 0.01}


def test_unreachable_server_gives_one_warning_and_no_error(monkeypatch, capsys):
    for key, value in ENV_DEFAULTS.items():
        monkeypatch.setenv(key, value)  # restored after the test
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")  # nothing listens
    tracker = Tracker("train_teacher")
    tracker.start(Params.model_validate(repo_params()))
    tracker.log_epoch({"epoch": 1, "train_loss": 1.0, "val_acc": 0.5})
    tracker.log_figure(lambda: pytest.fail("drew a figure for a dead server"), "x.png")
    tracker.end("FINISHED", seconds=1.0)
    err = capsys.readouterr().err
    assert err.count("warning: MLflow tracking") == 1, err
    assert "[train_teacher] warning: MLflow tracking to http://127.0.0.1:" in err and "starting the run" in err
    assert not tracker.active


def toy_project(root: Path, epochs: int) -> Path:
    """Enough of the repo to run the train_teacher stage on toy data, no dataset needed."""
    for name in ("stages", "src", "dvc.yaml"):
        (shutil.copytree if (REPO / name).is_dir() else shutil.copyfile)(REPO / name, root / name)
    (root / "params.yaml").write_text(yaml.safe_dump(repo_params(teacher={"epochs": epochs, "batch_size": 100})))
    g = torch.Generator().manual_seed(0)
    for split, n in (("train", 200), ("val", 100)):
        y = torch.arange(n) % 10
        x = torch.randint(0, 60, (n, 1, 28, 28), generator=g, dtype=torch.uint8)
        save_torch({"x": x, "y": y}, root / "data" / "prepared" / f"{split}.pt")
    write_json(root / "data/prepared/meta.json", builtin_spec("mnist").to_json())  # what prepare writes beside them
    return root


def test_stage_survives_the_tracking_server_dying_mid_run(tmp_path):
    epochs = 20
    proj = toy_project(tmp_path / "proj", epochs)
    store = f"sqlite:///{tmp_path}/server.db"
    env = {k: v for k, v in os.environ.items() if k != "DVC_ROOT"}
    stage = None
    try:
        with mlflow_server(store, tmp_path / "artifacts", tmp_path / "server.log") as server:
            from mlflow import MlflowClient

            stage = subprocess.Popen([sys.executable, "stages/train_teacher.py"], cwd=proj,
                                     env={**env, "MLFLOW_TRACKING_URI": server.url, "OMP_NUM_THREADS": "1",
                                          "PYTHONPATH": str(proj / "src")},
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            client = MlflowClient(server.url)
            run_id = None
            deadline = time.monotonic() + 180
            while run_id is None and time.monotonic() < deadline and stage.poll() is None:
                exp = client.get_experiment_by_name("kd-mnist")
                runs = client.search_runs([exp.experiment_id], "tags.stage = 'train_teacher'") if exp else []
                if runs and client.get_metric_history(runs[0].info.run_id, "val_acc"):
                    run_id = runs[0].info.run_id
                    # Hold the stage still while the server dies, so it surely has epochs to go.
                    os.kill(stage.pid, signal.SIGSTOP)
                time.sleep(0.1)
            assert run_id, f"the stage never logged its first epoch to the server: {stage.poll() is not None and stage.communicate()[1]}"
        os.kill(stage.pid, signal.SIGCONT)
        out, err = stage.communicate(timeout=300)
    finally:
        if stage is not None and stage.poll() is None:
            stage.kill()
            stage.wait()
    assert stage.returncode == 0, err
    assert err.count("warning: MLflow tracking") == 1, err
    assert "Traceback" not in err
    metrics = json.loads((proj / "metrics/teacher.json").read_text())
    assert metrics["epochs"] == epochs
    assert len((proj / "metrics/curves/teacher.csv").read_text().splitlines()) == epochs + 1
    assert (proj / "models/teacher.pt").exists() and (proj / "metrics/timing/train_teacher.json").exists()
    logged = MlflowClient(store).get_metric_history(run_id, "val_acc")
    assert 1 <= len(logged) < epochs  # it really died mid-run


def test_store_locked_mid_stage_gives_one_warning_line(tmp_path):
    """The project's SQLite store locked by another process mid-stage: MLflow logs some 70
    lines of ERROR and tracebacks about it; the README promises one line. (MLflow waits
    20 s for a locked SQLite database: its busy_timeout.)"""
    epochs = 3
    proj = toy_project(tmp_path / "proj", epochs)
    db = proj / "mlflow.db"  # the default store, beside the project
    env = {k: v for k, v in os.environ.items() if k not in ("DVC_ROOT", "MLFLOW_TRACKING_URI")}
    stage = lock = None
    try:
        stage = subprocess.Popen([sys.executable, "stages/train_teacher.py"], cwd=proj,
                                 env={**env, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(proj / "src")},
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 180
        while lock is None and time.monotonic() < deadline and stage.poll() is None:
            try:
                with sqlite3.connect(db, timeout=0.1) as probe:
                    logged = probe.execute("SELECT count(*) FROM metrics WHERE key = 'val_acc'").fetchone()[0]
            except sqlite3.Error:  # not created yet
                logged = 0
            if logged:
                os.kill(stage.pid, signal.SIGSTOP)  # epochs still to log once it goes on
                lock = sqlite3.connect(db, isolation_level=None)
                lock.execute("BEGIN EXCLUSIVE")
                os.kill(stage.pid, signal.SIGCONT)
            time.sleep(0.1)
        assert lock is not None, f"the stage never logged its first epoch: {stage.poll() is not None and stage.communicate()[1]}"
        out, err = stage.communicate(timeout=300)
    finally:
        if stage is not None and stage.poll() is None:
            stage.kill()
            stage.wait()
        if lock is not None:
            lock.close()
    assert stage.returncode == 0, err
    warnings = [line for line in err.splitlines() if "warning: MLflow tracking" in line]
    assert len(warnings) == 1 and "database is locked" in warnings[0], err
    assert not [line for line in err.splitlines() if "ERROR" in line or "Traceback" in line], err
    assert json.loads((proj / "metrics/teacher.json").read_text())["epochs"] == epochs


def test_ui_link_opens_the_training_view_and_headline_comes_from_evaluate(tmp_path, monkeypatch):
    from kd_pipeline.run_info import headline_metrics
    from kd_pipeline.store import training_view, ui_link

    view = "/#/experiments/7/runs?workflowType=machine_learning&viewStateShareKey=kd-training"
    assert ui_link("https://mlflow.example.org/", "7") == f"MLflow runs: https://mlflow.example.org{view}"
    assert ui_link("sqlite:////elsewhere/x.db", "7") == (
        f"MLflow runs: http://127.0.0.1:5000{view} (start the UI first: mlflow ui --backend-store-uri "
        "sqlite:////elsewhere/x.db --port 5000)")
    key, value = training_view()
    assert key == "mlflow.sharedViewState.kd-training" and "metrics.`kd_gain`" in json.loads(value)["selectedColumns"]
    monkeypatch.chdir(tmp_path)
    Path("metrics").mkdir()
    Path("metrics/evaluate.json").write_text(json.dumps(
        {r: {"accuracy": a} for r, a in (("teacher", 0.99), ("baseline", 0.98), ("student", 0.985))} | {"kd_gain": 0.005}))
    assert headline_metrics(Path("metrics/evaluate.json")) == {
        "teacher.test_accuracy": 0.99, "baseline.test_accuracy": 0.98, "student.test_accuracy": 0.985, "kd_gain": 0.005}
    Path("metrics/export.json").write_text("{}")
    assert headline_metrics(Path("metrics/export.json")) == {}
