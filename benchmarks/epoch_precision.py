"""Seconds per epoch of the pipeline's own training loop (kd.loop.fit) in fp32 and bf16, for
the MLP teacher of profiles/mnist-hinton.yaml, read from the profile (dropout 0.5 and 0.2 on the
input, +-2 px jitter, max-norm 3.5). Where benchmarks/precision.py times the training step alone, this adds
everything fit does around it (jitter, the finite-loss check, max-norm, per-epoch bookkeeping).

    PYTHONPATH=src python benchmarks/epoch_precision.py              # 2 epochs each, twice, alternating
    PYTHONPATH=src python benchmarks/epoch_precision.py --epochs 1 --images 20000

Random uint8 images stand in for MNIST (speed does not depend on content). Each precision runs
twice, alternating, so a CPU that speeds up or slows down during the run shows as a spread.
"""
from __future__ import annotations

import argparse
import time

import torch

from kd.checkpoint import new_model
from kd.device import cpu_capability, describe, pick_device, prepare_model
from kd.loop import TensorBatches, fit
from kd.losses import LOSSES
from kd.params import TeacherParams
from kd.profiles import load_profile

# The profile's own teacher section, so the benchmark follows the profile if it changes.
HINTON_TEACHER = TeacherParams(**load_profile("mnist-hinton")["teacher"])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--images", type=int, default=60000)
    args = ap.parse_args()
    if args.epochs < 1 or args.images < HINTON_TEACHER.batch_size:
        ap.error(f"--epochs must be at least 1 and --images at least {HINTON_TEACHER.batch_size}")
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (args.images, 1, 28, 28), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 10, (args.images,), generator=g)
    device = pick_device()
    print(f"{describe(device)} (cpu_capability={cpu_capability()}), torch {torch.__version__}, "
          f"threads={torch.get_num_threads()}, {args.images} images, {args.epochs} epochs per point")
    for precision in ("fp32", "bf16", "fp32", "bf16"):
        cfg = HINTON_TEACHER.model_copy(update={"epochs": args.epochs, "precision": precision})
        torch.manual_seed(0)
        model = prepare_model(new_model(cfg.arch, "mnist", dropout=cfg.dropout, input_dropout=cfg.input_dropout))
        batches = TensorBatches(x, y, cfg.batch_size, 0, jitter=cfg.jitter)
        t0 = time.perf_counter()
        fit(model, batches, (x[:0], y[:0]), LOSSES["ce"], cfg, device=device, precision=precision)
        seconds = (time.perf_counter() - t0) / args.epochs
        print(f"{precision}: {seconds:.2f} s/epoch, {args.images / seconds:.0f} images/s", flush=True)


if __name__ == "__main__":
    main()
