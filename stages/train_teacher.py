"""Stage train_teacher: the teacher on true labels, on every class."""
from kd.losses import LOSSES
from kd.stage import load_split, stage, train_model

with stage("train_teacher", ddp=True) as run:
    x, y = load_split("train")
    train_model(run, "teacher", run.params.teacher, x, y, LOSSES["ce"], seed=run.params.teacher.seed)
