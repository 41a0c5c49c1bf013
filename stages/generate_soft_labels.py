"""Stage generate_soft_labels: teacher logits for every training image, once.

cached mode: for each image, soft_labels.views augmented views drawn with the
student's augmentation (jitter, flip) from `seed`; live mode: nothing to
precompute, the file only records the mode.
"""
from kd.checkpoint import load_model
from kd.dvc_stage import declared_params
from kd.device import describe, prepare_model, resolve_precision
from kd.paths import SOFT_LABELS, model_file, split_file
from kd.soft_labels import ViewCache, save_soft_labels, teacher_view_logits, view_shifts
from kd.splits import load_split
from kd_pipeline.stage import stage

with stage("generate_soft_labels") as run:
    p = run.params
    s, mode = p.student, p.soft_labels.mode
    run.tracking.log_data_input(split_file("train"), f"{p.data.dataset}-train", "training")
    run.tracking.log_model_input(model_file("teacher"))
    cache = None
    if mode == "cached":
        teacher, _ = load_model(model_file("teacher"))
        x, _ = load_split("train")
        shifts = view_shifts(len(x), p.soft_labels.views, s.jitter, s.flip, p.seed)
        precision = resolve_precision(p.teacher.precision, run.device)
        print(f"teacher inference in {precision} (params: {p.teacher.precision}) on {describe(run.device)}")
        logits = teacher_view_logits(prepare_model(teacher).to(run.device), x, shifts, p.soft_labels.views,
                                     device=run.device, precision=precision)
        cache = ViewCache(shifts, s.jitter, s.flip, logits)
        print(f"{logits.shape[0]} views x {logits.shape[1]} images of teacher logits -> {SOFT_LABELS}")
    # With every param the views depend on (those dvc.yaml lists), so train_student run
    # on other ones refuses the file rather than train on mismatched views.
    save_soft_labels(SOFT_LABELS, cache, teacher=model_file("teacher"), data=split_file("train"), mode=mode,
                     made_with=declared_params("generate_soft_labels", p))
