"""What every stage script shares: timing, clear failures and the stage's MLflow
run, around kd.stage_setup (params, processes, seed, device: what decides the
outputs). It records and times what the library computes and is no stage's
dependency: changing it reruns nothing."""
from __future__ import annotations

import json
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from kd import distributed
from kd.device import describe
from kd.dvc_stage import dvc_stage, stage_outputs
from kd.errors import UserError
from kd.files import OutputFileError, remove_stale_tmp, write_json
from kd.params import Params, project_root
from kd.paths import curve_file, metrics_file, model_file, split_file, timing_file
from kd.splits import load_split
from kd.stage_setup import check_params_unchanged, stage_device, start
from kd_pipeline.finished_states import remove_finished_states
from kd_pipeline.parent_watch import Stopped, ignore_further_stops, restore_signals, stop_on_signals, watch_dvc
from kd_pipeline.stage_lock import hold_stage_lock
from kd_pipeline.tracking import Tracker

if TYPE_CHECKING:  # not a runtime import, so not a dep of every stage
    from kd.resume import ResumeState


@dataclass
class StageRun:
    """One run of a stage: kd.train_model.StageContext plus its MLflow run."""
    name: str
    params: Params
    device: torch.device
    tracking: Tracker
    started: float = field(default_factory=time.perf_counter)
    resume: ResumeState | None = None  # removed last, once every output is written

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started

    def on_epoch(self, row: dict) -> None:
        self.tracking.log_epoch(row)  # a no-op on ranks other than 0, which never start tracking

    def track_model(self, role: str, model, history: list[dict]) -> None:
        """The trained model in the stage's MLflow run: curves, the precision and hardware
        it trained on, the model itself."""
        if not self.tracking.active:
            return
        self.tracking.log_history(history)  # MLflow charts the curves from these
        summary = json.loads(metrics_file(role).read_text())
        self.tracking.set_tags({k: v for k, v in summary.items() if isinstance(v, str)})
        self.tracking.log_artifact(curve_file(role), "curves")
        dataset = self.params.data.dataset  # lineage: the splits it learnt from, by DVC md5
        self.tracking.log_data_input(split_file("train"), f"{dataset}-train", "training")
        if summary["val_acc"] is not None:  # data.val_size 0: there is none
            self.tracking.log_data_input(split_file("val"), f"{dataset}-val", "validation")
        self.tracking.log_model(model, role, load_split("train")[0][:4], file=model_file(role))


@contextmanager
def stage(name: str, *, ddp: bool = False):
    """Run a stage; with ddp=True it may train under torchrun (see kd.stage_setup.start)."""
    tag = f"{name} rank {distributed.rank()}" if distributed.launched() else name
    tracking = Tracker(name)
    lock = None
    handlers = stop_on_signals()  # SIGTERM, SIGHUP: end as KILLED below, the resume state kept
    try:
        params = start(name, ddp=ddp)
        if distributed.is_main():  # one MLflow run per stage, not one per rank
            lock = hold_stage_lock(name)  # held until this process ends
            watch_dvc()
            remove_leftovers(name)
            for state in remove_finished_states(name, params):
                print(f"[{name}] removed {state}: DVC holds that stage's outputs for those inputs", flush=True)
            tracking.start(params)  # never raises; a tracking failure only warns
            check_outputs_writable(name)
        run = StageRun(name, params, stage_device(), tracking)
        if distributed.is_main():
            print(f"[{name}] device={describe(run.device)} processes={distributed.world_size()} "
                  f"torch={torch.__version__}", flush=True)
        yield run
        if distributed.is_main():
            check_params_unchanged(name, params)
            # Wall time lives apart from the accuracy metrics, which must be bit-identical across reruns.
            seconds = run.seconds
            write_json(timing_file(name), {"seconds": round(seconds, 1)})
            tracking.end("FINISHED", seconds=seconds)
            # Last: a failure anywhere above reruns from this state, not from scratch.
            if run.resume:
                run.resume.clear()
            print(f"[{name}] finished in {seconds:.1f}s", flush=True)
            if link := tracking.ui_link():
                print(f"[{name}] {link}", flush=True)
    except UserError as e:
        print(f"[{tag}] error: {e}", file=sys.stderr, flush=True)
        tracking.end("FAILED")
        sys.exit(2)
    except Stopped as e:
        ignore_further_stops()
        tracking.end("KILLED")
        print(f"[{tag}] stopped: {e.reason}; the next `dvc repro` resumes after the last finished epoch",
              file=sys.stderr, flush=True)
        sys.exit(128 + e.signum)
    except BaseException as e:
        tracking.end("KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
        raise
    finally:
        distributed.shutdown()
        if lock:
            lock.close()
        restore_signals(handlers)  # a stage run in-process (the tests) leaves the caller's own


def remove_leftovers(name: str) -> None:
    """Temp files of killed processes in .resume/ and beside the stage's outputs."""
    outs = stage_outputs(dvc_stage(name))
    dirs = {project_root() / ".resume", *(p.parent for p in outs), *(p for p in outs if p.is_dir())}
    for d in sorted(d for d in dirs if d.is_dir()):
        for tmp in remove_stale_tmp(d):
            print(f"[{name}] removed {tmp}, left by a killed run", flush=True)



def check_outputs_writable(name: str) -> None:
    """Every folder the stage writes into takes a file, checked before it trains for hours
    rather than at its first write. (Where temp files go: beside each output.)"""
    for folder in sorted({p.parent for p in stage_outputs(dvc_stage(name))}):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as e:
            raise OutputFileError(f"{folder}/: cannot write there ({e.strerror or e}), "
                                  f"where stage {name} writes its outputs") from None
