"""A process named so that a later one reusing its pid is not taken for it: "pid@start_time".

Temp files (kd.files) and the MLflow run of a stage (kd_pipeline.tracking) carry this
name, so the next run tells what a killed process left behind from what a running one
is still writing. A pid alone is not enough: pids are reused, by a container's few
processes within minutes.
"""
from __future__ import annotations

import os
from functools import lru_cache


def this_process() -> str:
    return _name(os.getpid())


@lru_cache(maxsize=None)
def _name(pid: int) -> str:
    import psutil  # a dependency of dvc

    return f"{pid}@{psutil.Process(pid).create_time()}"


def process_alive(process: str) -> bool:
    """Whether "pid@start_time" (this_process() of some process) still runs. A process
    we may not inspect (another user's) counts as alive: whatever it wrote is left alone."""
    import psutil

    pid, _, started = process.partition("@")
    try:
        return abs(psutil.Process(int(pid)).create_time() - float(started)) < 0.01
    except psutil.AccessDenied:
        return True
    except (psutil.Error, ValueError):
        return False
