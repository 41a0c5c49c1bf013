"""The numbers we report about a model, from its logits."""
from __future__ import annotations

import math

import torch


def _rate(hits: torch.Tensor) -> float:
    # Exact counts, rounded for readable metrics files (no float32 noise).
    return round(int(hits.sum()) / len(hits), 6)


def summarize(logits: torch.Tensor, y: torch.Tensor, num_classes: int, omitted: list[int] = ()) -> dict:
    right = logits.argmax(1) == y
    out = {
        "accuracy": _rate(right),
        "errors": int((~right).sum()),
    }
    if omitted:
        mask = torch.isin(y, torch.tensor(list(omitted)))
        out["omitted_accuracy"] = _rate(right[mask])
    return out


def _mean(values: torch.Tensor) -> float:
    # fsum is exact, so the mean cannot depend on thread count or summation order.
    return math.fsum(values.tolist()) / len(values)


def expected_calibration_error(logits: torch.Tensor, y: torch.Tensor, bins: int = 15) -> float:
    """ECE of softmax(logits) at T=1 (Guo et al. 2017): |accuracy - mean confidence| in each
    of `bins` equal-width confidence bins, weighted by the share of images in the bin."""
    conf = logits.double().softmax(1).max(1).values
    pred = logits.argmax(1)  # the prediction `accuracy` counts, ties included
    # Guo et al.'s bins are ((m-1)/M, m/M]; confidence is at least 1/classes, never 0.
    bin_of = (conf * bins).ceil().long().clamp_(1, bins) - 1
    gap = (pred == y).double() - conf
    # Per bin |sum of (correct - confidence)| / n is |acc - conf| weighted by bin size / n.
    total = math.fsum(abs(math.fsum(gap[bin_of == m].tolist())) for m in range(bins))
    return round(total / len(y), 6)


def fidelity(model_logits: torch.Tensor, teacher_logits: torch.Tensor) -> dict:
    """How closely a model follows the teacher: top-1 agreement, and mean KL(p_teacher || p_model)
    in nats at temperature 1."""
    if model_logits.shape != teacher_logits.shape:
        raise ValueError(f"logits of shape {tuple(model_logits.shape)} vs. the teacher's {tuple(teacher_logits.shape)}")
    log_t = teacher_logits.double().log_softmax(1)
    log_m = model_logits.double().log_softmax(1)
    # log_softmax stays finite where a probability underflows, so 0 * log 0 never turns into NaN.
    kl = (log_t.exp() * (log_t - log_m)).sum(1)
    return {
        "agreement": _rate(model_logits.argmax(1) == teacher_logits.argmax(1)),
        # KL >= 0: float noise must not write -0.0 (max keeps its first argument on a tie).
        "kl_from_teacher": max(0.0, round(_mean(kl), 6)),
    }


def _class_mask(num_classes: int, classes) -> torch.Tensor:
    mask = torch.zeros(num_classes, dtype=torch.bool)
    mask[sorted({int(c) for c in classes})] = True
    return mask


def apply_class_bias(logits: torch.Tensor, classes, bias: float) -> torch.Tensor:
    """The logits (as float64) with `bias` added to those of `classes`."""
    # float64, so predictions flip exactly at the thresholds fit_class_bias computed in float64.
    out = logits.double().clone()
    out[:, _class_mask(logits.shape[1], classes)] += bias
    return out


def fit_class_bias(logits: torch.Tensor, y: torch.Tensor, classes) -> float:
    """The one bias b, added to the logits of `classes`, with the highest accuracy on (logits, y).

    For the classes a student never saw in training (Hinton et al. 2015 raise the bias of the
    omitted 3). Exact, not a grid: an image's prediction moves to its best omitted class once
    b exceeds (its best other logit - its best omitted logit), so accuracy is a step function of
    b that changes only at those thresholds. Each open interval between thresholds is a candidate,
    and so is b = 0 itself. Best accuracy wins; ties go to the candidate nearest 0. The answer is 0
    if 0 is in the winning interval, otherwise its midpoint (outermost threshold -/+ 1 for the two
    unbounded ends, where any b does the same).

    Fit it on validation data: it only ever sees the logits it is given.
    """
    if len(y) == 0 or not classes:
        return 0.0
    omit = _class_mask(logits.shape[1], classes)
    if omit.all():
        return 0.0  # a common shift of every logit changes no prediction
    lg = logits.double()
    om_idx, keep_idx = omit.nonzero().squeeze(1), (~omit).nonzero().squeeze(1)
    om_best, keep_best = lg[:, om_idx].max(1).values, lg[:, keep_idx].max(1).values
    right_above = (om_idx[lg[:, om_idx].argmax(1)] == y).long()      # b above the image's threshold
    right_below = (keep_idx[lg[:, keep_idx].argmax(1)] == y).long()  # b below it
    thresholds, group = torch.unique(keep_best - om_best, sorted=True, return_inverse=True)
    gain = torch.zeros(len(thresholds), dtype=torch.long).index_add_(0, group, right_above - right_below)
    accs = (int(right_below.sum()) + torch.cat([torch.zeros(1, dtype=torch.long), gain.cumsum(0)])).tolist()
    edges = [-math.inf, *thresholds.tolist(), math.inf]

    # (hits, distance of the interval from 0, b): max hits, then min distance.
    candidates = [(int((lg.argmax(1) == y).sum()), 0.0, 0.0)]  # b = 0 exactly, argmax's tie rule included
    for hits, lo, hi in zip(accs, edges[:-1], edges[1:]):
        if lo < 0 < hi:
            candidates.append((hits, 0.0, 0.0))
            continue
        distance = lo if lo >= 0 else -hi
        b = hi - 1 if lo == -math.inf else lo + 1 if hi == math.inf else (lo + hi) / 2
        candidates.append((hits, distance, b))
    _, _, best = min(candidates, key=lambda c: (-c[0], c[1], abs(c[2]), c[2]))
    return float(best)


def corrected_summary(logits: torch.Tensor, y: torch.Tensor, val_logits: torch.Tensor, val_y: torch.Tensor,
                      num_classes: int, omitted) -> dict:
    """Test numbers after the bias on the omitted classes that is best on the validation set."""
    bias = fit_class_bias(val_logits, val_y, omitted)
    # The exact bias, not the rounded one in the file: an interval between two val thresholds
    # can be narrower than 1e-4, and rounding must not move b out of it.
    fixed = summarize(apply_class_bias(logits, omitted, bias), y, num_classes, omitted)
    return {"bias": round(bias, 4), "accuracy": fixed["accuracy"], "errors": fixed["errors"],
            "omitted_accuracy": fixed["omitted_accuracy"]}


def report(logits: torch.Tensor, y: torch.Tensor, num_classes: int, omitted=(), *,
           teacher_logits: torch.Tensor | None = None, val: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict:
    """What evaluate.json holds about one model on the test set: with teacher_logits also its
    fidelity to the teacher, and with omitted classes and val = (val_logits, val_y) also the
    bias-corrected numbers. (Per-class errors and the confusion matrix are plot files:
    per_class_errors, confusion_rows.)"""
    out = summarize(logits, y, num_classes, omitted)
    out["ece"] = expected_calibration_error(logits, y)
    if teacher_logits is not None:
        out.update(fidelity(logits, teacher_logits))
    if omitted and val is not None:
        out["corrected"] = corrected_summary(logits, y, *val, num_classes, omitted)
    return out


def per_class_errors(logits: torch.Tensor, y: torch.Tensor, classes) -> list[dict]:
    """Per class with test images: its misclassified images and its images. Error counts, not
    accuracy: at ~99% every class's accuracy bar looks the same, while 7 errors against 15
    shows at a glance (and across runs, in `dvc plots diff`)."""
    wrong = logits.argmax(1) != y
    return [{"class": classes[c], "errors": int(wrong[y == c].sum()), "images": int((y == c).sum())}
            for c in range(len(classes)) if (y == c).any()]


def confusion_rows(logits: torch.Tensor, y: torch.Tensor, classes) -> list[dict]:
    """The off-diagonal of the confusion matrix: one row per misclassified test image, sorted
    by (actual, predicted) class index, in the format of DVC's `confusion` template (which
    counts rows). The diagonal, ~99% of the images, would set a linear colour scale on
    which no error shows; here the scale runs over the errors alone, and an error-free
    model writes no rows."""
    pred = logits.argmax(1)
    wrong = pred != y
    pairs = sorted(zip(y[wrong].tolist(), pred[wrong].tolist()))
    return [{"actual": classes[a], "predicted": classes[p]} for a, p in pairs]


def reliability_rows(logits: torch.Tensor, y: torch.Tensor, bins: int = 15) -> list[dict]:
    """The reliability diagram of the top-1 prediction: for each non-empty one of `bins`
    equal-width confidence bins, the mean confidence and the accuracy of its images
    (scikit-learn's calibration_curve; the same bins as `ece`, up to which side of a bin
    edge is closed)."""
    from sklearn.calibration import calibration_curve

    conf = logits.double().softmax(1).max(1).values.numpy()
    right = (logits.argmax(1) == y).numpy()
    accuracy, confidence = calibration_curve(right, conf, n_bins=bins, strategy="uniform", pos_label=True)
    return [{"confidence": round(float(c), 6), "accuracy": round(float(a), 6)}
            for c, a in zip(confidence, accuracy)]
