"""The one place where params.yaml is defined and validated.

Every stage calls `load_params()` before doing any work, so a bad value fails
fast with a message naming the key, and no output is touched.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from kd.datasets import DATASETS
from kd.models import MODELS

PARAMS_FILE = "params.yaml"


def _one_of(registry: dict, what: str) -> AfterValidator:
    def check(name: str) -> str:
        if name not in registry:
            raise ValueError(f"unknown {what} {name!r}; choose one of {sorted(registry)}")
        return name
    return AfterValidator(check)


# Names looked up in the registries, checked when params are loaded.
DatasetName = Annotated[str, _one_of(DATASETS, "dataset")]
ArchName = Annotated[str, _one_of(MODELS, "arch")]


class ParamsError(ValueError):
    """params.yaml is missing, unreadable or holds a bad value."""


class _Strict(BaseModel):
    # Unknown keys are almost always typos (`temprature: 5`); reject them.
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataParams(_Strict):
    dataset: DatasetName = "mnist"
    # Directory holding the offline mirror (e.g. ../shared/datasets); null means
    # download from the official source. Relative paths are taken from the
    # project root, also for `dvc exp run --queue` runs in .dvc/tmp/exps.
    mirror: str | None = None
    val_size: int = Field(5000, ge=1)
    # Separate from `seed` so a seed sweep trains new models on the same split.
    split_seed: int = Field(0, ge=0)
    # Keep only the first N training images (null = all): for smoke tests.
    max_train: int | None = Field(None, ge=1)



class TrainParams(_Strict):
    arch: ArchName
    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    # step: lr x0.2 at 30/60/80% of training (epochs 60/120/160 of 200, the WRN/Tf-KD recipe).
    schedule: Literal["onecycle", "cosine", "step", "constant"] = "onecycle"
    dropout: float = Field(0.0, ge=0, lt=1)
    input_dropout: float = Field(0.0, ge=0, lt=1)
    # Random translation by up to this many pixels (Hinton's "jitter").
    jitter: int = Field(0, ge=0)
    flip: bool = False
    # auto: bf16 where the hardware computes in bf16 (CUDA with bf16, a CPU with
    # AVX512_BF16 or AMX), fp32 elsewhere; bf16 is emulated, and slower, on AVX2.
    precision: Literal["auto", "fp32", "bf16"] = "auto"


class TeacherParams(TrainParams):
    # Its own seed, apart from the top-level `seed`: a seed sweep then trains new
    # students against one teacher, which DVC's run-cache trains only once.
    seed: int = Field(0, ge=0)


class DistributedParams(_Strict):
    # Processes that train each model together (DDP; one per GPU on a GPU
    # machine). It changes how a model is trained, not what: no stage depends
    # on it, so changing it retrains nothing (results agree to float rounding).
    processes: int = Field(1, ge=1)


class SoftLabelParams(_Strict):
    # A student trained on augmented images must be matched to the teacher's
    # logits for the same augmented image. cached: the teacher labels `views`
    # seed-reproducible augmented views of each image once, and the student
    # draws one of them per sample; live: the teacher runs on every batch.
    mode: Literal["cached", "live"] = "cached"
    views: int = Field(1, ge=1)


class Params(_Strict):
    temperature: float = Field(gt=0)
    alpha: float = Field(ge=0, le=1)
    seed: int = Field(ge=0)
    omit_classes: list[int] = []
    data: DataParams
    teacher: TeacherParams
    student: TrainParams
    soft_labels: SoftLabelParams = SoftLabelParams()
    distributed: DistributedParams = DistributedParams()

    @model_validator(mode="after")
    def _classes_exist(self) -> "Params":
        info = DATASETS[self.data.dataset]
        if self.data.val_size >= info.train_size:
            raise ValueError(f"data.val_size: {self.data.val_size} leaves no training images "
                             f"({self.data.dataset} has {info.train_size})")
        num_classes = info.num_classes
        bad = [c for c in self.omit_classes if not 0 <= c < num_classes]
        if bad:
            raise ValueError(
                f"omit_classes: {bad} not in the {self.data.dataset} classes 0..{num_classes - 1}"
            )
        n = self.distributed.processes
        for role in ("teacher", "student"):
            size = getattr(self, role).batch_size
            if size % n:
                raise ValueError(f"{role}.batch_size: {size} is not a multiple of distributed.processes={n} "
                                 "(each process takes an equal share of every batch)")
        s = self.student
        if self.soft_labels.views > 1 and not (s.jitter or s.flip):
            raise ValueError(
                f"soft_labels.views: {self.soft_labels.views} views are all the same image "
                "when student.jitter is 0 and student.flip is false; use 1"
            )
        if len(set(self.omit_classes)) >= num_classes:
            raise ValueError("omit_classes: omits every class; the student would have no data")
        return self


def project_root(start: Path | None = None) -> Path:
    """The repository the pipeline belongs to.

    `dvc exp run --queue` executes in a copy under <repo>/.dvc/tmp/exps/..., where
    relative paths such as ../shared/datasets must still mean the real repo.
    """
    here = (start or Path.cwd()).resolve()
    parts = here.parts
    for i in range(len(parts) - 2):
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return here


def resolve_mirror(mirror: str | None, root: Path | None = None) -> Path | None:
    if mirror is None:
        return None
    path = Path(os.path.expanduser(mirror))
    return path if path.is_absolute() else project_root(root) / path


def _format(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "params"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key (typo?)"
        lines.append(f"  {key}: {msg}")
    return "\n".join(lines)


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found (run from the project root)") from None
    except yaml.YAMLError as e:
        raise ParamsError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of keys to values")
    try:
        params = Params.model_validate(raw)
    except ValidationError as e:
        raise ParamsError(f"{path} is invalid:\n{_format(e)}") from None
    mirror = resolve_mirror(params.data.mirror, path.resolve().parent)
    if mirror is not None and not mirror.is_dir():
        raise ParamsError(
            f"{path} is invalid:\n  data.mirror: directory {mirror} does not exist "
            "(set data.mirror: null to download from the official source)"
        )
    return params
