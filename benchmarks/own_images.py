"""The README's "Distil your own classifier", run for real: an image folder built from the
CIFAR-10 mirror (a few classes, train/ and test/ folders), versioned with `dvc add`, distilled
with `dvc repro` in a throwaway project; then `python -m kd.predict` on a few images.

Prints the three models' test accuracy, every stage's wall time, and the peak memory of the
stage processes: RSS, and of it the anonymous part (what must fit in RAM; the rest are pages
of the memory-mapped prepared tensors, which the kernel can drop and read again).

    PYTHONPATH=src python benchmarks/own_images.py --mirror ../shared/datasets \\
        --classes airplane cat ship truck --train 1000 --test 250 --image-size 32 --epochs 15 15
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import yaml

REPO = Path(__file__).resolve().parents[1]
FILES = ["dvc.yaml", "params.yaml", "stages", "src", "data/none", ".dvc/config", ".dvc/.gitignore", ".dvcignore",
         ".gitignore"]


def build_folder(mirror: Path, root: Path, classes: list[str], n: dict[str, int]) -> None:
    for split, count in n.items():
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(count):
                shutil.copyfile(mirror / "cifar10-jpeg" / split / c / f"{i:04d}.jpg", root / split / c / f"{i:04d}.jpg")


class PeakMemory:
    """Polls every process below this one: per stage script, the largest RSS and anonymous
    RSS seen (MiB), and over all of them."""

    def __init__(self, every: float = 0.2):
        self.rss = self.anon = 0.0
        self.stages: dict[str, tuple[float, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, args=(every,), daemon=True)

    def _poll(self, every):
        me = psutil.Process()
        while not self._stop.wait(every):
            for p in me.children(recursive=True):
                try:
                    m, cmd = p.memory_info(), " ".join(p.cmdline())
                except (psutil.Error, OSError):
                    continue
                rss, anon = m.rss / 2**20, (m.rss - m.shared) / 2**20
                self.rss, self.anon = max(self.rss, rss), max(self.anon, anon)
                if "stages/" in cmd:
                    stage = cmd.split("stages/")[1].split(".py")[0]
                    old = self.stages.get(stage, (0.0, 0.0))
                    self.stages[stage] = (max(old[0], rss), max(old[1], anon))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def run(cmd: list[str], cwd: Path, env: dict) -> str:
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}")
    return out.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mirror", type=Path, default=REPO.parent / "shared" / "datasets")
    ap.add_argument("--classes", nargs="+", default=["airplane", "cat", "ship", "truck"])
    ap.add_argument("--train", type=int, default=1000, help="images per class in train/ (val is carved from it)")
    ap.add_argument("--test", type=int, default=250, help="images per class in test/")
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--teacher", default="torchvision.resnet18")
    ap.add_argument("--student", default="torchvision.shufflenet_v2_x0_5")
    ap.add_argument("--epochs", type=int, nargs=2, default=[15, 15], metavar=("TEACHER", "STUDENT"))
    ap.add_argument("--until", metavar="STAGE", help="run `dvc repro STAGE` only (e.g. train_teacher: memory)")
    ap.add_argument("--dir", type=Path, help="project directory (default: a temp dir, removed)")
    args = ap.parse_args()

    work = args.dir or Path(tempfile.mkdtemp(prefix="own-images-"))
    proj = work / "proj"
    for name in FILES:
        src, dst = REPO / name, proj / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__")) if src.is_dir()
         else shutil.copyfile(src, dst))
    build_folder(args.mirror, proj / "data" / "images", args.classes, {"train": args.train, "test": args.test})
    params = yaml.safe_load((proj / "params.yaml").read_text())
    params["data"].update(dataset="folder", path="data/images", image_size=args.image_size, val_size=0.1, mirror=None)
    params["teacher"].update(arch=args.teacher, epochs=args.epochs[0], batch_size=128, lr=0.05, weight_decay=5e-4,
                             dropout=0.0, jitter=2, flip=True)
    params["student"].update(arch=args.student, epochs=args.epochs[1], batch_size=128, lr=0.05, weight_decay=5e-4,
                             jitter=2, flip=True)
    params.update(temperature=4, alpha=0.9)
    params["soft_labels"].update(views=4)
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "KD_TRACKING": "0", "DVC_NO_ANALYTICS": "1", "PYTHONPATH": "src",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    for cmd in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "add", "-q", "data/images"]):
        run(cmd, proj, env)
    t0 = time.perf_counter()
    with PeakMemory() as mem:
        log = run([sys.executable, "-m", "dvc", "repro", *([args.until] if args.until else [])], proj, env)
    total = time.perf_counter() - t0
    (work / "repro.log").write_text(log)
    meta = json.loads((proj / "data/prepared/meta.json").read_text())
    prepared = sum(f.stat().st_size for f in (proj / "data/prepared").glob("*.pt")) / 2**20
    teacher = json.loads((proj / "metrics/teacher.json").read_text())
    print(f"folder: {len(args.classes)} classes {args.classes}, {meta['images']} images, {args.image_size}x"
          f"{args.image_size}; prepared tensors {prepared:.1f} MiB")
    print(f"teacher {args.teacher} ({args.epochs[0]} epochs), student {args.student} ({args.epochs[1]} epochs), "
          f"T=4, alpha=0.9, 4 cached views; {teacher['cpu_capability']}, precision {teacher['precision']}")
    if (proj / "metrics/evaluate.json").exists():
        ev = json.loads((proj / "metrics/evaluate.json").read_text())
        for role in ("teacher", "baseline", "student"):
            print(f"  {role:9s} test accuracy {ev[role]['accuracy']:.4f}  params {ev[role]['params']:,}")
        print(f"  kd_gain {ev['kd_gain']:+.4f}")
    for line in log.splitlines():
        if line.startswith("decoded "):
            print(f"  prepare: {line}")
    print(f"  {'stage':22s} {'seconds':>8s} {'peak RSS':>9s} {'anonymous':>10s} (MiB)")
    for f in sorted((proj / "metrics/timing").glob("*.json")):
        rss, anon = mem.stages.get(f.stem, (float("nan"),) * 2)
        print(f"  {f.stem:22s} {json.loads(f.read_text())['seconds']:8.1f} {rss:9.0f} {anon:10.0f}")
    print(f"dvc repro in all: {total:.0f} s; peak stage RSS {mem.rss:.0f} MiB, of it anonymous {mem.anon:.0f} MiB")
    if not args.until:
        shown = [p.relative_to(proj) for p in sorted((proj / "data/images/test").rglob("*.jpg"))[:: args.test][:3]]
        print(run([sys.executable, "-m", "kd.predict", "models/student.onnx", *map(str, shown)], proj, env), end="")
    if not args.dir:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
