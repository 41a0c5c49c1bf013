"""Student-epoch speed of KD on CIFAR-10: our loop against the common recipe of
public KD repos, same nets, same machine, one run.

    PYTHONPATH=src python benchmarks/cifar_kd_speed.py --quick                  # 60 batches each
    PYTHONPATH=src python benchmarks/cifar_kd_speed.py --batches 300 --threads 1
    PYTHONPATH=src python benchmarks/cifar_kd_speed.py --epochs 5 --teacher-checkpoint models/teacher.pt

common: torchvision-style dataset (PIL image per sample) + DataLoader with
        per-sample RandomCrop(32, 4) / flip / ToTensor / Normalize, fp32, the
        teacher run on every batch (what e.g. Tf-KD or kuangliu-based code does).
ours:   `kd.loop.fit` on uint8 tensors with batched augmentation, in the
        precision `auto` picks here (bf16 + channels_last only on a CPU with
        native bf16, else fp32), teacher logits from the view cache (K views
        computed once; their one-off cost is printed separately).
ours-live: our loop with the teacher run on every batch (soft_labels.mode=live).

Each variant trains a fresh student from the same init on the same first
`batches` x `batch` training images (a short run, not an epoch); the epoch time
is extrapolated to 45,000 images. The accuracies after this short run, on 2,000
test images, only check that no variant is broken.

With --epochs E, each variant instead trains E whole epochs on the first 45,000
training images and is tested on all 10,000 test images: "at equal accuracy"
needs a trained teacher (--teacher-checkpoint, e.g. a CIFAR run's
models/teacher.pt) and full runs. The student's optimiser, schedule, T and alpha
are those of profiles/cifar10-cpu.yaml in both modes.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from functools import partial
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
from kd.checkpoint import load_model, new_model
from kd.datasets import DATASETS, fetch_cifar10
from kd.device import autocast, pick_device, prepare_model, resolve_precision
from kd.files import InputFileError
from kd.losses import LOSSES
from kd.profiles import load_profile
from kd.params import TrainParams
from kd.inference import predict
from kd.soft_labels import LiveTeacher, ViewCache, teacher_view_logits, view_shifts
from kd.loop import TensorBatches, fit, make_optimizer

EPOCH = 45_000


class PerSampleCIFAR(torch.utils.data.Dataset):
    """What torchvision.datasets.CIFAR10 does per item: HWC uint8 -> PIL -> transform."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, transform):
        self.data = x.permute(0, 2, 3, 1).numpy()
        self.targets = y.tolist()
        self.transform = transform

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        from PIL import Image

        return self.transform(Image.fromarray(self.data[i])), self.targets[i]


def common_loader(x, y, batch_size, workers):
    from torchvision import transforms as T

    info = DATASETS["cifar10"]
    tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                    T.Normalize(info.mean, info.std)])
    return torch.utils.data.DataLoader(PerSampleCIFAR(x, y, tf), batch_size=batch_size, shuffle=True,
                                       num_workers=workers, generator=torch.Generator().manual_seed(0))


def data_only(batches) -> float:
    """Seconds to produce the augmented float batches, no model: the input pipeline's ceiling."""
    t0 = time.perf_counter()
    for xb, _ in batches:
        xb.float()
    return time.perf_counter() - t0


def common_recipe(student, teacher, x, y, cfg, loss_fn, device, workers) -> float:
    """Seconds for cfg.epochs passes over x, the usual way."""
    loader = common_loader(x, y, cfg.batch_size, workers)
    # The public recipe normalises in the transform: use our nets without their Normalize layer.
    s_body, t_body = student[1].to(device).train(), teacher[1].to(device).eval()
    opt, sched = make_optimizer(s_body, cfg, cfg.epochs * len(loader))
    t0 = time.perf_counter()
    for _ in range(cfg.epochs):
        for xb, yb in loader:
            xb, yb = xb.to(device), yb.to(device)
            with torch.no_grad():
                t_logits = t_body(xb)
            loss = loss_fn(s_body(xb), {"y": yb, "teacher_logits": t_logits})
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def ours(student, x, y, cfg, loss_fn, device, teacher) -> float:
    student = prepare_model(student)
    batches = TensorBatches(x, y, cfg.batch_size, seed=0, jitter=4, flip=True, teacher=teacher)
    t0 = time.perf_counter()
    fit(student, batches, (x[:10], y[:10]), loss_fn, cfg, device=device,
        precision=resolve_precision(cfg.precision, device))
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", default="vgg8")
    ap.add_argument("--student", default="resnet20")
    ap.add_argument("--batches", type=int, default=300, help="training batches per variant")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--views", type=int, default=8, help="cached teacher views per image")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers of the common recipe")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--mirror", default=str(ROOT.parent / "shared" / "datasets"))
    ap.add_argument("--skip-live", action="store_true", help="skip the ours-live variant")
    ap.add_argument("--quick", action="store_true", help="60 batches per variant")
    ap.add_argument("--epochs", type=int, default=None,
                    help="full runs: E epochs on 45,000 images, tested on all 10,000 (overrides --batches)")
    ap.add_argument("--teacher-checkpoint", type=Path, default=None,
                    help="a trained teacher (its arch replaces --teacher); default: an untrained one")
    args = ap.parse_args()
    if args.epochs is not None and args.epochs < 1:
        ap.error("--epochs must be at least 1")
    if args.quick:
        args.batches = 60
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device()
    n = EPOCH if args.epochs else args.batches * args.batch_size
    n_test = 10_000 if args.epochs else 2_000

    torch.manual_seed(0)  # the teacher's and then the student's init
    if args.teacher_checkpoint:
        try:
            teacher, ckpt = load_model(args.teacher_checkpoint)
        except InputFileError as e:
            ap.error(str(e))
        if ckpt["dataset"] != "cifar10":
            ap.error(f"{args.teacher_checkpoint}: a {ckpt['dataset']} model, not a CIFAR-10 one")
        args.teacher = ckpt["arch"]
    else:
        teacher = new_model(args.teacher, "cifar10").eval()  # untrained: speed does not depend on weights

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as raw:
        data = fetch_cifar10(Path(args.mirror), Path(raw))
        x, y = data["train"][0][:n], data["train"][1][:n]
        xt, yt = data["test"][0][:n_test], data["test"][1][:n_test]
    print(f"decoded {n + n_test} JPEGs in {time.perf_counter() - t0:.1f}s")

    init = new_model(args.student, "cifar10").state_dict()  # after the teacher, as in the measured runs
    profile = load_profile("cifar10-cpu", ROOT)  # the defaults + the profile, as DVC reads them
    loss_fn = partial(LOSSES["kd"], temperature=profile["temperature"], alpha=profile["alpha"])
    base = {**profile["student"], "arch": args.student, "epochs": args.epochs or 1,
            "batch_size": args.batch_size, "precision": "fp32"}
    print(f"device={device.type} threads={torch.get_num_threads()} teacher={args.teacher}"
          f"{' (trained)' if args.teacher_checkpoint else ' (untrained)'} student={args.student} "
          + (f"epochs={args.epochs} on {n} images" if args.epochs else f"batches={args.batches}x{args.batch_size}")
          + f" workers={args.workers} lr={base['lr']} T={profile['temperature']} alpha={profile['alpha']}")

    def fresh():
        m = new_model(args.student, "cifar10")
        m.load_state_dict(init)
        return m

    def acc(m, precision):
        return (predict(m, xt, device=device, precision=precision).argmax(1) == yt).float().mean().item()

    cpu = torch.device("cpu")
    loader_sec = data_only(common_loader(x, y, args.batch_size, args.workers))
    tensor_sec = data_only(TensorBatches(x, y, args.batch_size, seed=0, jitter=4, flip=True).epoch(0, cpu))
    print(f"input pipeline alone: common DataLoader {n / loader_sec:.0f} img/s, "
          f"our TensorBatches {n / tensor_sec:.0f} img/s")

    rows = {}
    m = fresh()
    sec = common_recipe(m, teacher, x, y, TrainParams(**base), loss_fn, device, args.workers)
    rows["common"] = (sec, acc(m, "fp32"))

    t0 = time.perf_counter()
    shifts = view_shifts(n, args.views, 4, True, seed=0)
    fast = resolve_precision("auto", device)  # bf16 only where the hardware has it
    teacher_fast = prepare_model(teacher.to(device))
    logits = teacher_view_logits(teacher_fast, x, shifts, args.views, device=device, precision=fast)
    cache = ViewCache(shifts, 4, True, logits)
    cache_sec = time.perf_counter() - t0
    ours_cfg = TrainParams(**{**base, "precision": fast})
    m = fresh()
    rows["ours"] = (ours(m, x, y, ours_cfg, loss_fn, device, cache), acc(m, fast))
    if not args.skip_live:
        m = fresh()
        live = LiveTeacher(teacher_fast, device, fast)
        rows["ours-live"] = (ours(m, x, y, ours_cfg, loss_fn, device, live), acc(m, fast))

    epochs = args.epochs or 1
    head = f"test acc ({n_test})" if args.epochs else "short-run acc"
    print(f"\n{'variant':10s} {'img/s':>7s} {'epoch s (45k)':>13s} {head:>16s}")
    for name, (sec, a) in rows.items():
        print(f"{name:10s} {epochs * n / sec:7.0f} {EPOCH * sec / (epochs * n):13.0f} {a:16.4f}")
    cache_epoch = EPOCH * cache_sec / n
    print(f"view cache: {args.views} views of {n} images in {cache_sec:.1f}s "
          f"(full 45k set: {cache_epoch:.0f}s once, = {cache_epoch / (EPOCH * rows['ours'][0] / (epochs * n)):.2f} "
          "of our epochs)")
    print(f"speed-up ours / common: {rows['common'][0] / rows['ours'][0]:.2f}x per epoch")
    if args.epochs:
        print(f"speed-up ours / common, whole run with the view cache: "
              f"{rows['common'][0] / (rows['ours'][0] + cache_sec):.2f}x")
    if "ours-live" in rows:
        print(f"speed-up ours-live / common: {rows['common'][0] / rows['ours-live'][0]:.2f}x")


if __name__ == "__main__":
    main()
