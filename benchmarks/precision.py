"""fp32 against bf16 on this machine: training-step and evaluation images/s of
every registered net, and what `precision: auto` picks here.

    PYTHONPATH=src python benchmarks/precision.py                 # every net but the two large GPU-profile ones
    PYTHONPATH=src python benchmarks/precision.py --quick         # fewer batches
    PYTHONPATH=src python benchmarks/precision.py --nets resnet18 vgg13 --batches 5
    PYTHONPATH=src python benchmarks/precision.py --nets mlp1200 --dropout 0.5 --input-dropout 0.2 --max-norm 3.5
                                                                  # the Hinton profile's teacher step

Random uint8 images stand in for the data (speed does not depend on content).
Conv nets are timed in both memory layouts (contiguous, channels_last), so the
layout rule in kd.device.prepare_model can be checked on any CPU. Timings are
for the thread count torch uses here (--threads to change it); they say nothing
about another CPU: run it there.
"""
from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from kd.checkpoint import new_model
from kd.datasets import DATASETS
from kd.device import autocast, cpu_capability, describe, native_bf16, pick_device, prepare_model, resolve_precision
from kd.losses import LOSSES
from kd.models import MODELS
from kd.params import TrainParams
from kd.inference import predict
from kd.loop import TensorBatches, constrain_max_norm, make_optimizer

LARGE = ("resnet18", "vgg13")  # GPU-profile nets: minutes per point on a 2-core CPU


def dataset_of(arch: str) -> str:
    return "mnist" if arch.startswith("mlp") else "cifar10"


def images(dataset: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, *DATASETS[dataset].shape), generator=g, dtype=torch.uint8)
    return x, torch.randint(0, 10, (n,), generator=g)


def layout(model: nn.Module, channels_last: bool | None) -> nn.Module:
    if channels_last is None:
        return prepare_model(model)
    return model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def train_rate(arch, x, y, batch_size, batches, precision, channels_last, device, *,
               dropout=0.0, input_dropout=0.0, max_norm=None) -> float:
    model = new_model(arch, dataset_of(arch), dropout=dropout, input_dropout=input_dropout)
    model = layout(model, channels_last).to(device)
    model.train()
    cfg = TrainParams(arch=arch, epochs=1, batch_size=batch_size, lr=0.05, schedule="constant")
    opt, _ = make_optimizer(model, cfg, 1)
    jitter = 2 if dataset_of(arch) == "mnist" else 4
    data = TensorBatches(x, y, batch_size, seed=0, jitter=jitter, flip=dataset_of(arch) == "cifar10")
    seen, t0 = 0, time.perf_counter()
    for step, (xb, batch) in enumerate(data.epoch(0, device)):
        if step == 3:  # warm-up batches excluded
            t0, seen = time.perf_counter(), 0
        with autocast(device, precision):
            logits = model(xb)
        loss = LOSSES["ce"](logits.float(), batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if max_norm is not None:
            constrain_max_norm(model, max_norm)
        seen += len(xb)
        if step == batches + 2:
            break
    if device.type == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - t0)


def eval_rate(arch, x, precision, channels_last, device) -> float:
    model = layout(new_model(arch, dataset_of(arch)), channels_last).to(device)
    predict(model, x[:500], device=device, precision=precision)  # warm-up
    t0 = time.perf_counter()
    predict(model, x, device=device, precision=precision)
    return len(x) / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nets", nargs="+", default=[m for m in MODELS if m not in LARGE], choices=sorted(MODELS))
    ap.add_argument("--batches", type=int, default=40, help="timed training batches per point")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--eval-images", type=int, default=4000)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--dropout", type=float, default=0.0, help="hidden-layer dropout (MLPs; training step only)")
    ap.add_argument("--input-dropout", type=float, default=0.0, help="input dropout (MLPs; training step only)")
    ap.add_argument("--max-norm", type=float, default=None, help="max-norm radius applied after each step")
    ap.add_argument("--quick", action="store_true", help="15 batches, 2000 eval images")
    args = ap.parse_args()
    if args.quick:
        args.batches, args.eval_images = 15, 2000
    if args.batches < 1 or args.eval_images < 500:
        ap.error("--batches must be at least 1 and --eval-images at least 500")
    if not (0 <= args.dropout < 1 and 0 <= args.input_dropout < 1):
        ap.error("--dropout and --input-dropout must be in [0, 1)")
    if args.max_norm is not None and args.max_norm <= 0:
        ap.error("--max-norm must be positive")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device()
    print(f"{describe(device)}, native bf16: {native_bf16(device)}, torch {torch.__version__}, "
          f"threads={torch.get_num_threads()}, batch={args.batch_size}, "
          f"timed train batches={args.batches}, eval images={args.eval_images}, dropout={args.dropout}, "
          f"input dropout={args.input_dropout}, max-norm={args.max_norm}")
    print(f"precision: auto picks {resolve_precision('auto', device)} here "
          f"(cpu_capability={cpu_capability()})")
    print(f"{'net':9s} {'precision':9s} {'layout':14s} {'train img/s':>11s} {'eval img/s':>10s}  bf16/fp32 train")
    n = (args.batches + 3) * args.batch_size
    for arch in args.nets:
        x, y = images(dataset_of(arch), max(n, args.eval_images))
        conv = any(isinstance(m, nn.Conv2d) for m in new_model(arch, dataset_of(arch)).modules())
        fp32_best = None
        for precision in ("fp32", "bf16"):
            for cl in ((False, True) if conv else (False,)):
                tr = train_rate(arch, x[:n], y[:n], args.batch_size, args.batches, precision, cl, device,
                                dropout=args.dropout, input_dropout=args.input_dropout, max_norm=args.max_norm)
                ev = eval_rate(arch, x[: args.eval_images], precision, cl, device)
                if precision == "fp32":
                    fp32_best = max(fp32_best or 0, tr)
                ratio = f"{tr / fp32_best:.2f}x" if precision == "bf16" else ""
                name = ("channels_last" if cl else "contiguous") if conv else "-"
                print(f"{arch:9s} {precision:9s} {name:14s} {tr:11.0f} {ev:10.0f}  {ratio}", flush=True)


if __name__ == "__main__":
    main()
