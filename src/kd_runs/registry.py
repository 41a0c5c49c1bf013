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
from pathlib import Path

from kd.files import file_md5

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


def registered_model_name(dataset: str, role: str = "student") -> str:
    """The registry entry of the distilled student, one per dataset: kd-mnist-student."""
    return f"kd-{dataset}-{role}"
