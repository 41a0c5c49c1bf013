"""Stage train_baseline: the student architecture on true labels only
(with baseline.label_smoothing, the teacher-free control).

Reads neither temperature, alpha nor soft labels, so a sweep over them
never retrains it.
"""
from functools import partial

from kd.losses import LOSSES
from kd.splits import keep_classes, load_split
from kd.train_model import train_model
from kd_pipeline.stage import stage

with stage("train_baseline", ddp=True) as run:
    p = run.params
    loss = partial(LOSSES["ce"], label_smoothing=p.baseline.label_smoothing)
    x, y, _ = keep_classes(*load_split("train"), p.omit_classes)
    model, history = train_model(run, "baseline", p.student, (x, y), loss, seed=p.seed)
    run.track_model("baseline", model, history)
