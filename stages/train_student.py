"""Stage train_student: the student on true labels + the teacher's soft labels."""
import _bootstrap  # noqa: F401

from functools import partial

from kd.checkpoint import load_model
from kd.files import file_md5
from kd.losses import LOSSES
from kd.paths import SOFT_LABELS, model_file, split_file
from kd.soft_labels import live_teacher, load_soft_labels
from kd.stage import keep_classes, load_split, stage, train_model

with stage("train_student", ddp=True) as run:
    p = run.params
    x, y = load_split("train")
    # First, so a missing or stale file fails with a clear message.
    views = load_soft_labels(SOFT_LABELS, teacher=model_file("teacher"), data=split_file("train"), n=len(y),
                             max_shift=p.student.jitter, flip=p.student.flip, mode=p.soft_labels.mode)
    x, y, keep = keep_classes(x, y, p.omit_classes)
    # Lineage in MLflow: which teacher's soft labels (train and val splits: train_model).
    run.tracking.log_data_input(SOFT_LABELS, f"{p.data.dataset}-soft-labels", "training",
                                tags={"teacher_md5": file_md5(model_file("teacher")), "mode": p.soft_labels.mode})
    run.tracking.log_model_input(model_file("teacher"))
    loss = partial(LOSSES["kd"], temperature=p.temperature, alpha=p.alpha)
    config = {"omit": p.omit_classes, "T": p.temperature, "alpha": p.alpha, "soft_labels": file_md5(SOFT_LABELS)}
    if views is not None:
        train_model(run, "student", p.student, x, y, loss, seed=p.seed, views=views.subset(keep), config=config)
    else:
        teacher, _ = load_model(model_file("teacher"))
        train_model(run, "student", p.student, x, y, loss, seed=p.seed, config=config,
                    teacher=live_teacher(teacher, run.device, p.teacher.amp))
