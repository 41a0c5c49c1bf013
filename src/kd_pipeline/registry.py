"""Lineage and the model registry in MLflow, keyed by DVC's md5s.

DVC names every file it tracks by its md5 (its cache is content-addressed), so
the md5 is what ties an MLflow record to a DVC output: a dataset input's digest
is the md5 of the split or soft-labels file the run read, and each logged model
carries the md5 of the checkpoint it was saved from (tag `dvc_md5`). Evaluation
finds the logged model of the checkpoint it evaluated by that tag, also when
DVC restored the checkpoint from its cache and nothing was trained this time.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from kd.datasets import DATASETS
from kd.files import file_md5
from kd_pipeline.run_info import numeric_leaves

CONTEXT_TAG = "mlflow.data.context"  # what the MLflow UI shows beside a dataset input


def dataset_entity(path: Path, name: str, profile: dict | None = None):
    """An MLflow dataset for a DVC-tracked file: digest = its md5, source = its path."""
    from mlflow.entities import Dataset

    return Dataset(name=name, digest=file_md5(path), source_type="local",
                   source=json.dumps({"uri": Path(path).as_posix()}),
                   profile=json.dumps(profile) if profile else None)


def dataset_input(path: Path, name: str, context: str, profile: dict | None = None, tags: dict | None = None):
    from mlflow.entities import DatasetInput, InputTag

    tags = {CONTEXT_TAG: context, "dvc_path": Path(path).as_posix(), **(tags or {})}
    return DatasetInput(dataset_entity(path, name, profile), [InputTag(k, str(v)) for k, v in tags.items()])


def model_tags(path: Path) -> dict[str, str]:
    return {"dvc_path": Path(path).as_posix(), "dvc_md5": file_md5(path)}


def _spec(ckpt: dict) -> dict:
    # A checkpoint keeps its data's spec (kd.checkpoint.save_model); older ones only name a built-in dataset.
    if "spec" in ckpt:
        return ckpt["spec"]
    info = DATASETS[ckpt["dataset"]]
    return {"classes": list(info.classes), "shape": list(info.shape)}


def checkpoint_classes(ckpt: dict) -> list[str]:
    """The class names of a checkpoint (kd.checkpoint), index = logit."""
    return list(_spec(ckpt)["classes"])


def model_metadata(ckpt: dict) -> dict:
    """What a user of the MLflow model needs besides the signature, which names no class."""
    channels, height, width = _spec(ckpt)["shape"]
    colours = "RGB" if channels == 3 else "grayscale"
    return {"classes": checkpoint_classes(ckpt), "image_size": [height, width],
            "input": f"float32 [N, C, H, W] in [0, 1], {colours}; normalisation inside the model"}


def find_logged_model(client, experiment_id: str, path: Path):
    """The newest logged model saved from exactly this checkpoint file, or None."""
    found = client.search_logged_models([experiment_id], filter_string=f"tags.dvc_md5 = '{file_md5(path)}'",
                                        order_by=[{"field_name": "creation_time", "ascending": False}],
                                        max_results=1)
    return found[0] if found else None


def register_version(client, name: str, model, run_id: str, alias: str, description: str):
    """A version of registered model `name` for this logged model (the existing one if it has
    one), with `alias` moved to it."""
    import mlflow

    versions = {m["name"]: m["version"] for m in json.loads(model.tags.get("mlflow.modelVersions", "[]"))}
    if name in versions:
        version = str(versions[name])
    else:
        # mlflow.register_model creates the registered model if needed and links the version
        # to the logged model (the model page lists it); it uses the global tracking URI,
        # which Tracker set to this client's.
        version = mlflow.register_model(model.model_uri, name, tags={
            **{k: v for k, v in model.tags.items() if k.startswith("dvc_")}, "evaluated_in_run": run_id}).version
        version = str(version)
        if description and not client.get_registered_model(name).description:
            client.update_registered_model(name, description=description)
    client.set_registered_model_alias(name, alias, version)
    return client.get_model_version(name, version)


def champion_refusal(evaluate: dict, export: dict, max_logit_diff: float) -> str | None:
    """Why the distilled student may not become `champion` (None: it may): it must beat the
    true-label student on the test set (metrics/evaluate.json), and its ONNX copy must compute
    what it computes (metrics/export.json; max_logit_diff: kd.export's tolerance for these
    logits, passed in because kd_pipeline imports no kd module a stage would then depend on)."""
    student, baseline = evaluate["student"]["accuracy"], evaluate["baseline"]["accuracy"]
    onnx = export["onnx"]
    if student <= baseline:
        return f"its test accuracy {student:.4f} does not beat the true-label student's {baseline:.4f}"
    if onnx["agreement"] != 1.0 or onnx["max_abs_logit_diff"] > max_logit_diff:
        return (f"its ONNX copy disagrees with PyTorch (top-1 agreement {onnx['agreement']}, max |logit diff| "
                f"{onnx['max_abs_logit_diff']}, tolerance {max_logit_diff})")
    return None


def registered_version(client, name: str, path: Path):
    """The version of registered model `name` made from checkpoint `path` (tag dvc_md5,
    copied onto it by register_version), or None."""
    found = client.search_model_versions(f"name = '{name}' and tags.dvc_md5 = '{file_md5(path)}'")
    return max(found, key=lambda v: int(v.version)) if found else None


def registered_model_name(dataset: str, role: str = "student") -> str:
    """The registry entry of the distilled student, one per dataset: kd-mnist-student."""
    return f"kd-{dataset}-{role}"


class LineageMixin:
    """The Tracker's lineage and registry calls (kd_pipeline.tracking.Tracker mixes it in): each
    goes through the tracker's `_guard`, so a failure costs one warning, never a result."""

    def log_data_input(self, path: Path, name: str, context: str, profile: dict | None = None,
                       tags: dict | None = None) -> None:
        """A DVC-tracked file the stage reads, as an MLflow dataset input (digest = DVC md5)."""
        if self.active:
            self._guard(f"logging input {path}", lambda: self._client.log_inputs(
                self.run_id, datasets=[dataset_input(path, name, context, profile, tags)]))

    def log_model_input(self, path: Path) -> None:
        """The logged model saved from checkpoint `path` (e.g. the teacher), as an input of this run."""
        if self.active:
            self._guard(f"logging model input {path}", self._log_model_input, path)

    def _log_model_input(self, path: Path) -> None:
        from mlflow.entities import LoggedModelInput

        found = find_logged_model(self._client, self._experiment_id(), path)
        if found is not None:
            self._client.log_inputs(self.run_id, models=[LoggedModelInput(found.model_id)])

    def _experiment_id(self) -> str:
        return self._client.get_run(self.run_id).info.experiment_id

    def model_metrics(self, path: Path, name: str, model, example, metrics: dict[str, float],
                      dataset: tuple[Path, str] | None = None):
        """Attach metrics to the logged model of checkpoint `path` (logged from this run when no
        run logged it yet, e.g. it was trained with tracking off), measured on dataset =
        (file, name). Returns the LoggedModel, or None."""
        if self.active:
            return self._guard(f"attaching metrics to model {name}", self._model_metrics, path, name, model,
                               example, metrics, dataset)
        return None

    def _model_metrics(self, path, name, model, example, metrics, dataset):
        found = find_logged_model(self._client, self._experiment_id(), path)
        if found is None:
            found = self._log_model(model, name, example, path)
        self._attach_metrics(found, metrics, dataset)
        return found

    def _attach_metrics(self, found, metrics, dataset) -> None:
        from mlflow.entities import Metric

        data = {}
        if dataset is not None:
            data = {"dataset_name": dataset[1], "dataset_digest": file_md5(dataset[0])}
        now = int(time.time() * 1000)
        batch = [Metric(k, v, now, 0, model_id=found.model_id, **data) for k, v in numeric_leaves(metrics).items()]
        for i in range(0, len(batch), 1000):
            self._client.log_batch(self.run_id, metrics=batch[i : i + 1000])

    def log_onnx_models(self, ckpt: dict, files: dict[str, Path], example, check: dict,
                        dataset: tuple[Path, str], source: Path) -> None:
        """export_onnx's files {check key: path} as MLflow models named student_<key>, each with
        its checks from kd.export.check_export and the class names of checkpoint `source`."""
        for key, path in files.items():
            self.log_onnx_model(path, f"student_{key}", example, model_metadata(ckpt), check[key], dataset,
                                tags={"exported_from_dvc_md5": file_md5(source)})

    def log_onnx_model(self, path: Path, name: str, example, metadata: dict, metrics: dict[str, float],
                       dataset: tuple[Path, str] | None = None, tags: dict | None = None):
        """ONNX file `path` as an MLflow onnx model (once per file md5), with `metrics`
        measured on dataset = (file, name). Returns the LoggedModel, or None."""
        if self.active:
            return self._guard(f"logging ONNX model {name}", self._log_onnx_model_metrics, path, name, example,
                               metadata, metrics, dataset, tags)
        return None

    def _log_onnx_model_metrics(self, path, name, example, metadata, metrics, dataset, tags):
        found = find_logged_model(self._client, self._experiment_id(), path)
        if found is None:
            found = self._log_onnx_model(path, name, example, metadata, tags)
        self._attach_metrics(found, metrics, dataset)
        return found

    def promote(self, path: Path, dataset: str, evaluate: dict, export: dict, max_logit_diff: float,
                alias: str = "champion") -> None:
        """Point `alias` at the registered version of checkpoint `path` when champion_refusal
        finds nothing against it; otherwise say why and leave the alias where it was."""
        if self.active:
            self._guard(f"promoting to {alias}", self._promote, path, registered_model_name(dataset), evaluate,
                        export, max_logit_diff, alias)

    def _promote(self, path, name, evaluate, export, max_logit_diff, alias) -> None:
        version = registered_version(self._client, name, path)
        if version is None:
            print(f"[{self.stage}] {path} is no version of {name} (evaluated with tracking off?); "
                  f"{alias} stays where it was", flush=True)
            return
        why_not = champion_refusal(evaluate, export, max_logit_diff)
        if why_not:
            print(f"[{self.stage}] {name} version {version.version} is not made {alias}: {why_not}", flush=True)
            return
        self._client.set_registered_model_alias(name, alias, version.version)
        print(f"[{self.stage}] {name} version {version.version} is now {alias}: it beats the true-label student "
              "and its ONNX copy agrees with PyTorch", flush=True)

    def register(self, model, dataset: str, role: str, alias: str, description: str = ""):
        """Register logged `model` as a version of kd-<dataset>-<role> and point `alias` at it."""
        if self.active and model is not None:
            name = registered_model_name(dataset, role)
            return self._guard(f"registering {name}", register_version, self._client, name, model,
                               self.run_id, alias, description)
        return None
