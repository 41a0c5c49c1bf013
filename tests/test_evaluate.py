"""The evaluate stage's numbers: calibration, fidelity to the teacher, omitted-class bias."""
import builtins
import inspect
import io
import json
import math
import os

import pytest
import torch

from kd.evaluate import (apply_class_bias, confusion_rows, expected_calibration_error, fidelity, fit_class_bias,
                         per_class_errors, report)


def two_class_logits(p_first):
    """Logits whose softmax is (p, 1 - p) for each p."""
    p = torch.tensor(p_first, dtype=torch.float64)
    return torch.stack([p.log(), (1 - p).log()], 1)


def accuracy(logits, y):
    return (logits.argmax(1) == y).double().mean().item()


# --- calibration -------------------------------------------------------------

def test_ece_is_zero_when_confidence_matches_accuracy():
    # Sure and right.
    sure = torch.tensor([[100.0, 0, 0], [0, 100.0, 0], [0, 0, 100.0]])
    assert expected_calibration_error(sure, torch.tensor([0, 1, 2])) == 0
    # 90% sure and right 9 times in 10; 70% sure and right 7 times in 10 (separate bins).
    logits = two_class_logits([0.9] * 10 + [0.7] * 10)
    y = torch.tensor([0] * 9 + [1] + [0] * 7 + [1] * 3)
    assert expected_calibration_error(logits, y) == 0


def test_ece_matches_a_hand_computed_value():
    # Bin (13/15, 14/15]: conf 0.9 twice, one right -> |0.5 - 0.9| = 0.4, weight 2/4.
    # Bin (10/15, 11/15]: conf 0.7 and 0.72, both right -> |1 - 0.71| = 0.29, weight 2/4.
    logits = two_class_logits([0.9, 0.9, 0.7, 0.72])
    y = torch.tensor([0, 1, 0, 0])
    assert expected_calibration_error(logits, y) == pytest.approx(0.5 * 0.4 + 0.5 * 0.29, abs=1e-6)
    # One bin: |3/4 - mean confidence 0.805|, so the binning is really used above.
    assert expected_calibration_error(logits, y, bins=1) == pytest.approx(0.055, abs=1e-6)


def test_ece_uses_the_top_class_confidence_and_is_rounded():
    # Confidence 0.5 (the top of three), always wrong: ECE is 0.5.
    p = torch.tensor([[0.5, 0.3, 0.2], [0.2, 0.5, 0.3]])
    assert expected_calibration_error(p.log(), torch.tensor([1, 2])) == pytest.approx(0.5, abs=1e-6)
    ece = expected_calibration_error(torch.randn(50, 10, generator=torch.Generator().manual_seed(0)),
                                     torch.arange(50) % 10)
    assert 0 <= ece <= 1 and ece == round(ece, 6)


# --- fidelity ------------------------------------------------------------------

def test_fidelity_of_a_model_with_the_teachers_logits_is_perfect():
    t = torch.randn(20, 10, generator=torch.Generator().manual_seed(1))
    f = fidelity(t.clone(), t)
    assert f == {"agreement": 1.0, "kl_from_teacher": 0.0}
    assert not math.copysign(1, f["kl_from_teacher"]) < 0  # no -0.0 in the metrics file


def test_fidelity_matches_hand_computed_values():
    teacher = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    model = torch.tensor([[math.log(3), 0.0], [0.0, 2.0]])
    f = fidelity(model, teacher)
    # Image 1: p_t = (1/2, 1/2), p_m = (3/4, 1/4): KL = ln(4/3) / 2; both top-1 are class 0.
    # Image 2: p_t = (s, 1-s), p_m = (1-s, s), s = sigmoid(2): KL = (2s - 1) * 2 = 2 tanh(1); top-1 differs.
    assert f["agreement"] == 0.5
    assert f["kl_from_teacher"] == pytest.approx((math.log(4 / 3) / 2 + 2 * math.tanh(1)) / 2, abs=1e-6)
    with pytest.raises(ValueError, match="shape"):
        fidelity(model[:1], teacher)


# --- omitted-class bias ----------------------------------------------------------

def shifted_logits(n=400, shift=6.0, seed=0, omitted=3):
    """Every image right by a margin (true class 5, others in [0, 1)), then the omitted class's
    logits pushed down by `shift`, as in a student that never saw that class."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 10
    logits = torch.rand(n, 10, generator=g)
    logits[torch.arange(n), y] = 5.0
    logits[:, omitted] -= shift
    return logits, y


def test_fit_class_bias_recovers_a_known_shift():
    logits, y = shifted_logits(shift=6.0)
    assert accuracy(logits, y) == pytest.approx(0.9)  # every 3 is wrong
    b = fit_class_bias(logits, y, [3])
    # Every 3 comes back once b > its best other logit - (5 - 6), which is at most 2;
    # another image turns into a 3 only once b > 5 - (its class-3 logit - 6), at least 10.
    is3 = y == 3
    others = logits.clone()
    others[torch.arange(len(y)), y] = -math.inf
    lo = (others[is3].max(1).values - logits[is3, 3]).max().item()
    hi = (logits[~is3].max(1).values - logits[~is3, 3]).min().item()
    assert 1 < lo < 2 and 10 < hi < 11
    assert lo < b < hi and b == pytest.approx((lo + hi) / 2)  # the midpoint of the winning interval
    assert lo < 6.0 < hi
    assert accuracy(apply_class_bias(logits, [3], b), y) == 1.0


@pytest.mark.parametrize("seed", range(5))
def test_fit_class_bias_is_the_best_bias_on_noisy_logits(seed):
    """Exhaustively: no bias on a fine grid beats the fitted one, which is never worse than none."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (300,), generator=g)
    logits = torch.randn(300, 10, generator=g) * 2
    logits[torch.arange(300), y] += 2.5
    logits[:, [3, 7]] -= 3.0
    b = fit_class_bias(logits, y, [3, 7])
    fitted = accuracy(apply_class_bias(logits, [3, 7], b), y)
    assert fitted >= accuracy(logits, y)
    grid = [i / 20 for i in range(-400, 401)]
    assert fitted >= max(accuracy(apply_class_bias(logits, [3, 7], g_), y) for g_ in grid)
    assert fitted > accuracy(logits, y)  # the pushed-down classes do need a correction here


def test_fit_class_bias_is_zero_when_no_correction_helps():
    # Already perfect, with the omitted class right sometimes: any shift can only break things.
    logits, y = shifted_logits(shift=0.0)
    assert accuracy(logits, y) == 1.0
    assert fit_class_bias(logits, y, [3]) == 0.0
    # Nothing to choose from: no omitted class, or every class omitted.
    assert fit_class_bias(logits, y, []) == 0.0
    assert fit_class_bias(logits, y, list(range(10))) == 0.0


def test_fit_class_bias_prefers_the_bias_nearest_zero_on_ties():
    # One image, right for any b < 1 (threshold 2 - 1): 0 lies in the best interval.
    assert fit_class_bias(torch.tensor([[2.0, 1.0]]), torch.tensor([0]), [1]) == 0.0
    # Right for b > 1 only (threshold 1): the best interval is unbounded, so one past its threshold.
    assert fit_class_bias(torch.tensor([[2.0, 1.0]]), torch.tensor([1]), [1]) == 2.0
    # Two images that need b in (1, 3): the midpoint.
    logits = torch.tensor([[2.0, 1.0], [4.0, 1.0]])
    assert fit_class_bias(logits, torch.tensor([1, 0]), [1]) == 2.0
    # b = 0 is itself a candidate: here it is a threshold (a tie argmax breaks towards class 0,
    # which is right), and the interval below it (b = -1) is no better.
    assert fit_class_bias(torch.tensor([[1.0, 1.0]]), torch.tensor([0]), [1]) == 0.0


def test_fit_class_bias_only_sees_the_logits_it_is_given(monkeypatch):
    """It opens no file (no split, no checkpoint: it is fit on whatever val logits it is
    handed), answers from the logits it gets, and leaves them alone."""
    assert list(inspect.signature(fit_class_bias).parameters) == ["logits", "y", "classes"]

    def no_files(*args, **kwargs):
        raise AssertionError(f"fit_class_bias opened a file: {args[:1]}")

    logits, y = shifted_logits()
    lower = logits.clone()
    lower[:, 3] -= 2.0  # the omitted class 2 further down: every threshold moves up by 2
    before = logits.clone()
    with monkeypatch.context() as m:  # any file access, by path or descriptor, torch.load included
        for module, name in ((builtins, "open"), (io, "open"), (os, "open"), (torch, "load")):
            m.setattr(module, name, no_files)
        b = fit_class_bias(logits, y, [3])
        b_lower = fit_class_bias(lower, y, (3,))
    assert 1 < b < 11  # the known shift (see test_fit_class_bias_recovers_a_known_shift)
    assert b_lower == pytest.approx(b + 2.0, abs=1e-9)  # it follows the logits it is given
    assert torch.equal(logits, before)  # and leaves them alone


def test_apply_class_bias_shifts_only_the_given_classes():
    logits = torch.zeros(2, 4)
    out = apply_class_bias(logits, [1, 3], 2.5)
    assert out.tolist() == [[0, 2.5, 0, 2.5]] * 2 and logits.abs().sum() == 0


# --- one model's entry in evaluate.json ------------------------------------------------

def test_report_holds_calibration_fidelity_and_the_val_fitted_correction():
    test_logits, test_y = shifted_logits(n=500, shift=6.0, seed=1)
    val_logits, val_y = shifted_logits(n=200, shift=6.0, seed=2)
    teacher = shifted_logits(n=500, shift=0.0, seed=1)[0]

    entry = report(test_logits, test_y, 10, [3], teacher_logits=teacher, val=(val_logits, val_y))
    assert set(entry) == {"accuracy", "errors", "omitted_accuracy", "ece",
                          "agreement", "kl_from_teacher", "corrected"}
    assert entry["omitted_accuracy"] == 0.0 and entry["agreement"] == 0.9
    fixed = entry["corrected"]
    assert set(fixed) == {"bias", "accuracy", "errors", "omitted_accuracy"}
    # Fit on val, not on the test logits (whose best interval is a different one).
    assert fixed["bias"] == round(fit_class_bias(val_logits, val_y, [3]), 4)
    assert fixed["bias"] != round(fit_class_bias(test_logits, test_y, [3]), 4)
    assert fixed["accuracy"] == 1.0 and fixed["errors"] == 0 and fixed["omitted_accuracy"] == 1.0
    json.dumps(entry)  # plain numbers only

    teacher_entry = report(teacher, test_y, 10, [3])
    assert "agreement" not in teacher_entry and "corrected" not in teacher_entry and "ece" in teacher_entry
    no_omission = report(test_logits, test_y, 10, [], teacher_logits=teacher, val=(val_logits, val_y))
    assert "corrected" not in no_omission and "omitted_accuracy" not in no_omission


def test_reliability_rows_are_accuracy_and_mean_confidence_per_bin():
    from kd.evaluate import reliability_rows

    # Two classes; confidences 0.6, 0.6, 0.9, 0.9 (bins 9 and 14 of 15): first bin half right.
    p = torch.tensor([0.6, 0.6, 0.9, 0.9], dtype=torch.float64)
    logits = torch.stack([p.log(), (1 - p).log()], 1).float()
    y = torch.tensor([0, 1, 0, 0])
    rows = reliability_rows(logits, y)
    assert [r["accuracy"] for r in rows] == [0.5, 1.0]
    assert [r["confidence"] for r in rows] == pytest.approx([0.6, 0.9], abs=1e-6)


# --- plot data: what differs between two runs must show ----------------------------

def test_per_class_errors_count_each_class_and_sum_to_the_errors():
    classes = ["zero", "one", "two", "three"]
    y = torch.tensor([0, 0, 1, 1, 1, 3, 3])
    pred = torch.tensor([0, 1, 1, 1, 3, 0, 2])
    logits = torch.nn.functional.one_hot(pred, 4).float()
    rows = per_class_errors(logits, y, classes)
    # Class two has no test image: no row (as no accuracy could be given for it).
    assert rows == [{"class": "zero", "errors": 1, "images": 2}, {"class": "one", "errors": 1, "images": 3},
                    {"class": "three", "errors": 2, "images": 2}]
    assert sum(r["errors"] for r in rows) == report(logits, y, 4)["errors"] == 4


def test_confusion_rows_are_the_errors_only_in_a_fixed_order():
    classes = list("abcd")
    y = torch.tensor([3, 0, 1, 3, 2, 0, 3])
    pred = torch.tensor([0, 0, 1, 0, 2, 2, 1])
    logits = torch.nn.functional.one_hot(pred, 4).float()
    rows = confusion_rows(logits, y, classes)
    # One row per misclassified image, none for a right one, sorted by (actual, predicted).
    assert rows == [{"actual": "a", "predicted": "c"}, {"actual": "d", "predicted": "a"},
                    {"actual": "d", "predicted": "a"}, {"actual": "d", "predicted": "b"}]
    assert len(rows) == report(logits, y, 4)["errors"]
    assert all(r["actual"] != r["predicted"] for r in rows)
    # Shuffling the test set changes nothing: the file is the same for the same predictions.
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    assert confusion_rows(logits[perm], y[perm], classes) == rows
    assert confusion_rows(torch.nn.functional.one_hot(y, 4).float(), y, classes) == []  # no errors, no rows
