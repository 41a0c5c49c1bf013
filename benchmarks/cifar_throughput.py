"""Images/s of each CIFAR net in our loop: training step and evaluation, so a
schedule can be sized (epoch seconds = 45,000 / train img/s).

    python benchmarks/cifar_throughput.py --quick            # small nets, 30 batches
    python benchmarks/cifar_throughput.py --nets resnet18 vgg13 --batches 10

Random uint8 images stand in for CIFAR-10 (speed does not depend on content).
Prints one line per (net, precision); amp = bf16 autocast + channels_last.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from kd.checkpoint import new_model  # noqa: E402
from kd.device import autocast, pick_device  # noqa: E402
from kd.evaluate import predict  # noqa: E402
from kd.losses import LOSSES  # noqa: E402
from kd.params import TrainParams  # noqa: E402
from kd.train import TensorBatches, make_optimizer  # noqa: E402


def train_rate(arch, x, y, batch_size, batches, amp, device) -> float:
    model = new_model(arch, "cifar10").to(device)
    if amp:
        model = model.to(memory_format=torch.channels_last)
    cfg = TrainParams(arch=arch, epochs=1, batch_size=batch_size, lr=0.05, weight_decay=5e-4, schedule="constant")
    opt, _ = make_optimizer(model, cfg, 1)
    data = TensorBatches(x, y, batch_size, seed=0, shift=4, flip=True)
    seen, t0 = 0, None
    for step, (xb, batch) in enumerate(data.epoch(0, device)):
        if step == 3:  # warm-up batches excluded
            t0, seen = time.perf_counter(), 0
        with autocast(device, amp):
            logits = model(xb)
        loss = LOSSES["ce"](logits.float(), batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seen += len(xb)
        if step == batches + 2:
            break
    if device.type == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - t0)


def eval_rate(arch, x, amp, device) -> float:
    model = new_model(arch, "cifar10").to(device)
    if amp:
        model = model.to(memory_format=torch.channels_last)
    predict(model, x[:500], device=device, amp=amp)  # warm-up
    t0 = time.perf_counter()
    predict(model, x, device=device, amp=amp)
    return len(x) / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nets", nargs="+", default=["resnet8", "resnet20", "vgg8"])
    ap.add_argument("--batches", type=int, default=100, help="timed training batches per net")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--eval-images", type=int, default=5000)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--quick", action="store_true", help="30 batches, 2000 eval images")
    args = ap.parse_args()
    if args.quick:
        args.batches, args.eval_images = 30, 2000
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device()
    g = torch.Generator().manual_seed(0)
    n = (args.batches + 3) * args.batch_size
    x = torch.randint(0, 256, (max(n, args.eval_images), 3, 32, 32), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 10, (len(x),), generator=g)
    print(f"device={device.type} threads={torch.get_num_threads()} batch={args.batch_size} "
          f"timed train batches={args.batches} eval images={args.eval_images}")
    print(f"{'net':10s} {'precision':9s} {'train img/s':>11s} {'epoch45k s':>10s} {'eval img/s':>10s}")
    for arch in args.nets:
        for amp in (False, True):
            tr = train_rate(arch, x[:n], y[:n], args.batch_size, args.batches, amp, device)
            ev = eval_rate(arch, x[: args.eval_images], amp, device)
            print(f"{arch:10s} {'bf16+cl' if amp else 'fp32':9s} {tr:11.0f} {45000 / tr:10.0f} {ev:10.0f}", flush=True)


if __name__ == "__main__":
    main()
