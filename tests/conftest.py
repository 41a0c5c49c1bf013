import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
import yaml

from system import unavailable

REPO = Path(__file__).resolve().parents[1]
# The offline dataset mirror (mnist/, cifar10-jpeg/); KD_TEST_MIRROR points the tests at another one.
MIRROR = Path(os.environ.get("KD_TEST_MIRROR") or REPO.parent / "shared" / "datasets")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # also for MLflow used by the tests


def need_mirror(dataset: str = "mnist") -> Path:
    """MIRROR, if it holds `dataset` (mnist or cifar10-jpeg). Without it the test skips, and
    fails under CI=true (system.unavailable): CI never passes by skipping the end-to-end tests.
    Every test that needs the mirror comes through here."""
    if not (MIRROR / dataset).is_dir():
        unavailable(f"needs the {dataset} dataset mirror at {MIRROR} (set KD_TEST_MIRROR to use another)")
    return MIRROR


def pytest_report_header(config):
    """What a CI log's first lines need to explain a failure that is the machine's: CPU, free
    disk where the tests write, the mirror."""
    tmp = Path(tempfile.gettempdir())  # where pytest's tmp_path lives
    free = shutil.disk_usage(tmp).free / 2**30
    return [f"kd: torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
            f"{os.cpu_count()} CPUs; {free:.1f} GiB free in {tmp}; mirror "
            + ", ".join(f"{d} {'present' if (MIRROR / d).is_dir() else 'absent'}" for d in ("mnist", "cifar10-jpeg"))
            + f" at {MIRROR}"]


@pytest.fixture
def mirror() -> Path:
    return need_mirror("mnist")


@pytest.fixture
def toy_images():
    return make_toy_images()


def make_toy_images():
    """A small, learnable image set: the class is written into the pixel rows."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(300) % 10
    x = torch.randint(0, 60, (300, 1, 28, 28), generator=g, dtype=torch.uint8)
    for c in range(10):
        x[y == c, :, 2 * c + 4 : 2 * c + 6, 4:24] = 255
    return x, y


PROJECT_FILES = ["dvc.yaml", "params.yaml", "stages", "src", "data/none", ".dvc/config", ".dvc/.gitignore", ".dvcignore", ".gitignore"]


def sh(args, cwd, check=True, env=None, unset=()):
    """Run a command; `unset` names environment variables to remove for it."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t", **(env or {})}
    for name in ("MLFLOW_TRACKING_URI", *unset):  # MLflow: the project's own store, mlflow.db
        env.pop(name, None)
    out = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if check and out.returncode != 0:
        raise AssertionError(f"{args} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    return out


def stages_run(out) -> set[str]:
    """The stages a dvc command ran, from its output (a finished process or plain text)."""
    text = out if isinstance(out, str) else out.stdout + out.stderr
    return set(re.findall(r"Running stage '(\w+)'", text))


def make_project(proj: Path, params: dict, run=None):
    """Copy this repo's pipeline into `proj` (a new git repo) with `params`, run `dvc repro`
    (or `run(proj)`); returns (proj, the repro's output)."""
    for name in PROJECT_FILES:
        src, dst = REPO / name, proj / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copyfile(src, dst)
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(["git", "init", "-q", "-b", "main"], proj)
    sh(["git", "add", "-A"], proj)
    sh(["git", "commit", "-qm", "init"], proj)
    return proj, (run(proj) if run else sh([sys.executable, "-m", "dvc", "repro"], proj))


@pytest.fixture(scope="session")
def built_project(tmp_path_factory):
    """A copy of this repo with tiny MNIST params, after one `dvc repro`."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"].update(mirror=str(need_mirror("mnist")), max_train=400, val_size=200)
    for role in ("teacher", "student"):
        params[role].update(epochs=2, batch_size=64)
    return make_project(tmp_path_factory.mktemp("proj"), params)


def set_param(proj: Path, key: str, value) -> None:
    """Set dotted `key` (e.g. teacher.epochs) in proj/params.yaml."""
    path = proj / "params.yaml"
    params = yaml.safe_load(path.read_text())
    *parents, leaf = key.split(".")
    node = params
    for k in parents:
        node = node[k]
    node[leaf] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


FOLDER_CLASSES = ("airplane", "cat", "ship", "truck")


def make_image_folder(root: Path, per_class: int = 40, classes=FOLDER_CLASSES, split: str = "train",
                      start: int = 0) -> Path:
    """<root>/<class>/<image> from the CIFAR-10 mirror, in mixed formats: mostly its JPEGs,
    a few PNG, greyscale, RGBA, palette and upscaled (non-square) ones, one with an EXIF
    rotation, so every conversion in kd.image_folder is exercised."""
    from PIL import Image

    src = need_mirror("cifar10-jpeg") / "cifar10-jpeg" / split
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(start, start + per_class):
            img = src / c / f"{i:04d}.jpg"
            kind = i % 10
            if kind == 1:
                Image.open(img).save(root / c / f"{i:04d}.png")
            elif kind == 2:
                Image.open(img).convert("L").save(root / c / f"{i:04d}.png")
            elif kind == 3:
                Image.open(img).convert("RGBA").save(root / c / f"{i:04d}.png")
            elif kind == 4:
                Image.open(img).convert("P").save(root / c / f"{i:04d}.gif")
            elif kind == 5:
                Image.open(img).resize((48, 40)).save(root / c / f"{i:04d}.webp")
            elif kind == 6:
                exif = Image.Exif()
                exif[0x0112] = 3  # rotated 180 degrees
                Image.open(img).rotate(180).save(root / c / f"{i:04d}.jpg", exif=exif)
            else:
                shutil.copyfile(img, root / c / f"{i:04d}.jpg")
    return root
