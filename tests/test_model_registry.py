"""MLflow side of a `dvc repro`: the registered student, model metrics and lineage.
Reads the tiny built project's store; changes nothing in it."""
import json
import os
import shutil

import pytest
import torch

from conftest import REPO
from kd.files import file_md5, load_torch


@pytest.fixture(scope="module")
def store(built_project):
    import mlflow
    from mlflow import MlflowClient

    proj, _ = built_project
    uri = f"sqlite:///{proj}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("kd-mnist")
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])
    first = [r for r in runs if "mlflow.parentRunId" not in r.data.tags][0]  # the first `dvc repro`
    stages = {r.info.run_name: client.get_run(r.info.run_id) for r in runs  # get_run: with inputs
              if r.data.tags.get("mlflow.parentRunId") == first.info.run_id}
    return proj, client, exp, stages


def test_the_candidate_student_loads_back_with_its_test_accuracy(store):
    import mlflow.pytorch

    proj, client, _, _ = store
    version = client.get_model_version_by_alias("kd-mnist-student", "candidate")
    model_id = version.source.removeprefix("models:/")
    logged = client.get_logged_model(model_id)
    assert logged.name == "student" and logged.tags["dvc_path"] == "models/student.pt"
    test_metrics = {m.key: m.value for m in logged.metrics if m.dataset_name == "mnist-test"}
    assert {"accuracy", "ece", "agreement", "kl_from_teacher", "errors"} <= set(test_metrics)
    assert {"onnx.agreement", "onnx.max_abs_logit_diff", "onnx_int8.accuracy"} <= set(test_metrics)

    model = mlflow.pytorch.load_model("models:/kd-mnist-student@candidate")
    test = load_torch(proj / "data/prepared/test.pt")
    with torch.no_grad():
        pred = torch.cat([model(test["x"][i : i + 2000].float() / 255).argmax(1) for i in range(0, 10000, 2000)])
    accuracy = round(int((pred == test["y"]).sum()) / len(pred), 6)
    assert accuracy == pytest.approx(test_metrics["accuracy"], abs=1e-6)
    if logged.tags["dvc_md5"] == file_md5(proj / "models/student.pt"):  # no experiment changed it since
        assert accuracy == json.loads((proj / "metrics/evaluate.json").read_text())["student"]["accuracy"]


def test_every_evaluated_model_carries_its_test_metrics(store):
    proj, client, exp, _ = store
    evaluate = json.loads((proj / "metrics/evaluate.json").read_text())
    for role in ("teacher", "baseline", "student"):
        models = client.search_logged_models(
            [exp.experiment_id], filter_string=f"tags.dvc_md5 = '{file_md5(proj / 'models' / f'{role}.pt')}'")
        assert models, role
        metrics = {m.key: m.value for m in models[0].metrics if m.dataset_name == "mnist-test"}
        assert metrics["accuracy"] == pytest.approx(evaluate[role]["accuracy"])
        assert metrics["ece"] == pytest.approx(evaluate[role]["ece"])


def test_training_runs_log_their_data_and_teacher_as_inputs(store):
    proj, client, _, stages = store
    md5 = {name: file_md5(proj / path) for name, path in (
        ("mnist-train", "data/prepared/train.pt"), ("mnist-val", "data/prepared/val.pt"),
        ("mnist-soft-labels", "data/soft_labels.pt"), ("mnist-test", "data/prepared/test.pt"))}

    def inputs(stage):
        return {d.dataset.name: (d.dataset.digest, {t.key: t.value for t in d.tags})
                for d in stages[stage].inputs.dataset_inputs}

    student = inputs("train_student")
    assert {n: d for n, (d, _) in student.items()} == {n: md5[n] for n in ("mnist-train", "mnist-val",
                                                                          "mnist-soft-labels")}
    assert student["mnist-val"][1]["mlflow.data.context"] == "validation"
    soft = student["mnist-soft-labels"][1]
    assert soft["teacher_md5"] == file_md5(proj / "models/teacher.pt") and soft["dvc_path"] == "data/soft_labels.pt"
    # The teacher's own logged model, as an input of the student's run.
    teacher_model = stages["train_teacher"].outputs.model_outputs[0].model_id
    assert [m.model_id for m in stages["train_student"].inputs.model_inputs] == [teacher_model]
    assert {n: d for n, (d, _) in inputs("train_teacher").items()} == {n: md5[n] for n in ("mnist-train", "mnist-val")}
    assert inputs("evaluate")["mnist-test"][0] == md5["mnist-test"]


def test_mlflow_ui_shows_the_candidate_with_its_metrics(store, tmp_path):
    """The registered student's model page in headless Chromium (as test_pipeline's UI test)."""
    from system import require_apt

    chromium = require_apt("chromium", "/usr/bin/chromium")
    chromedriver = require_apt("chromium-driver", "/usr/bin/chromedriver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from mlflow_server import mlflow_server

    proj, client, exp, _ = store
    model_id = client.get_model_version_by_alias("kd-mnist-student", "candidate").source.removeprefix("models:/")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1500,1100"):
        opts.add_argument(arg)
    with mlflow_server(f"sqlite:///{proj}/mlflow.db", proj / "mlartifacts", tmp_path / "server.log") as server:
        browser = webdriver.Chrome(service=Service(chromedriver), options=opts)
        try:
            browser.get(f"{server.url}/#/experiments/{exp.experiment_id}/models/{model_id}")
            wait = WebDriverWait(browser, 90)
            wait.until(lambda b: "kl_from_teacher" in b.find_element(By.TAG_NAME, "body").text)
            for close in browser.find_elements(By.CSS_SELECTOR, 'button[aria-label="Close"]'):
                close.click()  # the assistant side panel
            page = browser.find_element(By.TAG_NAME, "body").text
            shot = tmp_path / "mlflow-model.png"
            browser.save_screenshot(str(shot))
        finally:
            browser.quit()
    for text in ("student", "accuracy", "ece", "agreement", "mnist-test", "kd-mnist-student"):
        assert text in page, text
    assert shot.stat().st_size > 10_000
    if os.environ.get("KD_SAVE_SCREENSHOT"):  # refresh the README picture: docs/mlflow-model.png
        shutil.copyfile(shot, REPO / "docs" / "mlflow-model.png")


def offline_tracked_params(tmp_path, monkeypatch):
    """The repo's params (no mirror needed), run from tmp_path into its own MLflow store."""
    import yaml

    from kd.params import Params

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["data"]["mirror"] = None
    return Params.model_validate(raw)


def test_model_metrics_and_registry_follow_the_checkpoint_md5(tmp_path, monkeypatch):
    """Without DVC: the logged model of a checkpoint is found by its md5, a checkpoint no run
    logged is logged by the evaluating run, and registering it again adds no version."""
    from kd.checkpoint import new_model, save_model
    from kd.files import save_torch
    from kd_pipeline.tracking import Tracker

    params = offline_tracked_params(tmp_path, monkeypatch)
    example = torch.zeros(2, 1, 28, 28, dtype=torch.uint8)
    models = {}
    for seed in (0, 1):
        torch.manual_seed(seed)
        models[seed] = new_model("mlp800", "mnist").eval()
        save_model(tmp_path / f"student{seed}.pt", models[seed], arch="mlp800", dataset="mnist")
    save_torch({"x": example}, tmp_path / "test.pt")

    train = Tracker("train_student")
    train.start(params)
    trained = train.log_model(models[0], "student", example, file=tmp_path / "student0.pt")
    train.end("FINISHED")
    assert trained.tags["dvc_md5"] == file_md5(tmp_path / "student0.pt")

    evaluate = Tracker("evaluate")
    evaluate.start(params)
    found = evaluate.model_metrics(tmp_path / "student0.pt", "student", models[0], example,
                                   {"accuracy": 0.5, "corrected": {"accuracy": 0.75}},
                                   dataset=(tmp_path / "test.pt", "mnist-test"))
    assert found.model_id == trained.model_id
    first = evaluate.register(found, "mnist", "student", alias="candidate")
    again = evaluate.register(evaluate._client.get_logged_model(found.model_id), "mnist", "student",
                              alias="candidate")
    assert str(first.version) == str(again.version) == "1"
    new = evaluate.model_metrics(tmp_path / "student1.pt", "student", models[1], example, {"accuracy": 0.25})
    assert new.model_id != trained.model_id and new.source_run_id == evaluate.run_id
    second = evaluate.register(new, "mnist", "student", alias="candidate")
    client = evaluate._client
    evaluate.end("FINISHED")
    assert str(second.version) == "2"
    assert str(client.get_model_version_by_alias("kd-mnist-student", "candidate").version) == "2"
    metrics = {(m.key, m.dataset_name): m.value for m in client.get_logged_model(trained.model_id).metrics}
    assert metrics[("accuracy", "mnist-test")] == 0.5 and metrics[("corrected.accuracy", "mnist-test")] == 0.75


def test_onnx_models_carry_classes_and_champion_needs_both_checks(tmp_path, monkeypatch, capsys):
    """Without DVC: the ONNX files become mlflow.onnx models with the class names, and the
    registered student becomes `champion` only when it beats the baseline and its ONNX copy
    agrees with PyTorch; otherwise one line says why and the alias stays."""
    import mlflow.onnx

    from kd.checkpoint import load_model, new_model, save_model
    from kd.datasets import builtin_spec
    from kd.export import MAX_LOGIT_DIFF, export_onnx, quantize_int8
    from kd.files import save_torch
    from kd_pipeline.tracking import Tracker

    params = offline_tracked_params(tmp_path, monkeypatch)
    example = torch.zeros(2, 1, 28, 28, dtype=torch.uint8)
    save_torch({"x": example}, tmp_path / "test.pt")
    paths = {}
    for seed in (0, 1):
        torch.manual_seed(seed)
        paths[seed] = tmp_path / f"student{seed}.pt"
        save_model(paths[seed], new_model("mlp800", "mnist").eval(), arch="mlp800", dataset="mnist")
    model, ckpt = load_model(paths[0])
    fp32, int8 = tmp_path / "student.onnx", tmp_path / "student.int8.onnx"
    export_onnx(model, builtin_spec("mnist"), fp32)
    quantize_int8(fp32, int8, builtin_spec("mnist"))
    check = {"onnx": {"accuracy": 0.5, "agreement": 1.0, "max_abs_logit_diff": 1e-6, "size_bytes": 9},
             "onnx_int8": {"accuracy": 0.25, "agreement": 0.75, "max_abs_logit_diff": 0.1, "size_bytes": 3}}
    better = {"student": {"accuracy": 0.9}, "baseline": {"accuracy": 0.8}}
    worse = {"student": {"accuracy": 0.8}, "baseline": {"accuracy": 0.8}}

    run = Tracker("export_onnx")
    run.start(params)
    client = run._client
    trained = run.model_metrics(paths[0], "student", model, example, {"accuracy": 0.5})
    assert trained.tags["dvc_md5"] == file_md5(paths[0])
    pytorch_meta = mlflow.models.get_model_info(f"models:/{trained.model_id}").metadata
    assert pytorch_meta["classes"] == [str(d) for d in range(10)] and pytorch_meta["image_size"] == [28, 28]
    assert "grayscale" in pytorch_meta["input"]
    run.register(trained, "mnist", "student", alias="candidate")
    run.log_onnx_models(ckpt, {"onnx": fp32, "onnx_int8": int8}, example, check, (tmp_path / "test.pt", "mnist-test"),
                        paths[0])
    onnx_models = {m.name: m for m in client.search_logged_models([run._experiment_id()])
                   if m.name.startswith("student_onnx")}
    assert set(onnx_models) == {"student_onnx", "student_onnx_int8"}
    for name, model_entry in onnx_models.items():
        key = name.removeprefix("student_")
        assert model_entry.source_run_id == run.run_id and model_entry.tags["exported_from_dvc_md5"] == file_md5(paths[0])
        metrics = {m.key: m.value for m in model_entry.metrics if m.dataset_name == "mnist-test"}
        assert metrics["agreement"] == check[key]["agreement"]
        info = mlflow.models.get_model_info(f"models:/{model_entry.model_id}")
        assert info.metadata["classes"][3] == "3" and list(info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == [
            -1, 1, 28, 28]
    logits = mlflow.onnx.load_model(f"models:/{onnx_models['student_onnx'].model_id}")
    assert logits.graph.input[0].name == "images"

    run.promote(paths[0], "mnist", worse, check, MAX_LOGIT_DIFF)
    assert "is not made champion: its test accuracy 0.8000 does not beat" in capsys.readouterr().out
    wrong_onnx = {**check, "onnx": {**check["onnx"], "agreement": 0.999}}
    run.promote(paths[0], "mnist", better, wrong_onnx, MAX_LOGIT_DIFF)
    assert "its ONNX copy disagrees with PyTorch" in capsys.readouterr().out
    assert "champion" not in client.get_registered_model("kd-mnist-student").aliases
    run.promote(paths[0], "mnist", better, check, MAX_LOGIT_DIFF)
    assert "version 1 is now champion" in capsys.readouterr().out
    # A second student that does not qualify leaves the champion where it was.
    other = run.model_metrics(paths[1], "student", model, example, {"accuracy": 0.25})
    run.register(other, "mnist", "student", alias="candidate")
    run.promote(paths[1], "mnist", worse, check, MAX_LOGIT_DIFF)
    run.end("FINISHED")
    assert "version 2 is not made champion" in capsys.readouterr().out
    assert str(client.get_model_version_by_alias("kd-mnist-student", "champion").version) == "1"
    assert str(client.get_model_version_by_alias("kd-mnist-student", "candidate").version) == "2"
