"""What the stage harness (kd_pipeline.stage) does that decides a stage's outputs, so
that it is every stage's dependency in dvc.yaml: the validated params, the processes
it trains in (relaunching under torchrun), the seeded RNGs, the device; and at the
end, the check that the outputs are for the params.yaml DVC is about to record."""
from __future__ import annotations

import torch

from kd import distributed
from kd.device import pick_device, seed_everything
from kd.dvc_stage import declared_params
from kd.errors import UserError
from kd.params import Params, ParamsError, load_params


class ParamsChangedError(UserError):
    """params.yaml changed while the stage ran."""


def start(name: str, *, ddp: bool) -> Params:
    """The stage's validated params, in the processes it trains with, its RNGs seeded.
    With ddp=True and `distributed.processes > 1` it relaunches the stage under torchrun
    (see kd.distributed) and does not return."""
    params = load_params()
    if distributed.launched() and not ddp:
        raise distributed.LaunchError(f"stage {name} does not run under torchrun; start it with plain python")
    if ddp and params.distributed.processes > 1 and not distributed.launched():
        distributed.relaunch_under_torchrun(params.distributed.processes)  # does not return
    seed_everything(params.seed)
    return params


def stage_device() -> torch.device:
    """This process's device: the GPU if there is one (this rank's under torchrun), else the CPU."""
    return distributed.init(pick_device())


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
