"""Loss registry. Each loss maps (student logits, batch) to a scalar.

The distillation methods need only the teacher's logits (`batch["teacher_logits"]`),
which the pipeline caches, so choosing a method never runs the teacher again.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def cross_entropy(logits: torch.Tensor, batch: dict, *, label_smoothing: float = 0.0) -> torch.Tensor:
    """label_smoothing ε: uniform soft targets, the teacher-free control of Yuan et al. (2020)."""
    return F.cross_entropy(logits, batch["y"], label_smoothing=label_smoothing)


def standardise(logits: torch.Tensor) -> torch.Tensor:
    """Sun et al. (2024): each sample's logits as z-scores, so the student matches the
    teacher's ranking and relative gaps, not its logit scale (unbiased std, as the authors')."""
    return (logits - logits.mean(1, keepdim=True)) / (logits.std(1, keepdim=True) + 1e-7)


def distillation(logits: torch.Tensor, batch: dict, *, temperature: float, alpha: float,
                 logit_std: bool = False) -> torch.Tensor:
    """Hinton et al. (2015): (1-alpha)·CE(y) + alpha·T²·KL(softmax(t/T) ‖ softmax(s/T)).

    T² keeps the soft term's gradients on the same scale as the hard term's
    whatever the temperature, so alpha means the same thing across a sweep.
    """
    t = temperature
    s, tl = (standardise(logits), standardise(batch["teacher_logits"])) if logit_std else (logits, batch["teacher_logits"])
    soft = F.kl_div(F.log_softmax(s / t, dim=1), F.log_softmax(tl / t, dim=1), reduction="batchmean", log_target=True)
    hard = F.cross_entropy(logits, batch["y"]) if alpha < 1 else logits.new_zeros(())
    return (1 - alpha) * hard + alpha * t * t * soft


def decoupled_terms(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor, temperature: float):
    """Zhao et al. (2022), per sample: TCKD, the KL between the binary (target, rest)
    distributions, and NCKD, the KL among the non-target classes alone, each times T².
    In log space throughout, so a target probability of 0 or 1 stays finite."""
    log_ps, log_pt = F.log_softmax(s / temperature, 1), F.log_softmax(t / temperature, 1)
    target = F.one_hot(y, s.shape[1]).bool()

    def binary(logp):  # log p(target), log p(any other class)
        return torch.stack([logp[target], logp.masked_fill(target, float("-inf")).logsumexp(1)], 1)

    def others(logp):  # log of the distribution renormalised over the non-target classes
        rest = logp.masked_fill(target, float("-inf"))
        return rest - rest.logsumexp(1, keepdim=True)

    bs, bt = binary(log_ps), binary(log_pt)
    tckd = (bt.exp() * (bt - bs)).sum(1)
    ns, nt = others(log_ps), others(log_pt)
    nckd = (nt.exp() * (nt - ns)).masked_fill(target, 0).sum(1)
    return tckd * temperature ** 2, nckd * temperature ** 2


def dkd(logits: torch.Tensor, batch: dict, *, temperature: float, alpha: float, beta: float, ce: float,
        warmup: float, logit_std: bool = False) -> torch.Tensor:
    """Decoupled KD: ce·CE(y) + w·(alpha·TCKD + beta·NCKD), batch means; w ramps linearly
    to 1 over the first `warmup` share of the epochs (the paper: 20 of 240)."""
    s, t = (standardise(logits), standardise(batch["teacher_logits"])) if logit_std else (logits, batch["teacher_logits"])
    tckd, nckd = decoupled_terms(s, t, batch["y"], temperature)
    w = min(batch["progress"] / warmup, 1.0) if warmup > 0 else 1.0
    return ce * F.cross_entropy(logits, batch["y"]) + w * (alpha * tckd.mean() + beta * nckd.mean())


def pearson_gap(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """1 - the mean over rows of the Pearson correlation between a's and b's rows."""
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return 1 - ((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + 1e-8)).mean()


def dist(logits: torch.Tensor, batch: dict, *, temperature: float, beta: float, gamma: float,
         ce: float) -> torch.Tensor:
    """Huang et al. (2022): ce·CE(y) + T²·(beta·inter + gamma·intra), where inter is one minus
    the Pearson correlation of student and teacher probabilities across the classes of each
    sample, intra the same across the samples of each class: relations, not exact values."""
    ps, pt = F.softmax(logits / temperature, 1), F.softmax(batch["teacher_logits"] / temperature, 1)
    relations = beta * pearson_gap(ps, pt) + gamma * pearson_gap(ps.T, pt.T)
    return ce * F.cross_entropy(logits, batch["y"]) + temperature ** 2 * relations


LOSSES = {"ce": cross_entropy, "kd": distillation, "dkd": dkd, "dist": dist}
