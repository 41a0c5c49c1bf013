"""Servers the integration tests start on loopback, and the Debian packages they need.

A missing package is installed on first use, once per machine: under a file
lock (parallel test runs would fight over dpkg's own lock), and only if it is
still missing once the lock is held. Tests skip only when the package truly
cannot be had; under CI (CI=true) they fail instead, so CI never passes by
skipping them.
"""
from __future__ import annotations

import fcntl
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

LOCK = Path(tempfile.gettempdir()) / "kd-tests-apt.lock"


def unavailable(reason: str):
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{reason} (CI must run this test)")
    pytest.skip(reason)


def find(pattern: str) -> str | None:
    """First existing path matching a glob, or an executable on PATH."""
    hits = sorted(glob.glob(pattern)) if "/" in pattern else [shutil.which(pattern)]
    return next((h for h in hits if h), None)


def require_apt(package: str, pattern: str) -> str:
    """The path of `pattern` (e.g. /usr/sbin/sshd), installing `package` if it is missing."""
    if hit := find(pattern):
        return hit
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        unavailable(f"{pattern} not found and {package} cannot be installed here (needs root and apt-get)")
    with open(LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not find(pattern):  # another run may have installed it while we waited
            _apt_install(package)
    if hit := find(pattern):
        return hit
    unavailable(f"installed {package} but {pattern} is still missing")


def _apt_install(package: str) -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", package]
    # Try the package lists we have first; refresh them only if that fails (stale or none).
    for cmd in ([install], [["apt-get", "update", "-q"], install]):
        for args in cmd:
            out = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
            if out.returncode:
                break
        else:
            return
    unavailable(f"`apt-get install {package}` failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 60,
                  log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text()[-3000:] if log and log.exists() else ""
            raise AssertionError(f"{what} exited with {proc.returncode} before listening on port {port}\n{tail}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"{what} did not listen on 127.0.0.1:{port} within {timeout}s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
