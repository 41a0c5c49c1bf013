"""Training-step time of each distillation method against kd's, per student net, on this machine.

    PYTHONPATH=src python benchmarks/methods_speed.py              # mlp800 (MNIST) and resnet8 (CIFAR-10)
    PYTHONPATH=src python benchmarks/methods_speed.py --nets resnet8 --rounds 5

A step is the student's forward pass, the loss and the backward pass and SGD update, on random
images and random cached teacher logits (the teacher never runs: every method reads the cache).
Methods take turns within each round, starting from a different one each round, so drift in
the machine's speed and the order hit all alike; the median round is reported. Timings say nothing about another CPU: rerun it there.
"""
from __future__ import annotations

import argparse
import statistics
import time
from functools import partial

import torch

from kd.checkpoint import new_model
from kd.datasets import DATASETS
from kd.device import autocast, cpu_capability, pick_device, prepare_model, resolve_precision
from kd.losses import LOSSES
from kd.params import MethodParams

METHODS = {  # name: (loss, options), each method at its params.yaml defaults
    "kd": ("kd", {"alpha": 0.9}),
    "kd+ls": ("kd", {"alpha": 0.9, "logit_std": True}),
    "dkd": ("dkd", MethodParams().dkd.model_dump()),
    "dkd+ls": ("dkd", {**MethodParams().dkd.model_dump(), "logit_std": True}),
    "dist": ("dist", MethodParams().dist.model_dump()),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nets", nargs="+", default=["mlp800", "resnet8"])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20, help="steps per method per round")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    args = ap.parse_args()
    device = pick_device()
    precision = resolve_precision(args.precision, device)
    print(f"CPU capability {cpu_capability()}, precision {args.precision} -> {precision}, "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {args.batch}, "
          f"{args.rounds} rounds x {args.steps} steps")
    print(f"{'net':8s} {'method':7s} {'ms/step':>8s} {'vs kd':>6s}")
    for net in args.nets:
        dataset = "mnist" if net.startswith("mlp") else "cifar10"
        info = DATASETS[dataset]
        model = prepare_model(new_model(net, dataset)).to(device)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        g = torch.Generator().manual_seed(0)
        x = torch.rand(args.batch, *info.shape, generator=g).to(device)
        if net != "mlp800" and device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        batch = {"y": torch.randint(0, info.num_classes, (args.batch,), generator=g).to(device),
                 "teacher_logits": (torch.randn(args.batch, info.num_classes, generator=g) * 4).to(device),
                 "progress": 0.5}
        losses = {m: partial(LOSSES[name], temperature=4.0, **opts) for m, (name, opts) in METHODS.items()}
        times = {m: [] for m in METHODS}

        def step(loss_fn):
            with autocast(device, precision):
                logits = model(x)
            loss = loss_fn(logits.float(), batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        for loss_fn in losses.values():  # warm-up
            for _ in range(3):
                step(loss_fn)
        names = list(losses)
        for r in range(args.rounds):
            for m in names[r % len(names):] + names[:r % len(names)]:  # each method in each position
                loss_fn = losses[m]
                t0 = time.perf_counter()
                for _ in range(args.steps):
                    step(loss_fn)
                times[m].append((time.perf_counter() - t0) / args.steps * 1000)
        kd = statistics.median(times["kd"])
        for m, ts in times.items():
            ms = statistics.median(ts)
            print(f"{net:8s} {m:7s} {ms:8.2f} {ms / kd:5.2f}x")


if __name__ == "__main__":
    main()
