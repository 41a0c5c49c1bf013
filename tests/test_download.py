"""A data.mirror that does not exist falls back to the download, md5-checked;
KD_DOWNLOAD_URL points that download at a loopback server here. A fallback that
fails names the missing mirror and why the download failed, in one line."""
import functools
import http.server
import os
import re
import runpy
import shutil
import socket
import subprocess
import sys
import threading
import time

import pytest
import yaml

from conftest import REPO, set_param
from kd import datasets
from kd.datasets import MNIST_FILES, DataError, fetch_cifar10, fetch_mnist
from kd.files import file_md5
from system import free_port

PREPARE = REPO / "stages" / "prepare.py"


class _Logged(http.server.SimpleHTTPRequestHandler):
    def log_request(self, code="-", size="-"):
        self.server.requests.append((self.path, int(code)))

    def log_message(self, *args):  # quiet
        pass


@pytest.fixture
def serve():
    """serve(folder) -> (its base URL on a loopback port, the (path, status) of every request)."""
    servers = []

    def start(folder):
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Logged, directory=str(folder)))
        server.requests = []
        server.handle_error = lambda request, address: None  # torchvision drops its redirect probe mid-file
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}", server.requests

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def proj(mirror, tmp_path, monkeypatch):
    """A small MNIST project, prepared from the mirror (in this process: no stage start)."""
    proj = tmp_path / "proj"
    proj.mkdir()
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"].update(mirror=str(mirror), max_train=500, val_size=100)
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    monkeypatch.chdir(proj)
    monkeypatch.setenv("KD_TRACKING", "0")
    monkeypatch.syspath_prepend(str(REPO / "stages"))  # as `python stages/prepare.py` would
    runpy.run_path(str(PREPARE), run_name="__main__")
    return proj


def md5s(proj, folder="data/prepared"):
    return {str(p.relative_to(proj)): file_md5(p) for p in sorted((proj / folder).rglob("*")) if p.is_file()}


def test_missing_mirror_falls_back_to_the_download(proj, mirror, serve, tmp_path):
    """The real stage, with data.mirror absent: one note, the files fetched over HTTP, the same splits."""
    from_mirror = md5s(proj)
    assert sorted(from_mirror) == ["data/prepared/meta.json", *(f"data/prepared/{s}.pt" for s in ("test", "train", "val"))]
    shutil.rmtree(proj / "data")
    missing = tmp_path / "no-mirror"
    set_param(proj, "data.mirror", str(missing))
    url, requests = serve(mirror)
    base = f"{url}/mnist"  # no trailing slash: it is added
    out = subprocess.run([sys.executable, str(PREPARE)], cwd=proj, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO / "src"), "KD_DOWNLOAD_URL": base})
    assert out.returncode == 0, out.stdout + out.stderr
    assert [line for line in out.stdout.splitlines() if "data.mirror" in line] == [
        f"[prepare] data.mirror: {missing} not found; downloading MNIST from {base} (KD_DOWNLOAD_URL)"]
    assert md5s(proj) == from_mirror
    assert {path for path, code in requests if code == 200} == {f"/mnist/{name}" for name in MNIST_FILES}


def test_no_mirror_and_no_download_fails_in_one_line_touching_nothing(proj, tmp_path, monkeypatch, capsys):
    before = md5s(proj, "data")
    missing = tmp_path / "no-mirror"
    set_param(proj, "data.mirror", str(missing))
    closed = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("KD_DOWNLOAD_URL", closed)
    capsys.readouterr()
    started = time.monotonic()
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(PREPARE), run_name="__main__")
    assert time.monotonic() - started < 20  # refused at once, no hang
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    assert re.fullmatch(rf"\[prepare\] error: data\.mirror: {re.escape(str(missing))} not found, and downloading "
                        rf"MNIST train from {re.escape(closed)} \(KD_DOWNLOAD_URL\) failed: .*Connection refused.*\n",
                        err), err
    assert md5s(proj, "data") == before
    assert not list(proj.rglob("*.tmp"))


@pytest.mark.parametrize("fetch,name", [(fetch_mnist, "train-images-idx3-ubyte.gz"),
                                        (fetch_cifar10, "cifar-10-python.tar.gz")], ids=["mnist", "cifar10"])
@pytest.mark.parametrize("absent", [True, False], ids=["mirror-absent", "mirror-null"])
def test_a_download_that_fails_its_md5_is_rejected(fetch, name, absent, serve, tmp_path, monkeypatch):
    """KD_DOWNLOAD_URL serves files under torchvision's own names, checked against its own md5s."""
    site = tmp_path / "site"
    site.mkdir()
    (site / name).write_bytes(b"not the official file")
    url, requests = serve(site)
    monkeypatch.setenv("KD_DOWNLOAD_URL", url + "/")
    mirror = tmp_path / "absent" if absent else None
    said = rf"data\.mirror: {re.escape(str(mirror))} not found, and downloading .* failed" if absent \
        else rf"train: downloading from {re.escape(url)}/ \(KD_DOWNLOAD_URL\) failed \(no network\?\)"
    with pytest.raises(DataError, match=rf"{said}: .*File not found or corrupted"):
        fetch(mirror, tmp_path / "raw")
    assert (f"/{name}", 200) in requests


def test_a_stalled_download_times_out(tmp_path, monkeypatch):
    """A server that accepts and never answers: torchvision sets no timeout, we do."""
    monkeypatch.setattr(datasets, "DOWNLOAD_TIMEOUT_S", 0.5)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()  # the kernel completes the handshake; nobody ever reads
        monkeypatch.setenv("KD_DOWNLOAD_URL", f"http://127.0.0.1:{listener.getsockname()[1]}/")
        started = time.monotonic()
        with pytest.raises(DataError, match="failed: .*timed out"):
            fetch_mnist(tmp_path / "absent", tmp_path / "raw")
    assert time.monotonic() - started < 10
    assert socket.getdefaulttimeout() is None  # restored
