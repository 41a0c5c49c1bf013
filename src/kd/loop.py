"""The training loop: whole dataset in memory, batches sliced from tensors."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from tqdm import tqdm

from kd import distributed
from kd.augment import apply_shifts, draw_shifts
from kd.device import autocast
from kd.errors import UserError
from kd.params import TrainParams
from kd.inference import predict
from kd.resume import ResumeState
from kd.soft_labels import LiveTeacher, ViewCache


class DivergedError(UserError, RuntimeError):
    """The loss became NaN or inf."""


@dataclass
class TensorBatches:
    """Shuffled mini-batches of a uint8 image tensor, augmented on the fly.

    Everything random about epoch e (order, shifts, flips) comes from a
    generator seeded with (seed, e), so a resumed run sees the same batches.

    Under DDP (world > 1) every rank draws the same order and shifts, and takes
    every world-th image of each batch from position `rank`: the ranks' slices
    never overlap and together make exactly the single-process batch, with
    batch_size still the global batch size. The order is first padded by
    repeating its head (as DistributedSampler does) so every rank gets the same
    number of equally sized batches, which DDP's gradient averaging needs.
    """
    x: torch.Tensor  # uint8 [N, C, H, W]
    y: torch.Tensor
    batch_size: int
    seed: int
    jitter: int = 0
    flip: bool = False
    rank: int = 0
    world: int = 1
    # The teacher signal, if any: every batch then carries its teacher logits. Cached
    # views also fix the augmentation: each sample is shown as one of its K stored
    # views instead of a fresh random shift (kd.soft_labels.load_soft_labels checked
    # that they were drawn with this jitter and flip).
    teacher: ViewCache | LiveTeacher | None = None

    def __post_init__(self):
        if self.batch_size % self.world:
            raise ValueError(f"batch_size {self.batch_size} must be a multiple of the {self.world} "
                             "distributed processes")

    def __len__(self) -> int:
        return math.ceil(len(self.y) / self.batch_size)

    def epoch(self, epoch: int, device: torch.device):
        """Yields (images as float in [0, 1], {"y", "teacher_logits" with a teacher})."""
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = torch.randperm(len(self.y), generator=g)
        pad = -len(order) % self.world
        order = torch.cat([order, order[:pad]])
        mine = slice(self.rank, None, self.world)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            # Same draws on every rank; each rank then takes its slice.
            view, cache = None, self.teacher if isinstance(self.teacher, ViewCache) else None
            if cache is None:
                shifts = draw_shifts(len(idx), self.jitter, g, self.flip)
                shifts = shifts[mine] if shifts else None
            else:
                view = (torch.randint(0, cache.views, (len(idx),), generator=g) if cache.views > 1
                        else torch.zeros(len(idx), dtype=torch.long))[mine]
                shifts = cache.view_shifts(view, idx[mine])
            idx = idx[mine]
            x = apply_shifts(self.x[idx], shifts).to(device, non_blocking=True).float().div_(255)
            batch = {"y": self.y[idx].to(device)}
            if self.teacher is not None:
                batch["teacher_logits"] = self.teacher.logits_for(x, idx, view)
            yield x, batch


def make_optimizer(model: nn.Module, cfg: TrainParams, steps: int):
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                              weight_decay=cfg.weight_decay, nesterov=cfg.momentum > 0)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.schedule == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps, pct_start=0.15)
    elif cfg.schedule == "step":
        milestones = [round(steps * f) for f in (0.3, 0.6, 0.8)]
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=0.2)
    elif cfg.schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    return opt, sched


@torch.no_grad()
def constrain_max_norm(model: nn.Module, radius: float) -> None:
    """Project each hidden unit's incoming weights onto the L2 ball of `radius`. Hidden units:
    every Linear and Conv layer's output units but the last layer's (the classifier), as in
    Srivastava et al. (2014), who constrain hidden units only."""
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))]
    for layer in layers[:-1]:
        layer.weight.renorm_(2, 0, radius)


@torch.no_grad()
def val_metrics(model: nn.Module, val: tuple[torch.Tensor, torch.Tensor], *, device: torch.device,
                precision: str) -> dict:
    """Loss and accuracy on the validation split; None for both without one (data.val_size 0)."""
    if not len(val[1]):
        return {"val_loss": None, "val_acc": None}
    logits = predict(model, val[0], device=device, precision=precision)
    return {"val_loss": torch.nn.functional.cross_entropy(logits, val[1]).item(),
            "val_acc": (logits.argmax(1) == val[1]).float().mean().item()}


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


@torch.no_grad()
def evaluate_as_is(model: nn.Module, train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor],
                   loss_fn: Callable[[torch.Tensor, dict], torch.Tensor], *, device: torch.device,
                   precision: str) -> dict:
    """The row `fit` would log after an epoch, for a model that trains for none
    (a teacher used as teacher.init gives it)."""
    model.to(device)
    t0 = time.perf_counter()
    train_logits = predict(model, train[0], device=device, precision=precision)
    return {
        "epoch": 0,
        "train_loss": loss_fn(train_logits, {"y": train[1]}).item(),
        "train_acc": (train_logits.argmax(1) == train[1]).float().mean().item(),
        **val_metrics(model, val, device=device, precision=precision),
        "seconds": time.perf_counter() - t0,
    }


def fit(
    model: nn.Module,
    batches: TensorBatches,
    val: tuple[torch.Tensor, torch.Tensor],
    loss_fn: Callable[[torch.Tensor, dict], torch.Tensor],
    cfg: TrainParams,
    *,
    device: torch.device,
    precision: str,
    resume: ResumeState | None = None,
    on_epoch: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Train `model` for cfg.epochs; return one dict of metrics per epoch.

    Under torchrun every rank calls this with its own shard of `batches`; the
    returned metrics are over all ranks, and only rank 0 prints and saves the
    resume state. It computes in `precision` ("fp32" or "bf16": what
    kd.device.resolve_precision made of cfg.precision). `on_epoch` runs on every rank.
    """
    model.to(device)
    net = distributed.wrap(model, device)  # trains; `model` is the plain module inside
    main = distributed.is_main()
    opt, sched = make_optimizer(model, cfg, cfg.epochs * len(batches))
    history: list[dict] = []
    state = resume.load() if resume else None
    if state:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        history = state["history"]
        if main:
            print(f"resuming after epoch {len(history)} from {resume.path}")

    for epoch in range(len(history), cfg.epochs):
        # Dropout draws from the global RNG: reseed per epoch so resume is exact,
        # and per rank so ranks don't share masks.
        torch.manual_seed(batches.seed * 100_003 + epoch + 1_000_003 * batches.rank)
        model.train()
        t0, total, correct, seen = time.perf_counter(), 0.0, 0, 0
        bar = tqdm(batches.epoch(epoch, device), total=len(batches), leave=False,
                   desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=None if main else True)
        for step, (x, batch) in enumerate(bar):
            batch["progress"] = (epoch + 1) / cfg.epochs  # DKD's warm-up reads it
            with autocast(device, precision):
                logits = net(x)
            loss = loss_fn(logits.float(), batch)
            finite = bool(torch.isfinite(loss))
            if not distributed.all_true(finite, device):  # all ranks stop, none waits forever
                what = "non-finite on another rank" if finite else loss.item()
                raise DivergedError(f"loss is {what} at epoch {epoch + 1}, batch {step + 1}; "
                                    "lower the learning rate (no checkpoint was written)")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if cfg.max_norm is not None:
                constrain_max_norm(model, cfg.max_norm)
            n = len(batch["y"])
            total += loss.item() * n
            correct += (logits.argmax(1) == batch["y"]).sum().item()
            seen += n
        total, correct, seen = distributed.sum_all([total, correct, seen], device)
        row = {
            "epoch": epoch + 1,
            "train_loss": total / seen,
            "train_acc": correct / seen,
            **val_metrics(model, val, device=device, precision=precision),
            "seconds": time.perf_counter() - t0,
        }
        history.append(row)
        if main:
            print(f"epoch {row['epoch']:3d}/{cfg.epochs}  train_loss {row['train_loss']:.4f}  "
                  f"train_acc {row['train_acc']:.4f}  val_acc {_fmt(row['val_acc'])}  {row['seconds']:.1f}s",
                  flush=True)
        if resume and main:
            resume.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                         "scheduler": sched.state_dict(), "history": history})
        if on_epoch:
            on_epoch(row)
    return history
