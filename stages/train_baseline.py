"""Stage train_baseline: the student architecture on true labels only.

Reads neither temperature, alpha nor soft labels, so a sweep over them
never retrains it.
"""
from kd.losses import LOSSES
from kd.splits import keep_classes, load_split
from kd.training import train_model
from kd_runs.stage import stage

with stage("train_baseline", ddp=True) as run:
    p = run.params
    x, y, _ = keep_classes(*load_split("train"), p.omit_classes)
    model, history = train_model(run, "baseline", p.student, (x, y), LOSSES["ce"], seed=p.seed)
    run.track_model("baseline", model, history)
