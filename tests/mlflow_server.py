"""An MLflow tracking server (also the UI) on a free loopback port, for tests."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from system import free_port


class MlflowServer:
    def __init__(self, store: str, artifacts: Path, log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        mlflow = Path(sys.executable).parent / "mlflow"
        self._log = open(log, "wb")
        # Own session: the server forks uvicorn workers, and kill() must stop them all.
        self.proc = subprocess.Popen(
            [str(mlflow), "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
             "--backend-store-uri", store, "--artifacts-destination", str(artifacts)],
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {self.proc.returncode}; see {self._log.name}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            time.sleep(0.5)
        raise TimeoutError(f"mlflow server not ready after {timeout}s; see {self._log.name}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self._log.close()


@contextlib.contextmanager
def mlflow_server(store: str, artifacts: Path, log: Path):
    server = MlflowServer(store, artifacts, log)
    try:
        server.wait_ready()
        yield server
    finally:
        server.kill()
