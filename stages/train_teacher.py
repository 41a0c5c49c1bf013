"""Stage train_teacher: the teacher on true labels, on every class; from teacher.init's
weights when it names a file (0 epochs: used as it is)."""
from kd.losses import LOSSES
from kd.params import resolve_input
from kd.paths import NO_INPUT
from kd.splits import load_split
from kd.train_model import train_model
from kd_pipeline.stage import stage

with stage("train_teacher", ddp=True) as run:
    p = run.params
    init = None if p.teacher.init == NO_INPUT else resolve_input(p.teacher.init)
    model, history = train_model(run, "teacher", p.teacher, load_split("train"), LOSSES["ce"], seed=p.teacher.seed,
                                 init=init)
    run.track_model("teacher", model, history)
