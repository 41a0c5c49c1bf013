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
from kd.device import pick_device, seed_everything
from kd.files import InputFileError, file_md5, load_torch, write_csv, write_json
from kd.params import Params, ParamsError, load_params
from kd.paths import METRICS, model_file, split_file
from kd.resume import ResumeState, resume_key
from kd.soft_labels import StaleSoftLabelsError
from kd_runs.tracking import Tracker
from kd.train import DivergedError, TensorBatches, fit

# Errors a user can fix; anything else is a bug and keeps its traceback.
USER_ERRORS = (ParamsError, DataError, DivergedError, StaleSoftLabelsError, InputFileError,
               distributed.LaunchError)


@dataclass
class StageRun:
    name: str
    params: Params
    device: torch.device
    tracking: Tracker
    started: float = field(default_factory=time.perf_counter)

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
            tracking.start(params)  # never raises; a tracking failure only warns
        run = StageRun(name, params, distributed.init(pick_device()), tracking)
        if distributed.is_main():
            print(f"[{name}] device={run.device.type} processes={distributed.world_size()} "
                  f"torch={torch.__version__}", flush=True)
        yield run
    except USER_ERRORS as e:
        print(f"[{tag}] error: {e}", file=sys.stderr, flush=True)
        tracking.end("FAILED")
        sys.exit(2)
    except BaseException as e:
        tracking.end("KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
        raise
    finally:
        distributed.shutdown()
    if distributed.is_main():
        # Wall time lives apart from the accuracy metrics, which must be bit-identical across reruns.
        seconds = run.seconds
        write_json(METRICS / "timing" / f"{name}.json", {"seconds": round(seconds, 1)})
        tracking.end("FINISHED", seconds=seconds)
        print(f"[{name}] finished in {seconds:.1f}s", flush=True)


def load_split(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    blob = load_torch(split_file(split))
    return blob["x"], blob["y"]


def keep_classes(x, y, omit: list[int]):
    """Drop the omitted classes (the student's transfer set); also returns the mask."""
    keep = ~torch.isin(y, torch.tensor(omit, dtype=y.dtype))
    return x[keep], y[keep], keep


def train_model(run: StageRun, role: str, cfg, x, y, loss_fn, *, seed: int, extras=None, config=None,
                views=None, teacher=None) -> None:
    """Train one model of the pipeline and write its checkpoint, curve and metrics."""
    p = run.params
    seed_everything(seed)  # the model's init
    model = new_model(cfg.arch, p.data.dataset, dropout=cfg.dropout, input_dropout=cfg.input_dropout)
    if cfg.amp:
        model = model.to(memory_format=torch.channels_last)
    batches = TensorBatches(x, y, cfg.batch_size, seed, shift=cfg.jitter, flip=cfg.flip, extras=extras or {},
                            views=views, rank=distributed.rank(), world=distributed.world_size())
    key = resume_key(run.name, {"cfg": cfg.model_dump(), "seed": seed, **(config or {})},
                     {"train": file_md5(split_file("train"))})
    resume = ResumeState(run.name, key)
    val = load_split("val")
    history = fit(model, batches, val, loss_fn, cfg, device=run.device, amp=cfg.amp, resume=resume,
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
    })
    resume.clear()
    track_model(run, role, model, history, val[0])


def track_model(run: StageRun, role: str, model, history: list[dict], val_x) -> None:
    """The trained model in the stage's MLflow run: curves, size, the model itself."""
    tracking = run.tracking
    if not tracking.active:
        return
    from kd.datasets import DATASETS
    from kd.model_cost import model_cost

    tracking.log_history(history)  # MLflow charts the curves from these
    tracking.log_metrics(model_cost(model, DATASETS[run.params.data.dataset].shape))
    tracking.log_artifact(METRICS / "curves" / f"{role}.csv", "curves")
    dataset = run.params.data.dataset
    tracking.log_data_input(split_file("train"), f"{dataset}-train", "training")
    tracking.log_data_input(split_file("val"), f"{dataset}-val", "validation")
    tracking.log_model(model, role, val_x[:4], file=model_file(role))
