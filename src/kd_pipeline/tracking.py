"""MLflow tracking: one parent run per `dvc repro` / `dvc exp run`, one nested
child run per stage that actually executed.

DVC runs each stage as its own process, so there is no one place that could
open the parent run. Every stage looks for it by a tag instead, `run_group`,
a hash of the DVC experiment name, the git commit and the `dvc` process that
launched the stage (its pid and start time). All stages of one invocation
share that process; the next `dvc repro`, even on the same commit and params,
is a new process and gets a new parent.

Tracking must never cost a training result: every MLflow call goes through
`Tracker._guard`, and the first failure (server down, database locked, slow
network) prints one warning and switches tracking off for the rest of the
stage. The stage still writes metrics/. HTTP waits are bounded by the
MLFLOW_HTTP_REQUEST_* defaults below.
"""
from __future__ import annotations

import logging
import os
import socket
import sys
import time
from pathlib import Path

from kd.dvc_stage import dvc_stage, stage_param_keys
from kd.params import Params
from kd.process_id import process_alive, this_process
from kd_pipeline.registry import LineageMixin
from kd_pipeline.run_info import (METRICS_DIR, file_metrics, headline_metrics, parent_name, run_tags,
                                  stage_metrics_files, stage_params)
from kd_pipeline.store import (ENV_DEFAULTS, HOST_TAG, PROCESS_TAG, HeldLogs, artifact_location,  # noqa: F401
                               experiment_name, tracking_enabled, tracking_uri, training_view, ui_link)

class Tracker(LineageMixin):
    """The MLflow child run of one stage; every method is a no-op once tracking is off."""

    def __init__(self, stage: str):
        self.stage = stage
        self.uri = ""
        self.run_id: str | None = None
        self.parent_id: str | None = None
        self._client = None
        self._experiment_id_: str | None = None
        self._epochs_logged: set[int] = set()

    @property
    def active(self) -> bool:
        return self.run_id is not None

    def ui_link(self) -> str | None:
        """Where to see this stage's runs in the MLflow UI; None when tracking is off or failed."""
        return ui_link(self.uri, self._experiment_id_) if self._experiment_id_ else None

    def _guard(self, what: str, fn, *args, **kwargs):
        held = HeldLogs()
        try:
            import mlflow  # noqa: F401 - configures MLflow's loggers first, so that they are held below
            with held:
                result = fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - any tracking failure, whatever its type
            self.run_id = self._experiment_id_ = None
            detail = " ".join(str(e).split())
            detail = detail[:300] + ("..." if len(detail) > 300 else "")
            print(f"[{self.stage}] warning: MLflow tracking to {self.uri} failed while {what} "
                  f"({type(e).__name__}: {detail}); the stage goes on without tracking and "
                  "writes metrics/ as usual", file=sys.stderr, flush=True)
            return None  # and what the libraries logged about the failure is dropped
        held.replay()
        return result

    # Starting and ending ------------------------------------------------------

    def start(self, params: Params) -> None:
        if not tracking_enabled():
            return
        self.uri = tracking_uri()
        for key, value in ENV_DEFAULTS.items():  # before _guard imports mlflow
            os.environ.setdefault(key, value)
        # urllib3 logs every retry; our one warning says it all.
        logging.getLogger("urllib3").setLevel(logging.ERROR)
        logging.getLogger("alembic").setLevel(logging.WARNING)
        self._guard("starting the run", self._start, params)

    def _start(self, params: Params) -> None:
        import mlflow
        from mlflow.entities import Param
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

        client = mlflow.MlflowClient(self.uri)
        exp_id = self._experiment(client, experiment_name(params))
        # mlflow.pytorch.log_model reads these globals.
        mlflow.set_tracking_uri(self.uri)
        mlflow.set_experiment(experiment_id=exp_id)
        self._end_orphans(client, exp_id)
        tags = run_tags(params)
        group = tags.pop("run_group")  # on the parent only: children are found through it
        found = client.search_runs([exp_id], f"tags.run_group = '{group}'", max_results=1)
        if found:
            parent_id = found[0].info.run_id
            client.update_run(parent_id, status="RUNNING")
        else:
            parent = client.create_run(exp_id, run_name=parent_name(tags), tags={**tags, "run_group": group})
            parent_id = parent.info.run_id
            client.log_batch(parent_id, params=[Param(k, v) for k, v in stage_params(params, None).items()])
        spec = dvc_stage(self.stage)
        child = client.create_run(exp_id, run_name=self.stage,
                                  tags={**tags, "stage": self.stage, MLFLOW_PARENT_RUN_ID: parent_id,
                                        "mlflow.source.name": sys.argv[0], "mlflow.source.type": "LOCAL",
                                        HOST_TAG: socket.gethostname(), PROCESS_TAG: this_process()})
        self._client, self.parent_id, self.run_id = client, parent_id, child.info.run_id
        self._experiment_id_ = exp_id
        keys = stage_param_keys(spec) if spec else []
        if keys is None or keys:
            client.log_batch(self.run_id, params=[Param(k, v) for k, v in stage_params(params, keys).items()])

    def _end_orphans(self, client, exp_id: str) -> None:
        """Mark KILLED the runs of this stage left RUNNING by a process of this
        host that is gone (killed: it could not end them), and their parent once
        none of its children runs any more."""
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

        running = "attributes.status = 'RUNNING'"
        host = socket.gethostname()
        for run in client.search_runs([exp_id], f"tags.stage = '{self.stage}' and {running}"):
            tags = run.data.tags
            if tags.get(HOST_TAG) != host or PROCESS_TAG not in tags or process_alive(tags[PROCESS_TAG]):
                continue  # another machine's, from before these tags, or still running
            client.set_terminated(run.info.run_id, "KILLED")
            print(f"[{self.stage}] marked MLflow run {run.info.run_id} KILLED: its process "
                  f"{tags[PROCESS_TAG]} is gone", file=sys.stderr, flush=True)
            parent = tags.get(MLFLOW_PARENT_RUN_ID)
            if parent and client.get_run(parent).info.status == "RUNNING" and not client.search_runs(
                    [exp_id], f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent}' and {running}", max_results=1):
                client.set_terminated(parent, "KILLED")

    def _experiment(self, client, name: str) -> str:
        exp_id = self._find_or_create_experiment(client, name)
        # Each time, so experiments made before it get it too (and its columns stay current).
        client.set_experiment_tag(exp_id, *training_view())
        return exp_id

    def _find_or_create_experiment(self, client, name: str) -> str:
        exp = client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        try:
            # The experiment kind makes the MLflow UI's experiment list open it on the model-training
            # views; a plain link to the experiment still opens GenAI's (see store.ui_link).
            return client.create_experiment(name, artifact_location=artifact_location(self.uri),
                                            tags={"mlflow.experimentKind": "custom_model_development"})
        except Exception:  # created meanwhile by a parallel queued experiment
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
            return exp.experiment_id

    def end(self, status: str, seconds: float | None = None) -> None:
        """Log the stage's wall time and its dvc.yaml metrics files, then close
        the child run and mark the parent with the latest stage's status."""
        if not self.active:
            return
        if seconds is not None:
            self.log_metrics({"seconds": seconds})
            for path in stage_metrics_files(dvc_stage(self.stage)):
                self.log_metrics_file(path)
        if self.active:
            self._guard("ending the run", self._end, status)
        self.run_id = None

    def _end(self, status: str) -> None:
        self._client.set_terminated(self.run_id, status)
        self._client.set_terminated(self.parent_id, status)

    # Logging ------------------------------------------------------------------

    def log_metrics(self, metrics: dict[str, float], *, step: int = 0, parent: bool = False) -> None:
        if self.active:
            self._guard("logging metrics", self._log_metrics, metrics, step, parent)

    def _log_metrics(self, metrics: dict[str, float], step: int, parent: bool) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        for run_id in (self.run_id, self.parent_id) if parent else (self.run_id,):
            for i in range(0, len(batch), 1000):  # MLflow's per-request limit
                self._client.log_batch(run_id, metrics=batch[i : i + 1000])

    def log_epoch(self, row: dict) -> None:
        """fit()'s on_epoch callback: the curves, live, with step = epoch."""
        if self.active and row["epoch"] not in self._epochs_logged:
            self.log_metrics({k: v for k, v in row.items() if k not in ("epoch", "seconds") and v is not None},
                             step=row["epoch"])
            self._epochs_logged.add(row["epoch"])

    def log_history(self, history: list[dict]) -> None:
        """Epochs trained before a resume never went through log_epoch here."""
        for row in history:
            self.log_epoch(row)

    def log_metrics_file(self, path: Path) -> None:
        """A dvc.yaml metrics file: as an artifact, and as metrics of this run and the parent."""
        if self.active and path.is_file():
            self.log_artifact(path, "metrics" if path.parent == METRICS_DIR else path.parent.as_posix())
            if not path.is_relative_to(METRICS_DIR / "timing"):  # already the `seconds` metric
                # Plus, from evaluate, the few numbers the runs table shows (store.training_view).
                self.log_metrics({**file_metrics(path), **headline_metrics(path)}, parent=True)

    def set_tags(self, tags: dict[str, str]) -> None:
        if self.active:
            self._guard("setting tags", self._set_tags, tags)

    def _set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self._client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, path: Path, artifact_dir: str | None = None) -> None:
        if self.active:
            self._guard(f"logging {path}", self._client.log_artifact, self.run_id, str(path), artifact_dir)

    def log_figure(self, make_figure, artifact_file: str) -> None:
        """make_figure() is only called when tracking is on: drawing costs time."""
        if not self.active:
            return
        import matplotlib.pyplot as plt

        fig = make_figure()
        try:
            self._guard(f"logging {artifact_file}", self._client.log_figure, self.run_id, fig, artifact_file)
        finally:
            plt.close(fig)

    def log_model(self, model, name: str, example, file: Path | None = None):
        """An MLflow pytorch model with signature and input example. MLflow saves
        it as a torch.export program, so loading it needs no code from this repo.
        `file`: the checkpoint it was saved to, whose md5 the model is tagged with
        (kd_pipeline.registry); its class names go into the model's metadata. Returns the
        LoggedModel, or None."""
        if self.active:
            return self._guard(f"logging model {name}", self._log_model, model, name, example, file)
        return None

    def _log_model(self, model, name: str, example, file: Path | None = None):
        import mlflow.pytorch
        import torch
        from mlflow.models import infer_signature

        from kd.files import load_torch
        from kd_pipeline.registry import model_metadata, model_tags

        model = model.cpu().eval()
        x = example.cpu().float().div(255).numpy()
        with torch.no_grad():
            y = model(torch.from_numpy(x)).numpy()
        info = mlflow.pytorch.log_model(
            model, name=name, run_id=self.run_id, signature=infer_signature(x, y), input_example=x,
            # Listing them skips MLflow's inference, which re-imports the model in a subprocess.
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
            tags=model_tags(file) if file is not None else None,
            metadata=model_metadata(load_torch(file)) if file is not None else None,
        )
        return self._client.get_logged_model(info.model_id)

    def _log_onnx_model(self, path: Path, name: str, example, metadata: dict, tags: dict | None = None):
        """ONNX file `path` as an mlflow.onnx model, byte for byte (no external data files), with
        signature and input example like the PyTorch ones; tagged with its md5 like them."""
        import mlflow.onnx
        import onnx
        import onnxruntime
        from mlflow.models import infer_signature

        from kd_pipeline.registry import model_tags

        x = example.cpu().float().div(255).numpy()
        sess = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        y = sess.run(None, {sess.get_inputs()[0].name: x})[0]
        info = mlflow.onnx.log_model(
            onnx.load(str(path)), name=name, run_id=self.run_id, signature=infer_signature(x, y), input_example=x,
            save_as_external_data=False, metadata=metadata,
            # Where its checks ran (kd.export.session); MLflow's default also asks for CUDA.
            onnx_execution_providers=["CPUExecutionProvider"], tags={**model_tags(path), **(tags or {})},
            # Listing them skips MLflow's inference, which loads the model in a subprocess.
            pip_requirements=[f"onnx=={onnx.__version__}", f"onnxruntime=={onnxruntime.__version__}"],
        )
        return self._client.get_logged_model(info.model_id)

    # Lineage and registry (kd_pipeline.registry) -----------------------------------
