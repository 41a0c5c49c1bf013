"""A shared DVC remote: what one clone trained, a second clone pulls instead of retraining.

Round trips through a local-path remote and through an SSH remote served by a
real sshd (Debian openssh-server) on 127.0.0.1, with generated host and client
keys, so nothing outside the test's own directories is used or changed.
"""
import getpass
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kd.files import file_md5
from system import free_port, require_apt, stop, wait_for_port

OUTPUTS = ["models/teacher.pt", "models/baseline.pt", "models/student.pt", "data/soft_labels.pt",
           "data/prepared/train.pt", "data/params.ok", "models/student.onnx"]
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1",
       "OMP_NUM_THREADS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
       "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}


def sh(args, cwd):
    out = subprocess.run([str(a) for a in args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise AssertionError(f"{args} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    return out.stdout + out.stderr


def dvc(*args, cwd):
    return sh([sys.executable, "-m", "dvc", *args], cwd)


@pytest.fixture(scope="module")
def origin(built_project, tmp_path_factory):
    """A colleague's clone: the tiny pipeline reproduced, with its dvc.lock committed."""
    proj = tmp_path_factory.mktemp("origin") / "repo"
    shutil.copytree(built_project[0], proj, symlinks=True)
    dvc("repro", cwd=proj)  # nothing to do unless an earlier test left the copy changed
    sh(["git", "add", "-A"], proj)
    sh(["git", "commit", "-qm", "trained", "--allow-empty"], proj)
    return proj


def round_trip(origin: Path, url: str, clone: Path, credentials: dict[str, str] = {}) -> None:
    """Push from origin, clone with git, pull with dvc: the clone must have nothing to rerun."""
    dvc("remote", "add", "--force", "--default", "shared", url, cwd=origin)
    sh(["git", "commit", "-qam", f"shared remote {url}"], origin)  # the URL is shared via git
    for key, value in credentials.items():  # credentials are not: .dvc/config.local
        dvc("remote", "modify", "--local", "shared", key, value, cwd=origin)
    dvc("push", cwd=origin)

    sh(["git", "clone", "-q", origin, clone], clone.parent)
    for key, value in credentials.items():
        dvc("remote", "modify", "--local", "shared", key, value, cwd=clone)
    assert not (clone / "models").exists()
    dvc("pull", cwd=clone)
    for out in OUTPUTS:
        assert file_md5(clone / out) == file_md5(origin / out), out
    assert dvc("status", cwd=clone).strip().endswith("Data and pipelines are up to date.")
    repro = dvc("repro", cwd=clone)
    assert "Running stage" not in repro, repro
    assert "Data and pipelines are up to date." in repro


def test_local_path_remote_round_trip(origin, tmp_path):
    round_trip(origin, str(tmp_path / "remote"), tmp_path / "clone")
    assert any((tmp_path / "remote" / "files" / "md5").iterdir())


@pytest.fixture
def sshd(tmp_path):
    """sshd on a free loopback port, accepting one generated key for the current user."""
    sshd_bin = require_apt("openssh-server", "/usr/sbin/sshd")
    keygen = require_apt("openssh-client", "ssh-keygen")
    d = tmp_path / "sshd"
    d.mkdir()
    for key in ("host_key", "client_key"):
        sh([keygen, "-q", "-t", "ed25519", "-N", "", "-f", d / key], d)
    shutil.copyfile(d / "client_key.pub", d / "authorized_keys")
    port = free_port()
    (d / "sshd_config").write_text(f"""\
ListenAddress 127.0.0.1
Port {port}
HostKey {d}/host_key
PidFile {d}/sshd.pid
AuthorizedKeysFile {d}/authorized_keys
AuthenticationMethods publickey
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
Subsystem sftp internal-sftp
""")
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation dir
    log = open(d / "sshd.log", "w")
    proc = subprocess.Popen([sshd_bin, "-D", "-e", "-f", d / "sshd_config"], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, proc, "sshd", log=d / "sshd.log")
        yield f"ssh://{getpass.getuser()}@127.0.0.1:{port}", d / "client_key", d / "sshd.log"
    finally:
        stop(proc)
        log.close()


def test_ssh_remote_round_trip(origin, sshd, tmp_path):
    pytest.importorskip("dvc_ssh", reason="dvc-ssh is in requirements.txt")
    server, key, log = sshd
    storage = tmp_path / "remote"
    round_trip(origin, f"{server}{storage}", tmp_path / "clone", {"keyfile": str(key)})
    assert any((storage / "files" / "md5").iterdir())
    assert "Accepted publickey" in log.read_text()  # it did go through our sshd
