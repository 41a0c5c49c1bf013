"""Loss registry. Each loss maps (student logits, batch) to a scalar."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def cross_entropy(logits: torch.Tensor, batch: dict, *, label_smoothing: float = 0.0) -> torch.Tensor:
    """label_smoothing ε: uniform soft targets, the teacher-free control of Yuan et al. (2020)."""
    return F.cross_entropy(logits, batch["y"], label_smoothing=label_smoothing)


def distillation(logits: torch.Tensor, batch: dict, *, temperature: float, alpha: float) -> torch.Tensor:
    """Hinton et al. (2015): (1-alpha)·CE(y) + alpha·T²·KL(softmax(t/T) ‖ softmax(s/T)).

    T² keeps the soft term's gradients on the same scale as the hard term's
    whatever the temperature, so alpha means the same thing across a sweep.
    """
    t = temperature
    soft = F.kl_div(
        F.log_softmax(logits / t, dim=1),
        F.log_softmax(batch["teacher_logits"] / t, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    hard = F.cross_entropy(logits, batch["y"]) if alpha < 1 else logits.new_zeros(())
    return (1 - alpha) * hard + alpha * t * t * soft


LOSSES = {"ce": cross_entropy, "kd": distillation}
