"""Where MLflow runs go and who made them: the store's URI and experiment, the
environment defaults that bound waits on a dead server, the tags that tell a
killed run from a live one (kd.process_id names the process), and holding back
library logs."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from kd.params import Params, project_root

# Set before mlflow is imported; the user's own environment wins. MLflow's
# defaults (120 s timeout, 7 retries with exponential backoff) would stall a
# stage for many minutes on a dead server. Here, once per stage (measured on
# the dev machine): 2.8 s when the connection is refused, 32.7 s when the
# server accepts it but never answers (3 tries x 10 s, plus backoff).
ENV_DEFAULTS = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
}


def repo_root() -> Path:
    """The real repository, also for `dvc exp run --queue` runs in .dvc/tmp/exps
    (DVC points DVC_ROOT of queued runs at the parent repo)."""
    dvc_root = os.environ.get("DVC_ROOT")
    return project_root(Path(dvc_root) if dvc_root else None)


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{repo_root() / 'mlflow.db'}"


def artifact_location(uri: str) -> str | None:
    """Artifacts of a SQLite store go next to the database file. MLflow's
    default, ./mlruns of the current directory, would put those of a queued
    experiment into its temporary copy, which DVC deletes. Servers and file
    stores choose for themselves."""
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlartifacts").as_uri()


def experiment_name(params: Params) -> str:
    return os.environ.get("MLFLOW_EXPERIMENT_NAME") or f"kd-{params.data.dataset}"


# The MLflow UI's runs table shows only the Source, Models and Dataset columns until one
# picks metrics under "Columns" (per browser). A "shared view" is a saved table layout in
# an experiment tag, `mlflow.sharedViewState.<key>`, that a link opens with
# `viewStateShareKey=<key>` (the UI's own "share view" writes them): this one shows the
# headline metrics (run_info.HEADLINE) beside the run names.
VIEW_KEY = "kd-training"
VIEW_COLUMNS = ("attributes.`Source`", "attributes.`Models`", "metrics.`teacher.test_accuracy`",
                "metrics.`baseline.test_accuracy`", "metrics.`student.test_accuracy`", "metrics.`kd_gain`")


def training_view() -> tuple[str, str]:
    """The experiment tag (key, value) of the shared runs-table view."""
    return f"mlflow.sharedViewState.{VIEW_KEY}", json.dumps({"selectedColumns": list(VIEW_COLUMNS)})


def ui_base(uri: str) -> tuple[str, str]:
    """The MLflow UI's address for tracking URI `uri`, and how to start it ("" when it runs):
    a server is its own UI; a database needs `mlflow ui`."""
    if uri.startswith(("http://", "https://")):
        return uri.rstrip("/"), ""
    store = "sqlite:///mlflow.db" if uri == f"sqlite:///{repo_root() / 'mlflow.db'}" else uri
    return "http://127.0.0.1:5000", f"mlflow ui --backend-store-uri {store} --port 5000"


def ui_link(uri: str, experiment_id: str) -> str:
    """One line: the experiment's runs table in the training view (a bare experiment link
    opens on the GenAI overview: the UI's default workflow), with the headline columns."""
    base, start = ui_base(uri)
    link = f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning&viewStateShareKey={VIEW_KEY}"
    return f"MLflow runs: {link}" + (f" (start the UI first: {start})" if start else "")


def experiment_link(params: Params) -> str | None:
    """ui_link of this project's experiment, from the store; None when tracking is off, the
    experiment does not exist or the store does not answer (it never raises)."""
    if not tracking_enabled():
        return None
    for key, value in ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    uri = tracking_uri()
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        return None  # asking would create an empty store
    try:
        with HeldLogs():
            from mlflow import MlflowClient

            exp = MlflowClient(uri).get_experiment_by_name(experiment_name(params))
    except Exception:  # noqa: BLE001 - a link is not worth a failure
        return None
    return ui_link(uri, exp.experiment_id) if exp is not None else None


def tracking_enabled() -> bool:
    return os.environ.get("KD_TRACKING", "1").lower() not in ("0", "false", "off", "no")


# On each stage run, to tell a run whose process was killed from one still going.
HOST_TAG = "kd.host"
PROCESS_TAG = "kd.process"


class HeldLogs(logging.Handler):
    """Holds the log records of the libraries under MLflow during one call:
    replayed if the call succeeds, dropped if it fails. A locked SQLite store
    alone logs some 70 lines of ERROR and chained tracebacks before our one
    warning, which says it all."""

    # The loggers that print: MLflow gives the first four handlers of their own
    # (mlflow.utils.logging_utils), urllib3 logs HTTP retries through the root.
    LOGGERS = ("mlflow", "sqlalchemy.engine", "alembic", "huey", "urllib3")

    def __init__(self):
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self._saved: list[tuple[logging.Logger, list[logging.Handler], bool]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def __enter__(self):
        for name in self.LOGGERS:
            log = logging.getLogger(name)
            self._saved.append((log, log.handlers, log.propagate))
            log.handlers, log.propagate = [self], False
        return self

    def __exit__(self, *exc) -> None:
        for log, handlers, propagate in self._saved:
            log.handlers, log.propagate = handlers, propagate
        self._saved.clear()

    def replay(self) -> None:
        for record in self.records:
            logging.getLogger(record.name).handle(record)
        self.records.clear()
