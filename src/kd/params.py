"""The one place where params.yaml is defined and validated.

Every stage calls `load_params()` before doing any work, so a bad value fails
fast with a message naming the key, and no output is touched.

params.yaml is read exactly as DVC reads it (`parse_yaml`), so the values that
train are the values DVC hashes, records in dvc.lock and shows in `dvc params diff`.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from kd.datasets import DATASET_NAMES, DATASETS, FOLDER
from kd.errors import UserError
from kd.models import check_arch, input_problem
from kd.paths import NO_INPUT
from kd.yaml_reader import YAMLSyntaxError, parse_yaml

PARAMS_FILE = "params.yaml"


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested params as DVC names them: {"teacher": {"lr": 0.1}} -> {"teacher.lr": 0.1}; lists stay leaves."""
    if not isinstance(obj, dict):
        return {prefix: obj}
    out: dict[str, Any] = {}
    for k, v in obj.items():
        out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _one_of(registry, what: str) -> AfterValidator:
    def check(name: str) -> str:
        if name not in registry:
            raise ValueError(f"unknown {what} {name!r}; choose one of {sorted(registry)}")
        return name
    return AfterValidator(check)


def _arch(name: str) -> str:
    check_arch(name)  # ValueError naming the choices
    return name


# Names looked up in the registries, checked when params are loaded.
DatasetName = Annotated[str, _one_of(DATASET_NAMES, "dataset")]
ArchName = Annotated[str, AfterValidator(_arch)]
# A share of the images: a count (int) or a fraction of each class (float).
Share = Annotated[int, Field(ge=1)] | Annotated[float, Field(gt=0, lt=1)]
# dvc.yaml lists these paths as dependencies, so they must name a file: NO_INPUT when unused.
InputPath = Annotated[str, Field(min_length=1)]


class ParamsError(UserError, ValueError):
    """params.yaml is missing, unreadable or holds a bad value."""


class _Strict(BaseModel):
    # Unknown keys are almost always typos (`temprature: 5`); reject them.
    # strict: no silent coercion (`temperature: true` is not 1.0, `omit_classes: ["3"]`
    # is not [3]); an int is still a float (`lr: 1`). No NaN or inf in any float.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


# Seeds fit in 32 bits, as numpy's do; the batch order is seeded with
# seed * 100_003 + epoch (kd.loop), which must fit torch's 64-bit seed.
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]


class DataParams(_Strict):
    dataset: DatasetName = "mnist"
    # Directory holding the offline mirror (e.g. ../shared/datasets), used when it
    # exists; when it does not, `prepare` says so and downloads from the official
    # source (kd.datasets), so one default works with or without a mirror. null:
    # always download. Relative paths are taken from the project root, also for
    # `dvc exp run --queue` runs in .dvc/tmp/exps.
    mirror: str | None = None
    # dataset: folder: the image folder, <path>/<class>/<image> (or train/ val/ test/ inside).
    path: InputPath = NO_INPUT
    # dataset: folder: images are resized to this square once, in prepare.
    image_size: int | None = Field(None, ge=8, le=1024)
    # 0 (mnist, cifar10): no validation split, every training image trains; for final
    # models whose settings were chosen on a run with a validation split (Hinton et al.).
    val_size: Annotated[int, Field(ge=0)] | Annotated[float, Field(gt=0, lt=1)] = 5000
    # dataset: folder without a test/ folder: the test share, carved like val_size.
    test_size: Share = 0.2
    # Separate from `seed` so a seed sweep trains new models on the same split.
    split_seed: Seed = 0
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
    # Max-norm (Srivastava et al. 2014): after every step, each hidden unit's incoming weight
    # vector is scaled back onto the L2 ball of this radius (null: no constraint).
    max_norm: float | None = Field(None, gt=0)
    # auto: bf16 where the hardware computes in bf16 (CUDA with bf16, a CPU with
    # AVX512_BF16 or AMX), fp32 elsewhere; bf16 is emulated, and slower, on AVX2.
    precision: Literal["auto", "fp32", "bf16"] = "auto"


class TeacherParams(TrainParams):
    # Its own seed, apart from the top-level `seed`: a seed sweep then trains new
    # students against one teacher, which DVC's run-cache trains only once.
    seed: Seed = 0
    # A weights file (state dict) to start from; 0 epochs uses it as it is.
    init: InputPath = NO_INPUT
    epochs: int = Field(ge=0)


class BaselineParams(_Strict):
    # The true-label student trains with `student`'s params; this is its control knob:
    # label smoothing ε mixes uniform targets into the labels (0 = plain cross-entropy).
    # Only train_baseline reads it, so a smoothing run reuses the distilled student.
    label_smoothing: float = Field(0.0, ge=0, lt=1)


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


class KDParams(_Strict):
    # Hinton's loss; its weight and temperature are the top-level `alpha` and `temperature`.
    logit_std: bool = False  # Sun et al. (2024): z-score each sample's logits before softening


class DKDParams(_Strict):
    # Zhao et al. (2022), their CIFAR-100 defaults. `alpha` and `beta` weigh the target-class
    # (TCKD) and non-target (NCKD) terms; `ce` the true labels.
    alpha: float = Field(1.0, ge=0, le=100)
    beta: float = Field(8.0, ge=0, le=100)
    ce: float = Field(1.0, ge=0, le=100)
    # The DKD term ramps up linearly over this share of the epochs (the paper: 20 of 240).
    warmup: float = Field(0.0833, ge=0, le=1)
    logit_std: bool = False


class DISTParams(_Strict):
    # Huang et al. (2022), their defaults: inter-class (`beta`) and intra-class (`gamma`)
    # relation weights, `ce` the true labels.
    beta: float = Field(1.0, ge=0, le=100)
    gamma: float = Field(1.0, ge=0, le=100)
    ce: float = Field(1.0, ge=0, le=100)


class MethodParams(_Strict):
    # How the student learns from the teacher's cached logits. Each method keeps its own
    # section; train_student depends on `method.name` and the chosen section only
    # (dvc.yaml: method.${method.name}), so tuning one method never retrains another.
    name: Literal["kd", "dkd", "dist"] = "kd"
    kd: KDParams = KDParams()
    dkd: DKDParams = DKDParams()
    dist: DISTParams = DISTParams()

    def options(self) -> dict:
        """The chosen method's params, as its loss takes them."""
        return getattr(self, self.name).model_dump()

    def ignored(self) -> list[str]:
        """The sections of methods not chosen that differ from their defaults: validated,
        then ignored (a sweep may leave them set), but never silently."""
        return [f"method.{n} ({', '.join(f'{k}={v}' for k, v in section.model_dump().items())}) is ignored: "
                f"method.name is {self.name}"
                for n in ("kd", "dkd", "dist")
                if n != self.name and (section := getattr(self, n)) != type(section)()]


class Params(_Strict):
    # Far beyond the useful range (Hinton et al. use 1-20), yet small enough that
    # the loss stays finite and meaningful in float32: logits / T and T² stay far
    # from float32's overflow at 3e38 (T = 1e-300 turned the logits into inf), and
    # at T <= 1000 the soft targets, 1/C + (logit gap)/(C·T), still differ from
    # uniform by far more than float32's relative precision of 1e-7.
    temperature: float = Field(ge=0.01, le=1000)
    alpha: float = Field(ge=0, le=1)
    seed: Seed
    omit_classes: list[int] = []
    data: DataParams
    teacher: TeacherParams
    student: TrainParams
    baseline: BaselineParams = BaselineParams()
    soft_labels: SoftLabelParams = SoftLabelParams()
    method: MethodParams = MethodParams()
    distributed: DistributedParams = DistributedParams()

    @model_validator(mode="after")
    def _classes_exist(self) -> "Params":
        if self.teacher.epochs == 0 and self.teacher.init == NO_INPUT:
            raise ValueError("teacher.epochs: 0 uses the teacher as teacher.init gives it, but teacher.init "
                             f"is {NO_INPUT} (none): name a weights file, or train for some epochs")
        d = self.data
        if d.mirror == "":  # ambiguous: null (download) or the project root? Say which.
            raise ValueError("data.mirror: '' names no directory; write null to always download, "
                             "or the directory holding the mirror")
        if dup := sorted({c for c in self.omit_classes if self.omit_classes.count(c) > 1}):
            # Not deduplicated silently: DVC records the list as written, so [3, 3] and [3]
            # would be two experiments with one result.
            raise ValueError(f"omit_classes: {self.omit_classes} lists class {', '.join(map(str, dup))} "
                             "more than once; list each class once")
        if d.dataset == FOLDER:
            if d.image_size is None:
                raise ValueError("data.image_size: required for a folder dataset (images are resized to it), "
                                 "e.g. 32, 64, 96, 128 or 224")
            if d.val_size == 0:
                raise ValueError("data.val_size: 0 is for mnist and cifar10; a folder dataset keeps a "
                                 "validation split (a count of images or a fraction)")
            num_classes, shape = _folder_classes(d.path), (3, d.image_size, d.image_size)
        else:
            info = DATASETS[d.dataset]
            if d.image_size is not None and (d.image_size,) * 2 != info.shape[1:]:
                raise ValueError(f"data.image_size: {d.image_size}, but {d.dataset} images are "
                                 f"{info.shape[1]}x{info.shape[2]} and only folder datasets are resized; use null")
            if d.val_size == 0 and self.omit_classes:
                raise ValueError("data.val_size: 0 leaves no validation split, and with omit_classes "
                                 "the evaluation fits its bias fix on it; keep a validation split")
            if not isinstance(d.val_size, int):
                raise ValueError(f"data.val_size: {d.val_size} is a fraction; {d.dataset} takes a count of images")
            if d.val_size >= info.train_size:
                raise ValueError(f"data.val_size: {d.val_size} leaves no training images "
                                 f"({d.dataset} has {info.train_size})")
            num_classes, shape = info.num_classes, info.shape
            for role in ("teacher", "student"):  # a folder's size is known only once prepared
                size, images = getattr(self, role).batch_size, info.train_size - d.val_size
                if size > images:  # every batch would be the whole set: almost surely a typo
                    raise ValueError(f"{role}.batch_size: {size} is more than the {images} training images "
                                     f"of {d.dataset}; at most {images}")
        for role in ("teacher", "student"):
            arch = getattr(self, role).arch
            if problem := input_problem(arch, shape, num_classes):
                raise ValueError(f"{role}.arch: {arch} cannot take {shape[1]}x{shape[2]} images "
                                 f"({problem}); choose a larger data.image_size or another arch")
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
        side = min(shape[1:])
        for role in ("teacher", "student"):
            jitter = getattr(self, role).jitter
            if jitter >= side:  # and a huge one pads every batch out of memory
                raise ValueError(f"{role}.jitter: {jitter} shifts the {side}x{side} {d.dataset} images "
                                 f"out of the frame; use less than {side}")
        s = self.student
        if self.soft_labels.views > 1 and not (s.jitter or s.flip):
            raise ValueError(
                f"soft_labels.views: {self.soft_labels.views} views are all the same image "
                "when student.jitter is 0 and student.flip is false; use 1"
            )
        if len(set(self.omit_classes)) >= num_classes:
            raise ValueError("omit_classes: omits every class; the student would have no data")
        return self


# Far beyond any recipe (200-240 epochs for CIFAR), yet not wrong: a long run is
# resumable epoch by epoch, so check_params only says so in one line.
MANY_EPOCHS = 1000


def unusual(params: Params) -> list[str]:
    """One-line notes on values that are allowed but far outside anything usual."""
    return [f"{role}.epochs: {getattr(params, role).epochs} is far beyond the usual (at most a few hundred); "
            "training runs them all" for role in ("teacher", "student") if getattr(params, role).epochs > MANY_EPOCHS]


def _folder_classes(path: str) -> int:
    from kd.image_folder import ImageFolderError, class_names

    try:
        return len(class_names(resolve_input(path)))
    except ImageFolderError as e:
        raise ValueError(str(e)) from None


def resolve_input(path: str) -> Path:
    """data.path / teacher.init, as dvc.yaml's deps read them: relative to the stage's
    working directory (in a `dvc exp run --queue` copy, the copy's own files)."""
    return Path(os.path.expanduser(path))


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


def _keys(model: type[BaseModel], prefix: str = "") -> set[str]:
    out = set()
    for name, field in model.model_fields.items():
        out.add(prefix + name)
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            out |= _keys(field.annotation, f"{prefix}{name}.")
    return out


_KEYS = _keys(Params)  # every dotted key of params.yaml


def _spelled(value: Any) -> str:
    """A value as YAML spells it, for error messages."""
    if isinstance(value, float) and not math.isfinite(value):
        return ".nan" if math.isnan(value) else ("-.inf" if value < 0 else ".inf")
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def _format(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "params"
        msg = e["msg"].removeprefix("Value error, ")
        if not e["loc"] and msg.split(":")[0] in _KEYS:  # a cross-key check that names its key
            key, msg = msg.split(": ", 1)
        if e["type"] == "extra_forbidden":
            msg = "unknown key (typo?)"
        elif e["type"].endswith("_type") or e["type"] == "finite_number":
            msg += f", got {_spelled(e['input'])}"
            if e["type"] == "bool_type" and str(e["input"]).lower() in ("yes", "no", "on", "off", "y", "n"):
                msg += " (a string in YAML 1.2, as DVC reads it: write true or false)"
        lines.append(f"  {key}: {msg}")
    return "\n".join(lines)


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    path = Path(path)
    try:
        raw = parse_yaml(path.read_text(encoding="utf-8"))  # DVC reads it as UTF-8 too
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found (run from the project root)") from None
    except (YAMLSyntaxError, UnicodeDecodeError) as e:
        raise ParamsError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of keys to values")
    try:
        params = Params.model_validate(raw)
    except ValidationError as e:
        raise ParamsError(f"{path} is invalid:\n{_format(e)}") from None
    # No check that data.mirror exists: a missing mirror means "download" (kd.datasets).
    return params


def check_training_set(params: Params, role: str, n: int) -> None:
    """What the schema cannot see: how many images `role` is left to train on
    once data.max_train and omit_classes have been applied. Checked before
    training, which would otherwise fail with a scheduler's ValueError (no
    batches) or give some distributed process an empty batch."""
    procs = params.distributed.processes
    if n == 0:
        raise ParamsError(
            f"{PARAMS_FILE} is invalid:\n  omit_classes: {params.omit_classes} leaves the {role} no training "
            f"images: data.max_train: {_spelled(params.data.max_train)} keeps only images of those classes; "
            "omit fewer classes or raise data.max_train")
    if n < procs:
        raise ParamsError(
            f"{PARAMS_FILE} is invalid:\n  distributed.processes: {procs} processes for the {role}'s {n} training "
            f"image(s) (data.max_train: {_spelled(params.data.max_train)}, omit_classes: {params.omit_classes}); "
            "each process needs at least one")
