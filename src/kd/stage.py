"""What every stage script shares: validated params, timing, clear failures,
and the stage's MLflow run (kd_runs.tracking)."""
from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from kd import distributed
from kd.checkpoint import new_model, save_model
from kd.datasets import DataError
from kd.device import describe, hardware_info, pick_device, prepare_model, resolve_precision, seed_everything
from kd.declared import declared_params, dvc_stage, stage_fingerprint, stage_outputs
from kd.files import InputFileError, OutputFileError, load_torch, remove_stale_tmp, write_csv, write_json
from kd.params import Params, ParamsError, check_training_set, load_params, project_root
from kd.paths import METRICS, model_file, split_file
from kd.resume import ResumeState
from kd.soft_labels import StaleSoftLabelsError
from kd_runs.tracking import Tracker
from kd.train import DivergedError, TensorBatches, fit


class ParamsChangedError(RuntimeError):
    """params.yaml changed while the stage ran."""


# Errors a user can fix; anything else is a bug and keeps its traceback.
USER_ERRORS = (ParamsError, DataError, DivergedError, StaleSoftLabelsError, InputFileError, OutputFileError,
               ParamsChangedError, distributed.LaunchError)


@dataclass
class StageRun:
    name: str
    params: Params
    device: torch.device
    tracking: Tracker
    started: float = field(default_factory=time.perf_counter)
    resume: ResumeState | None = None  # removed last, once every output is written

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started


@contextmanager
def stage(name: str, *, ddp: bool = False):
    """Run a stage; with ddp=True it may train under torchrun (see kd.distributed)."""
    tag = f"{name} rank {distributed.rank()}" if distributed.launched() else name
    tracking = Tracker(name)
    try:
        params = load_params()
        if distributed.launched() and not ddp:
            raise distributed.LaunchError(f"stage {name} does not run under torchrun; start it with plain python")
        if ddp and params.distributed.processes > 1 and not distributed.launched():
            distributed.relaunch_under_torchrun(params.distributed.processes)  # does not return
        seed_everything(params.seed)
        if distributed.is_main():  # one MLflow run per stage, not one per rank
            remove_leftovers(name)
            tracking.start(params)  # never raises; a tracking failure only warns
        run = StageRun(name, params, distributed.init(pick_device()), tracking)
        if distributed.is_main():
            print(f"[{name}] device={describe(run.device)} processes={distributed.world_size()} "
                  f"torch={torch.__version__}", flush=True)
        yield run
        if distributed.is_main():
            check_params_unchanged(name, params)
            # Wall time lives apart from the accuracy metrics, which must be bit-identical across reruns.
            seconds = run.seconds
            write_json(METRICS / "timing" / f"{name}.json", {"seconds": round(seconds, 1)})
            tracking.end("FINISHED", seconds=seconds)
            # Last: a failure anywhere above reruns from this state, not from scratch.
            if run.resume:
                run.resume.clear()
            print(f"[{name}] finished in {seconds:.1f}s", flush=True)
    except USER_ERRORS as e:
        print(f"[{tag}] error: {e}", file=sys.stderr, flush=True)
        tracking.end("FAILED")
        sys.exit(2)
    except BaseException as e:
        tracking.end("KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
        raise
    finally:
        distributed.shutdown()


def remove_leftovers(name: str) -> None:
    """Temp files of killed processes in .resume/ and beside the stage's outputs."""
    outs = stage_outputs(dvc_stage(name))
    dirs = {project_root() / ".resume", *(p.parent for p in outs), *(p for p in outs if p.is_dir())}
    for d in sorted(d for d in dirs if d.is_dir()):
        for tmp in remove_stale_tmp(d):
            print(f"[{name}] removed {tmp}, left by a killed run", flush=True)


def check_params_unchanged(name: str, params: Params) -> None:
    """DVC hashes params.yaml after the stage exits and files the outputs under
    those values (in dvc.lock and the run-cache): they must still be the ones
    the stage ran with."""
    try:
        now = load_params()
    except (ParamsError, OSError, ValueError) as e:  # ValueError: not UTF-8
        raise ParamsChangedError(f"params.yaml changed while the stage ran and cannot be read now ({e}); "
                                 "its outputs are not recorded") from None
    before, after = declared_params(name, params), declared_params(name, now)
    changed = [f"{k}: {before.get(k, '(none)')} -> {after.get(k, '(none)')}"
               for k in sorted(before.keys() | after.keys()) if before.get(k) != after.get(k)]
    if changed:
        raise ParamsChangedError(f"params.yaml changed while the stage ran ({'; '.join(changed)}); its outputs "
                                 "are for the old values and are not recorded; run `dvc repro` again")


def load_split(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    blob = load_torch(split_file(split))
    return blob["x"], blob["y"]


def keep_classes(x, y, omit: list[int]):
    """Drop the omitted classes (the student's transfer set); also returns the mask."""
    keep = ~torch.isin(y, torch.tensor(omit, dtype=y.dtype))
    return x[keep], y[keep], keep


def train_model(run: StageRun, role: str, cfg, x, y, loss_fn, *, seed: int, views=None, teacher=None) -> None:
    """Train one model of the pipeline and write its checkpoint, curve and metrics."""
    p = run.params
    check_training_set(p, role, len(y))
    seed_everything(seed)  # the model's init
    model = new_model(cfg.arch, p.data.dataset, dropout=cfg.dropout, input_dropout=cfg.input_dropout)
    precision = resolve_precision(cfg.precision, run.device)
    model = prepare_model(model, precision)
    if distributed.is_main():
        print(f"[{run.name}] {role}: precision {precision} (params: {cfg.precision}) on {describe(run.device)}",
              flush=True)
    batches = TensorBatches(x, y, cfg.batch_size, seed, shift=cfg.jitter, flip=cfg.flip,
                            views=views, rank=distributed.rank(), world=distributed.world_size())
    # Keyed on what dvc.yaml says the stage depends on: its params, data and code.
    run.resume = ResumeState(run.name, stage_fingerprint(run.name, p, sys.argv[0]))
    if distributed.is_main():
        run.resume.prune()
    val = load_split("val")
    history = fit(model, batches, val, loss_fn, cfg, device=run.device, precision=precision, resume=run.resume,
                  on_epoch=run.tracking.log_epoch, teacher=teacher)  # log_epoch: a no-op on ranks other than 0
    if not distributed.is_main():
        return  # rank 0 holds the same weights and writes everything
    save_model(model_file(role), model, arch=cfg.arch, dataset=p.data.dataset,
               dropout=cfg.dropout, input_dropout=cfg.input_dropout)
    # Without wall times, so reruns write identical files.
    write_csv(METRICS / "curves" / f"{role}.csv", [{k: v for k, v in h.items() if k != "seconds"} for h in history])
    last = history[-1]
    write_json(METRICS / f"{role}.json", {
        "val_acc": round(last["val_acc"], 6), "val_loss": round(last["val_loss"], 6),
        "train_acc": round(last["train_acc"], 6),
        "epochs": len(history), "train_samples": len(y),
        # Results are bit-identical only on the same kind of CPU/GPU and precision.
        **hardware_info(run.device, precision),
    })
    run.tracking.set_tags(hardware_info(run.device, precision))
    track_model(run, role, model, history, val[0])  # the resume state goes last, in stage()


def track_model(run: StageRun, role: str, model, history: list[dict], val_x) -> None:
    """The trained model in the stage's MLflow run: curves, size, the model itself."""
    tracking = run.tracking
    if not tracking.active:
        return
    from kd.datasets import DATASETS
    from kd.figures import learning_curve
    from kd.model_cost import model_cost

    tracking.log_history(history)
    tracking.log_metrics(model_cost(model, DATASETS[run.params.data.dataset].shape))
    tracking.log_figure(lambda: learning_curve(history, f"{role} ({run.name})"), f"{role}_learning_curve.png")
    tracking.log_artifact(METRICS / "curves" / f"{role}.csv", "curves")
    tracking.log_model(model, role, val_x[:4])
