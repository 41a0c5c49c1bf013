import pytest
import torch
import torch.nn.functional as F

from kd.losses import LOSSES


def batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 10, generator=g), {"y": torch.arange(8), "teacher_logits": torch.randn(8, 10, generator=g) * 3}


def test_kd_loss_matches_hinton_formula():
    s, b = batch()
    T, alpha = 4.0, 0.7
    p_t = F.softmax(b["teacher_logits"] / T, 1)
    kl = (p_t * (p_t.log() - F.log_softmax(s / T, 1))).sum(1).mean()
    expected = (1 - alpha) * F.cross_entropy(s, b["y"]) + alpha * T * T * kl
    assert torch.allclose(LOSSES["kd"](s, b, temperature=T, alpha=alpha), expected, atol=1e-6)


def test_alpha_zero_is_plain_cross_entropy():
    s, b = batch()
    assert torch.allclose(LOSSES["kd"](s, b, temperature=20, alpha=0.0), LOSSES["ce"](s, b))


def test_soft_term_is_zero_when_student_equals_teacher():
    _, b = batch()
    assert LOSSES["kd"](b["teacher_logits"].clone(), b, temperature=5, alpha=1.0).item() == pytest.approx(0, abs=1e-6)


def test_t_squared_keeps_soft_gradients_on_scale_across_temperatures():
    # Hinton et al.: soft-target gradients scale as 1/T^2, so the T^2 factor
    # keeps them comparable; without it they would shrink ~16x from T=5 to T=20.
    _, b = batch()
    norms = []
    for T in (5.0, 20.0):
        s = torch.zeros(8, 10, requires_grad=True)
        LOSSES["kd"](s, b, temperature=T, alpha=1.0).backward()
        norms.append(s.grad.norm().item())
    assert 0.5 < norms[1] / norms[0] < 2.0


def test_label_smoothing_is_cross_entropy_against_uniformly_mixed_targets():
    s, b = batch()
    eps = 0.1
    targets = (1 - eps) * F.one_hot(b["y"], 10).float() + eps / 10
    expected = -(targets * F.log_softmax(s, 1)).sum(1).mean()
    assert torch.allclose(LOSSES["ce"](s, b, label_smoothing=eps), expected, atol=1e-6)
    assert not torch.allclose(LOSSES["ce"](s, b, label_smoothing=eps), LOSSES["ce"](s, b))
