"""A team tracking server: `mlflow server` on a PostgreSQL backend store, on loopback.

PostgreSQL (Debian's postgresql) gets a fresh cluster in a temp dir and runs as
the `postgres` system user (it refuses to run as root); the server keeps runs in
it and artifacts in a directory it serves. A process that only has
MLFLOW_TRACKING_URI set logs a run; the test reads it back through MlflowClient
and straight from PostgreSQL's tables.
"""
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from system import free_port, require_apt, stop, wait_for_port

psycopg2 = pytest.importorskip("psycopg2", reason="psycopg2-binary is in requirements.txt")


@pytest.fixture(scope="module")
def postgres():
    """A throwaway PostgreSQL cluster on a free loopback port; yields its base URI."""
    bindir = Path(require_apt("postgresql", "/usr/lib/postgresql/*/bin/initdb")).parent
    # As root, run as the postgres system user; anyone else runs it as themselves.
    user = "postgres" if os.geteuid() == 0 else None
    root = Path(tempfile.mkdtemp(prefix="kd-pg-"))  # not under pytest's root-only tmp dir
    if user:
        shutil.chown(root, user)
    data, port = root / "data", free_port()

    def as_db_user(args, **kw):
        return dict(args=[str(a) for a in args], user=user, group=pwd.getpwnam(user).pw_gid if user else None,
                    extra_groups=[] if user else None, cwd=root, **kw)

    init = subprocess.run(**as_db_user([bindir / "initdb", "-D", data, "-U", "postgres", "--auth=trust",
                                        "-E", "UTF8", "--no-sync"]), capture_output=True, text=True)
    assert init.returncode == 0, init.stderr
    log = open(root / "postgres.log", "w")
    # -F: no fsync, -k: sockets in our dir, not /var/run/postgresql
    proc = subprocess.Popen(**as_db_user([bindir / "postgres", "-D", data, "-h", "127.0.0.1", "-p", port,
                                          "-k", root, "-F"]), stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, proc, "postgres", log=root / "postgres.log")
        yield f"postgresql://postgres@127.0.0.1:{port}"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # "fast" shutdown: don't wait for clients
        stop(proc)
        log.close()
        shutil.rmtree(root, ignore_errors=True)


def connect(uri: str):
    # libpq retries nothing; the server accepts connections a moment after it listens.
    for _ in range(50):
        try:
            return psycopg2.connect(uri)
        except psycopg2.OperationalError as e:
            last = e
            time.sleep(0.2)
    raise last


@pytest.fixture(scope="module")
def mlflow_server(postgres, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("mlflow")
    db = connect(f"{postgres}/postgres")
    db.autocommit = True
    db.cursor().execute("CREATE DATABASE mlflow")
    db.close()
    # Name the driver: SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, 2.0 to psycopg2.
    store = f"{postgres.replace('postgresql://', 'postgresql+psycopg2://')}/mlflow"
    port = free_port()
    log = open(tmp_path / "mlflow.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store,
         "--artifacts-destination", str(tmp_path / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # its own group: workers stop with it
    try:
        wait_for_port(port, proc, "mlflow server", timeout=180, log=tmp_path / "mlflow.log")
        yield f"http://127.0.0.1:{port}", f"{postgres}/mlflow", tmp_path / "artifacts"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        stop(proc)
        log.close()


LOG_A_RUN = textwrap.dedent("""
    import mlflow  # knows the server only from MLFLOW_TRACKING_URI
    mlflow.set_experiment("kd-team")
    with mlflow.start_run(run_name="teacher") as run:
        mlflow.log_params({"temperature": 20, "arch": "mlp1200"})
        for epoch, acc in enumerate([0.91, 0.95, 0.97], 1):
            mlflow.log_metric("val_acc", acc, step=epoch)
        mlflow.log_text("epoch,val_acc\\n3,0.97\\n", "curves/teacher.csv")
        print("run_id", run.info.run_id)
""")


def test_runs_logged_via_env_var_land_in_postgresql(mlflow_server):
    from mlflow.tracking import MlflowClient

    url, store, artifacts = mlflow_server
    env = {**os.environ, "MLFLOW_TRACKING_URI": url}
    out = subprocess.run([sys.executable, "-c", LOG_A_RUN], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    [run_id] = [line.split()[1] for line in out.stdout.splitlines() if line.startswith("run_id ")]

    client = MlflowClient(tracking_uri=url)
    exp = client.get_experiment_by_name("kd-team")
    [run] = client.search_runs([exp.experiment_id])
    assert run.info.run_id == run_id and run.info.run_name == "teacher"
    assert run.data.params == {"temperature": "20", "arch": "mlp1200"}
    assert [m.value for m in client.get_metric_history(run_id, "val_acc")] == [0.91, 0.95, 0.97]
    got = Path(client.download_artifacts(run_id, "curves/teacher.csv", dst_path=str(artifacts.parent)))
    assert got.read_text() == "epoch,val_acc\n3,0.97\n"
    assert any(artifacts.rglob("teacher.csv"))  # stored where the server was told

    with connect(store) as db, db.cursor() as cur:  # the backend store really is PostgreSQL
        cur.execute("SELECT key, value FROM params WHERE run_uuid = %s ORDER BY key", (run_id,))
        assert cur.fetchall() == [("arch", "mlp1200"), ("temperature", "20")]
        cur.execute("SELECT count(*) FROM metrics WHERE run_uuid = %s AND key = 'val_acc'", (run_id,))
        assert cur.fetchone() == (3,)


def test_a_pipeline_stage_logs_to_the_server(mlflow_server, tmp_path):
    """The pipeline itself, pointed at the team server only by MLFLOW_TRACKING_URI."""
    import yaml
    import kd_pipeline.tracking  # noqa: F401  what the stage logs through: broken, this fails, never skips
    from mlflow.tracking import MlflowClient

    from conftest import REPO

    url, store, _ = mlflow_server
    proj = tmp_path / "proj"
    proj.mkdir()
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"]["mirror"] = None
    (proj / "params.yaml").write_text(yaml.safe_dump(params))
    shutil.copyfile(REPO / "dvc.yaml", proj / "dvc.yaml")
    env = {**os.environ, "MLFLOW_TRACKING_URI": url, "PYTHONPATH": str(REPO / "src")}  # as dvc.yaml's cmd
    out = subprocess.run([sys.executable, str(REPO / "stages/check_params.py")], cwd=proj, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr

    client = MlflowClient(tracking_uri=url)
    experiments = [e.experiment_id for e in client.search_experiments()]
    names = {r.info.run_name: r.info.status for r in client.search_runs(experiments)}
    assert names.get("check_params") == "FINISHED", names
    with connect(store) as db, db.cursor() as cur:
        cur.execute("SELECT count(*) FROM runs WHERE name = 'check_params'")
        assert cur.fetchone() == (1,)
