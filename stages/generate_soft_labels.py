"""Stage generate_soft_labels: teacher logits for every training image, once."""
import _bootstrap  # noqa: F401

from kd.checkpoint import load_model
from kd.evaluate import predict
from kd.paths import SOFT_LABELS, model_file, split_file
from kd.soft_labels import save_soft_labels
from kd.stage import load_split, stage

with stage("generate_soft_labels") as run:
    teacher, _ = load_model(model_file("teacher"))
    x, _ = load_split("train")
    logits = predict(teacher.to(run.device), x, device=run.device)
    save_soft_labels(SOFT_LABELS, logits, teacher=model_file("teacher"), data=split_file("train"))
    print(f"{len(logits)} teacher logits -> {SOFT_LABELS}")
