"""Train one model of the pipeline and write what DVC tracks of it: the
checkpoint, the per-epoch curve and the metrics summary. How the run is
recorded (MLflow) is the caller's business: it gets each epoch through
`ctx.on_epoch` and the trained model and history back."""
from __future__ import annotations

import sys
from typing import Callable, Protocol

import torch
from torch import nn

from kd import distributed
from kd.checkpoint import InitWeightsError, load_init, new_model, save_model
from kd.dvc_stage import stage_fingerprint
from kd.device import describe, hardware_info, prepare_model, resolve_precision, seed_everything
from kd.files import write_csv, write_json
from kd.params import Params, TrainParams, check_training_set
from kd.paths import curve_file, metrics_file, model_file
from kd.resume import ResumeState
from kd.soft_labels import LiveTeacher, ViewCache
from kd.splits import load_spec, load_split
from kd.loop import TensorBatches, evaluate_as_is, fit


class StageContext(Protocol):
    """What training needs from the stage running it (kd_pipeline.stage.StageRun is one)."""
    name: str
    params: Params
    device: torch.device
    resume: ResumeState | None  # set here; the stage removes it once every output is written

    def on_epoch(self, row: dict) -> None: ...


def train_model(ctx: StageContext, role: str, cfg: TrainParams, data: tuple[torch.Tensor, torch.Tensor],
                loss_fn: Callable, *, seed: int, teacher: ViewCache | LiveTeacher | None = None,
                init: str | None = None) -> tuple[nn.Module, list[dict]]:
    """Train `role` (teacher, baseline, student) on data = (x, y), from the weights file
    `init` if given; returns (model, history). With cfg.epochs 0 the model is only evaluated."""
    x, y = data
    p = ctx.params
    check_training_set(p, role, len(y))
    seed_everything(seed)  # the model's init
    spec = load_spec()
    model = new_model(cfg.arch, spec, dropout=cfg.dropout, input_dropout=cfg.input_dropout)
    if init is not None:
        note = load_init(model, init, cfg.arch)
        if note and cfg.epochs == 0:
            raise InitWeightsError(f"{note}; with {role}.epochs: 0 that head would stay random: "
                                   "fine-tune for at least one epoch")
        if note and distributed.is_main():
            print(f"[{ctx.name}] {note}", flush=True)
    precision = resolve_precision(cfg.precision, ctx.device)
    model = prepare_model(model)
    if distributed.is_main():
        print(f"[{ctx.name}] {role}: precision {precision} (params: {cfg.precision}) on {describe(ctx.device)}",
              flush=True)
    batches = TensorBatches(x, y, cfg.batch_size, seed, jitter=cfg.jitter, flip=cfg.flip, teacher=teacher,
                            rank=distributed.rank(), world=distributed.world_size())
    # Keyed on what dvc.yaml says the stage depends on: its params, data and code.
    ctx.resume = ResumeState(ctx.name, stage_fingerprint(ctx.name, p, sys.argv[0]))
    if distributed.is_main():
        ctx.resume.prune()
    if cfg.epochs:
        history = fit(model, batches, load_split("val"), loss_fn, cfg, device=ctx.device, precision=precision,
                      resume=ctx.resume, on_epoch=ctx.on_epoch)
    else:  # used as it is: its numbers as "epoch 0"
        history = [evaluate_as_is(model, (x, y), load_split("val"), loss_fn, device=ctx.device,
                                  precision=precision)]
    if distributed.is_main():  # every rank holds the same weights; rank 0 writes
        save_model(model_file(role), model, arch=cfg.arch, dataset=p.data.dataset, spec=spec,
                   dropout=cfg.dropout, input_dropout=cfg.input_dropout)
        # Without wall times, so reruns write identical files.
        write_csv(curve_file(role), [{k: v for k, v in h.items() if k != "seconds"} for h in history])
        last = history[-1]
        write_json(metrics_file(role), {
            # None without a validation split (data.val_size 0)
            **{k: None if last[k] is None else round(last[k], 6) for k in ("val_acc", "val_loss")},
            "train_acc": round(last["train_acc"], 6),
            "epochs": cfg.epochs, "train_samples": len(y),
            # Results are bit-identical only on the same kind of CPU/GPU and precision.
            **hardware_info(ctx.device, precision),
        })
    return model, history
