"""How often the prepare stage's decoding pool hangs when it ends, on this machine.

    PYTHONPATH=src python benchmarks/pool_stop_race.py               # 6 trials of 200 decodes
    PYTHONPATH=src python benchmarks/pool_stop_race.py --trials 3 --decodes 1000

Each trial is a process that holds the stage's SIGTERM handler (as a stage does), keeps a
thread writing to stderr (as MLflow and progress bars do), and decodes a 41-file folder with
one unreadable file over two fork workers, again and again; a trial that has not finished
within its time limit hung. While the workers inherited the stage's handler (before
kd_pipeline/parent_watch.py gave a stage's forks SIGTERM's default action back), a CI run
hung 20 min here, and this script saw 5 of 6 trials hang, and 0 of 6 after the fix (AMD EPYC,
AVX512, 2 cores, 2026-12-08).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time

TRIAL = """
import sys, threading
from pathlib import Path
import numpy as np, torch
from PIL import Image
from kd.image_folder import ImageFolderError, decode_all
from kd_pipeline.parent_watch import stop_on_signals

root = Path(sys.argv[1])
for i in range(40):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / f"{i}.png")
(root / "notes.txt").write_text("not an image")
files = sorted(root.iterdir())
stop_on_signals()


def chatter():
    while True:
        sys.stderr.write("x" * 2000 + "\\n")


threading.Thread(target=chatter, daemon=True).start()
for _ in range(int(sys.argv[2])):
    try:
        decode_all({"train": files}, 8, lambda g, n: torch.zeros(n, 3, 8, 8, dtype=torch.uint8), workers=2)
    except ImageFolderError:
        pass
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=6)
    ap.add_argument("--decodes", type=int, default=200)
    ap.add_argument("--limit", type=float, default=60, help="seconds after which a trial counts as hung")
    args = ap.parse_args()
    hung = 0
    for trial in range(args.trials):
        with tempfile.TemporaryDirectory() as folder:
            t0 = time.perf_counter()
            proc = subprocess.Popen([sys.executable, "-c", TRIAL, folder, str(args.decodes)],
                                    stderr=subprocess.DEVNULL, start_new_session=True)
            try:
                if proc.wait(timeout=args.limit):
                    sys.exit(f"trial {trial + 1} failed (exit code {proc.returncode})")
                print(f"trial {trial + 1}: {args.decodes} decodes in {time.perf_counter() - t0:.1f} s", flush=True)
            except subprocess.TimeoutExpired:
                hung += 1
                print(f"trial {trial + 1}: hung (not done after {args.limit:.0f} s)", flush=True)
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)  # its pool's workers too
                proc.wait()
    print(f"hung: {hung} of {args.trials} trials")


if __name__ == "__main__":
    main()
