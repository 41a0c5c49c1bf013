"""The GPU profile (profiles/cifar10-gpu.yaml: VGG13 teaches ResNet18, the poster's nets) on a
CUDA GPU, in a few minutes: what its 200-epoch runs cost there, and whether they reproduce.

    PYTHONPATH=src python benchmarks/gpu_profile.py --mirror ../shared/datasets --minutes 6 \\
        --out reports/gpu-profile.md

1. Epoch time of each training the profile runs (teacher vgg13, true-label resnet18, resnet18
   distilled from a live vgg13) in bf16 and fp32, through `kd.loop.fit` as the stages call it.
   The second epoch is timed: the first pays cuDNN's and the allocator's warm-up. Also the same
   loop with the uint8 training set held on the GPU, which shows what the host side costs.
   And the headroom: the same steps with the set on the GPU and none of the loop's per-step
   host work (no `.item()`, no finiteness check, no validation), which is what a leaner loop
   could reach.
2. Bit-identity: one short training twice from the same seed; are the weights equal?
3. A short run of the profile: teacher, true-label and distilled student at E epochs each, E as
   many as fit in what is left of --minutes, the profile's schedule scaled to E; one seed, test
   accuracy of each. Not the poster's 200 epochs: that the pipeline learns on a GPU, and what
   these nets reach in a few minutes.
Everything is in the profile's params except the epochs; no DVC, no MLflow (neither is needed).
"""
from __future__ import annotations

import argparse
import json
import math
import time
from functools import partial
from pathlib import Path

import torch

from kd.checkpoint import new_model
from kd.datasets import fetch_cifar10, split_train_val
from kd.device import autocast, hardware_info, pick_device, prepare_model, resolve_precision, seed_everything
from kd.profiles import load_profile
from kd.losses import LOSSES
from kd.params import Params
from kd.inference import predict
from kd.soft_labels import LiveTeacher
from kd.loop import TensorBatches, fit, make_optimizer

ROOT = Path(__file__).resolve().parents[1]
PROFILE_EPOCHS = 200


def train(arch, cfg, data, val, device, *, teacher=None, loss=LOSSES["ce"], seed=0, on_gpu=False):
    seed_everything(seed)
    model = prepare_model(new_model(arch, "cifar10"))
    x, y = (t.to(device) for t in data) if on_gpu else data
    batches = TensorBatches(x, y, cfg.batch_size, seed, jitter=cfg.jitter, flip=cfg.flip, teacher=teacher)
    history = fit(model, batches, val, loss, cfg, device=device,
                  precision=resolve_precision(cfg.precision, device))
    return model, history


def lean_epoch_seconds(arch, cfg, data, device, *, teacher=None, loss=LOSSES["ce"]) -> float:
    """fit's step (same batches, augmentation, precision, optimiser) without its host work: the
    uint8 set on the GPU, the loss summed there and read once per epoch. The second of two epochs."""
    seed_everything(0)
    precision = resolve_precision(cfg.precision, device)
    model = prepare_model(new_model(arch, "cifar10")).to(device).train()
    batches = TensorBatches(*(t.to(device) for t in data), cfg.batch_size, 0, jitter=cfg.jitter, flip=cfg.flip,
                            teacher=teacher)
    opt, sched = make_optimizer(model, cfg, 2 * len(batches))
    for epoch in range(2):
        t0, total = time.perf_counter(), torch.zeros((), device=device)
        for x, batch in batches.epoch(epoch, device):
            with autocast(device, precision):
                logits = model(x)
            loss_value = loss(logits.float(), batch)
            opt.zero_grad(set_to_none=True)
            loss_value.backward()
            opt.step()
            sched.step()
            total += loss_value.detach()
        total.item()  # waits for the GPU
    return time.perf_counter() - t0


def accuracy(model, x, y, device, precision) -> float:
    return (predict(model, x, device=device, precision=precision).argmax(1) == y).float().mean().item()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mirror", type=Path, default=ROOT.parent / "shared" / "datasets")
    ap.add_argument("--profile", type=Path, default=ROOT / "profiles" / "cifar10-gpu.yaml")
    ap.add_argument("--minutes", type=float, default=6.0, help="wall time for all three parts")
    ap.add_argument("--max-epochs", type=int, default=60, help="cap on the short run's epochs")
    ap.add_argument("--max-train", type=int, default=None, help="smoke test: this many images per split")
    ap.add_argument("--out", type=Path, default=ROOT / "reports" / "gpu-profile.md")
    ap.add_argument("--from-json", type=Path, default=None,
                    help="measure nothing: rewrite --out from a .json an earlier run wrote")
    args = ap.parse_args()
    p = Params.model_validate(load_profile(args.profile, ROOT))  # the defaults + the profile
    if args.from_json:
        args.out.write_text(report(json.loads(args.from_json.read_text()), p))
        return
    start = time.perf_counter()
    device = pick_device()
    if device.type != "cuda" and args.max_train is None:
        raise SystemExit("no CUDA GPU here: this benchmark measures the GPU profile (use --max-train N "
                         "for a smoke test on the CPU)")
    t, s = p.teacher, p.student

    full = fetch_cifar10(args.mirror, Path("/tmp/kd-gpu-profile-raw"))
    train_set, val = split_train_val(*full["train"], p.data.val_size, p.data.split_seed)
    test = (full["test"][0][:], full["test"][1])  # [:] decodes the lazy JPEG files
    if args.max_train:
        train_set, val, test = ((x[:args.max_train], y[:args.max_train]) for x, y in (train_set, val, test))
    n = len(train_set[1])
    print(f"data: {n} train, {len(val[1])} val, {len(test[1])} test, {time.perf_counter() - start:.0f}s", flush=True)
    kd_loss = partial(LOSSES["kd"], temperature=p.temperature, alpha=p.alpha)

    # 1. Epoch times.
    speed = []
    for precision in ("bf16", "fp32"):
        two = {"epochs": 2, "precision": precision}
        teacher, h = train(t.arch, t.model_copy(update=two), train_set, val, device, seed=t.seed)
        if precision == "bf16":
            teacher_bf16 = teacher
        speed.append({"training": f"teacher {t.arch}", "precision": precision, "seconds": h[-1]["seconds"]})
        _, h = train(s.arch, s.model_copy(update=two), train_set, val, device)
        speed.append({"training": f"true-label {s.arch}", "precision": precision, "seconds": h[-1]["seconds"]})
        live = LiveTeacher(teacher, device, precision)
        _, h = train(s.arch, s.model_copy(update=two), train_set, val, device, teacher=live, loss=kd_loss)
        speed.append({"training": f"distilled {s.arch} (live {t.arch})", "precision": precision,
                      "seconds": h[-1]["seconds"]})
    _, h = train(s.arch, s.model_copy(update={"epochs": 2, "precision": "bf16"}), train_set, val, device, on_gpu=True)
    speed.append({"training": f"true-label {s.arch}, uint8 set on the GPU", "precision": "bf16",
                  "seconds": h[-1]["seconds"]})
    bf16 = {"precision": "bf16"}
    lean = LiveTeacher(teacher_bf16, device, "bf16")
    for training, arch, cfg, kw in ((f"teacher {t.arch}", t.arch, t, {}), (f"true-label {s.arch}", s.arch, s, {}),
                                    (f"distilled {s.arch} (live {t.arch})", s.arch, s, {"teacher": lean, "loss": kd_loss})):
        seconds = lean_epoch_seconds(arch, cfg.model_copy(update=bf16), train_set, device, **kw)
        speed.append({"training": f"{training}, lean loop (no host work, no validation)", "precision": "bf16",
                      "seconds": seconds})
    for row in speed:
        row["img_per_s"] = round(n / row["seconds"])
        print(row, flush=True)

    # 2. Bit-identity of a rerun (5,000 images, one epoch).
    small = tuple(x[:5000] for x in train_set)
    one = s.model_copy(update={"epochs": 1, "precision": "bf16"})
    a, b = (train(s.arch, one, small, val, device)[0].state_dict() for _ in range(2))
    identical = all(torch.equal(a[k], b[k]) for k in a)
    print(f"rerun bit-identical: {identical}", flush=True)

    # 3. The short run, in the precision `auto` picks.
    auto = resolve_precision(s.precision, device)
    per_epoch = sum(r["seconds"] for r in speed[:6] if r["precision"] == auto)
    left = args.minutes * 60 - (time.perf_counter() - start) - 30  # 30 s: test predictions, the report
    epochs = min(args.max_epochs, math.floor(left / per_epoch))
    short = None
    if epochs >= 1:
        e = {"epochs": epochs}
        t0 = time.perf_counter()
        teacher, th = train(t.arch, t.model_copy(update=e), train_set, val, device, seed=t.seed)
        base, bh = train(s.arch, s.model_copy(update=e), train_set, val, device, seed=p.seed)
        live = LiveTeacher(teacher, device, resolve_precision(t.precision, device))
        student, sh = train(s.arch, s.model_copy(update=e), train_set, val, device, teacher=live,
                            loss=kd_loss, seed=p.seed)
        short = {"epochs": epochs, "seconds": round(time.perf_counter() - t0, 1), "precision": auto,
                 "test_acc": {role: accuracy(m, *test, device, auto)
                              for role, m in (("teacher", teacher), ("baseline", base), ("student", student))},
                 "val_acc": {"teacher": th[-1]["val_acc"], "baseline": bh[-1]["val_acc"], "student": sh[-1]["val_acc"]}}
        print(short, flush=True)

    info = {"device": hardware_info(device, auto), "torch": torch.__version__,
            "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
            "peak_gpu_mib": round(torch.cuda.max_memory_allocated() / 2**20) if device.type == "cuda" else None,
            "train_images": n, "speed": speed, "bit_identical_rerun": identical, "short_run": short,
            "wall_seconds": round(time.perf_counter() - start, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(info, indent=2) + "\n")
    args.out.write_text(report(info, p))
    print(f"wrote {args.out} and its .json, {info['wall_seconds']}s in all", flush=True)


def report(info: dict, p: Params) -> str:
    d = info["device"]
    lines = ["# The GPU profile, measured", "",
             f"Generated by `benchmarks/gpu_profile.py` on {d.get('gpu', d['device'])} (torch {info['torch']}, "
             f"CUDA {info['cuda']}, cuDNN {info['cudnn']}), `profiles/cifar10-gpu.yaml`: {p.teacher.arch} teaches "
             f"{p.student.arch}, batch {p.student.batch_size}, {info['train_images']} training images. "
             f"Peak GPU memory {info['peak_gpu_mib']} MiB. Wall time {info['wall_seconds']:.0f} s.", "",
             "## Epoch time (the second epoch of a run, validation included)", "",
             "| training | precision | s / epoch | images / s |", "|---|---|---|---|"]
    lines += [f"| {r['training']} | {r['precision']} | {r['seconds']:.2f} | {r['img_per_s']} |" for r in info["speed"]]
    for precision in ("bf16", "fp32"):
        rows = [r for r in info["speed"] if r["precision"] == precision][:3]
        total = PROFILE_EPOCHS * sum(r["seconds"] for r in rows) / 60
        lines += ["", f"The profile's three trainings at {PROFILE_EPOCHS} epochs each, in {precision}: "
                      f"{total:.0f} min projected from these epoch times."]
    lean = [r for r in info["speed"] if "lean loop" in r["training"]]
    if lean:
        total = PROFILE_EPOCHS * sum(r["seconds"] for r in lean) / 60
        lines += ["", f"The same with the lean loop's steps, in bf16: {total:.0f} min. The difference is what "
                      "`kd.loop.fit`'s host work costs on this GPU (per-step `.item()` reads and finiteness "
                      "check, batches gathered on the CPU, validation each epoch)."]
    lines += ["", "## Reproducibility", "",
              f"The same one-epoch training (5,000 images, bf16) run twice from one seed: weights "
              f"{'bit-identical' if info['bit_identical_rerun'] else '**not** bit-identical'}."]
    sr = info["short_run"]
    if sr:
        acc = sr["test_acc"]
        lines += ["", f"## A short run: {sr['epochs']} epochs each, {sr['precision']}, seed {p.seed}", "",
                  f"The profile's schedule scaled to {sr['epochs']} epochs; {sr['seconds']:.0f} s for the three "
                  "trainings. One seed: no interval, a sanity check and a first number, not a claim.", "",
                  "| model | val % | test % |", "|---|---|---|"]
        lines += [f"| {role} | {100 * sr['val_acc'][role]:.2f} | {100 * acc[role]:.2f} |" for role in acc]
        lines += ["", f"Distilled minus true-label student: {100 * (acc['student'] - acc['baseline']):+.2f} "
                      "points of test accuracy."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
