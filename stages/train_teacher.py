"""Stage train_teacher: the teacher on true labels, on every class."""
from kd.losses import LOSSES
from kd.splits import load_split
from kd.training import train_model
from kd_runs.stage import stage

with stage("train_teacher", ddp=True) as run:
    p = run.params
    model, history = train_model(run, "teacher", p.teacher, load_split("train"), LOSSES["ce"], seed=p.teacher.seed)
    run.track_model("teacher", model, history)
