"""Stage train_student: the student on true labels + the teacher's soft labels."""
from functools import partial

from kd.dvc_stage import select
from kd.device import resolve_precision
from kd.files import file_md5
from kd.losses import LOSSES
from kd.paths import SOFT_LABELS, model_file, split_file
from kd.soft_labels import teacher_signal
from kd.splits import keep_classes, load_split
from kd.train_model import train_model
from kd_pipeline.stage import stage

with stage("train_student", ddp=True) as run:
    p = run.params
    x, y = load_split("train")
    # First, so a missing or stale soft-label file fails with a clear message.
    teacher = teacher_signal(SOFT_LABELS, teacher=model_file("teacher"), data=split_file("train"), n=len(y),
                             params=select(p, None), device=run.device,
                             precision=resolve_precision(p.teacher.precision, run.device))
    x, y, keep = keep_classes(x, y, p.omit_classes)
    # Lineage in MLflow: which teacher's soft labels (train and val splits: train_model).
    run.tracking.log_data_input(SOFT_LABELS, f"{p.data.dataset}-soft-labels", "training",
                                tags={"teacher_md5": file_md5(model_file("teacher")), "mode": p.soft_labels.mode})
    run.tracking.log_model_input(model_file("teacher"))
    kd_alpha = {"alpha": p.alpha} if p.method.name == "kd" else {}  # dkd and dist carry their own weights
    loss = partial(LOSSES[p.method.name], temperature=p.temperature, **kd_alpha, **p.method.options())
    model, history = train_model(run, "student", p.student, (x, y), loss, seed=p.seed, teacher=teacher.subset(keep))
    run.track_model("student", model, history)
