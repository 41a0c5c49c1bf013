"""Does torch.compile of the training step pay on this CPU? Compile time against the
per-epoch gain, for the CIFAR study's nets, in the precision(s) asked.

    PYTHONPATH=src python benchmarks/compile.py                       # vgg8, resnet8; auto's precision
    PYTHONPATH=src python benchmarks/compile.py --precisions fp32 bf16 --batches 30

The step is the pipeline's (model forward in autocast, CE loss, backward, SGD step)
on random uint8 images with the pipeline's batched augmentation, channels_last as
kd.device.prepare_model sets it. "eager" and "compiled" train the same batches;
"break-even" is the compile time divided by the time saved per epoch of 45,000
images (the CIFAR-10 study's training split). Needs a C++ compiler for inductor's
CPU code; without one torch.compile fails and this says so.
"""
from __future__ import annotations

import argparse
import time

import torch

from kd.checkpoint import new_model
from kd.device import autocast, describe, pick_device, prepare_model, resolve_precision
from kd.losses import LOSSES
from kd.params import TrainParams
from kd.loop import TensorBatches, make_optimizer

EPOCH_IMAGES = 45_000


def step_fn(model, opt, device, precision):
    def step(xb, y):
        with autocast(device, precision):
            logits = model(xb)
        loss = LOSSES["ce"](logits.float(), {"y": y})
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss
    return step


def rate(arch, precision, compiled, x, y, batches, device) -> tuple[float, float]:
    """(seconds until the first step is done, images/s over the timed steps after warm-up)."""
    torch.manual_seed(0)
    model = prepare_model(new_model(arch, "cifar10")).to(device)
    cfg = TrainParams(arch=arch, epochs=1, batch_size=128, lr=0.05, schedule="constant")
    opt, _ = make_optimizer(model, cfg, 1)
    step = step_fn(model, opt, device, precision)
    if compiled:
        step = torch.compile(step)
    data = TensorBatches(x, y, 128, seed=0, jitter=4, flip=True)
    t0 = time.perf_counter()
    first, seen = None, 0
    for i, (xb, batch) in enumerate(data.epoch(0, device)):
        step(xb, batch["y"])
        if i == 0:
            first = time.perf_counter() - t0
        if i == 2:  # warm-up (and recompiles for the last, smaller batch are avoided: equal batches)
            t1, seen = time.perf_counter(), 0
        elif i > 2:
            seen += len(xb)
        if i == batches + 2:
            break
    return first, seen / (time.perf_counter() - t1)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nets", nargs="+", default=["vgg8", "resnet8"])
    ap.add_argument("--precisions", nargs="+", default=None, choices=["fp32", "bf16"],
                    help="default: what precision auto picks here")
    ap.add_argument("--batches", type=int, default=30, help="timed training batches per point")
    args = ap.parse_args()
    device = pick_device()
    precisions = args.precisions or [resolve_precision("auto", device)]
    print(f"{describe(device)}, torch {torch.__version__}, threads={torch.get_num_threads()}, batch=128, "
          f"timed batches={args.batches}")
    print(f"{'net':8s} {'precision':9s} {'eager img/s':>11s} {'compiled img/s':>14s} {'speed-up':>8s} "
          f"{'compile s':>9s} {'break-even epochs':>17s}")
    g = torch.Generator().manual_seed(0)
    n = (args.batches + 3) * 128
    x = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 10, (n,), generator=g)
    for arch in args.nets:
        for precision in precisions:
            first_eager, eager = rate(arch, precision, False, x, y, args.batches, device)
            try:
                first_comp, comp = rate(arch, precision, True, x, y, args.batches, device)
            except Exception as e:  # no compiler, an unsupported op: eager is what runs
                print(f"{arch:8s} {precision:9s} {eager:11.0f} torch.compile failed: {type(e).__name__}: "
                      f"{str(e).splitlines()[0][:120]}")
                continue
            compile_s = first_comp - first_eager
            saved = EPOCH_IMAGES / eager - EPOCH_IMAGES / comp
            even = f"{compile_s / saved:.1f}" if saved > 0 else "never"
            print(f"{arch:8s} {precision:9s} {eager:11.0f} {comp:14.0f} {comp / eager:7.2f}x "
                  f"{compile_s:9.1f} {even:>17s}", flush=True)


if __name__ == "__main__":
    main()
