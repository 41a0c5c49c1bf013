"""Stage train_student: the student on true labels + the teacher's soft labels."""
from functools import partial

from kd.checkpoint import load_model
from kd.declared import select
from kd.device import resolve_precision
from kd.losses import LOSSES
from kd.paths import SOFT_LABELS, model_file, split_file
from kd.soft_labels import live_teacher, load_soft_labels
from kd.stage import keep_classes, load_split, stage, train_model

with stage("train_student", ddp=True) as run:
    p = run.params
    x, y = load_split("train")
    # First, so a missing or stale file fails with a clear message.
    views = load_soft_labels(SOFT_LABELS, teacher=model_file("teacher"), data=split_file("train"), n=len(y),
                             max_shift=p.student.jitter, flip=p.student.flip, mode=p.soft_labels.mode,
                             params=select(p, None))
    x, y, keep = keep_classes(x, y, p.omit_classes)
    loss = partial(LOSSES["kd"], temperature=p.temperature, alpha=p.alpha)
    if views is not None:
        train_model(run, "student", p.student, x, y, loss, seed=p.seed, views=views.subset(keep))
    else:
        teacher, _ = load_model(model_file("teacher"))
        train_model(run, "student", p.student, x, y, loss, seed=p.seed,
                    teacher=live_teacher(teacher, run.device, resolve_precision(p.teacher.precision, run.device)))
