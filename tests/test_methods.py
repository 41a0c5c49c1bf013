"""The distillation methods against their papers: values worked out by hand (plain Python
floats, no torch), their reductions, a property that defines each, and bf16 gradients."""
import math

import pytest
import torch
import torch.nn.functional as F

from kd.losses import LOSSES, decoupled_terms, standardise

S = [[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]]  # student logits, 2 images x 3 classes
T_ = [[3.0, 1.0, 0.0], [1.0, 0.0, 2.0]]  # teacher logits
Y = [0, 2]


def batch(progress=1.0):
    return torch.tensor(S), {"y": torch.tensor(Y), "teacher_logits": torch.tensor(T_), "progress": progress}


def softmax(z, t=1.0):
    e = [math.exp(v / t) for v in z]
    return [v / sum(e) for v in e]


def kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0)


def ce(z, y):
    return -math.log(softmax(z)[y])


def pearson(a, b):
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    cov = sum((x - ma) * (y - mb) for x, y in zip(a, b))
    return cov / math.sqrt(sum((x - ma) ** 2 for x in a) * sum((y - mb) ** 2 for y in b))


def zscore(z):
    m = sum(z) / len(z)
    sd = math.sqrt(sum((v - m) ** 2 for v in z) / (len(z) - 1))  # unbiased, as the authors'
    return [(v - m) / sd for v in z]


def test_kd_with_logit_standardisation_by_hand():
    T, alpha = 2.0, 0.9
    soft = sum(kl(softmax(zscore(t), T), softmax(zscore(s), T)) for s, t in zip(S, T_)) / 2
    hard = sum(ce(s, y) for s, y in zip(S, Y)) / 2  # true labels on the raw logits
    expected = (1 - alpha) * hard + alpha * T * T * soft
    s, b = batch()
    assert LOSSES["kd"](s, b, temperature=T, alpha=alpha, logit_std=True).item() == pytest.approx(expected, rel=1e-5)


def test_dkd_by_hand():
    T, alpha, beta, w_ce = 4.0, 1.0, 8.0, 1.0
    total = 0.0
    for s, t, y in zip(S, T_, Y):
        ps, pt = softmax(s, T), softmax(t, T)
        tckd = kl([pt[y], 1 - pt[y]], [ps[y], 1 - ps[y]])
        others = [i for i in range(3) if i != y]
        nckd = kl(softmax([t[i] for i in others], T), softmax([s[i] for i in others], T))
        total += T * T * (alpha * tckd + beta * nckd)
    expected = w_ce * sum(ce(s, y) for s, y in zip(S, Y)) / 2 + total / 2
    s, b = batch()
    got = LOSSES["dkd"](s, b, temperature=T, alpha=alpha, beta=beta, ce=w_ce, warmup=0.1)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_dist_by_hand():
    T, beta, gamma, w_ce = 1.0, 1.0, 2.0, 0.5
    ps, pt = [softmax(s, T) for s in S], [softmax(t, T) for t in T_]
    inter = 1 - sum(pearson(a, b) for a, b in zip(ps, pt)) / 2
    intra = 1 - sum(pearson([r[c] for r in ps], [r[c] for r in pt]) for c in range(3)) / 3
    expected = w_ce * sum(ce(s, y) for s, y in zip(S, Y)) / 2 + T * T * (beta * inter + gamma * intra)
    s, b = batch()
    got = LOSSES["dist"](s, b, temperature=T, beta=beta, gamma=gamma, ce=w_ce)
    assert got.item() == pytest.approx(expected, rel=1e-4)  # float32 against float64; 2-point correlations


def random_batch(n=16, c=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, generator=g) * 2, {"y": torch.randint(0, c, (n,), generator=g),
                                                "teacher_logits": torch.randn(n, c, generator=g) * 4,
                                                "progress": 1.0}


def test_kd_unchanged_bit_for_bit():
    """The default method is exactly the loss every earlier result was trained with."""
    s, b = random_batch()
    T, alpha = 20.0, 0.9
    before = (1 - alpha) * F.cross_entropy(s, b["y"]) + alpha * T * T * F.kl_div(
        F.log_softmax(s / T, dim=1), F.log_softmax(b["teacher_logits"] / T, dim=1),
        reduction="batchmean", log_target=True)
    assert torch.equal(LOSSES["kd"](s, b, temperature=T, alpha=alpha), before)


@pytest.mark.parametrize("method,opts", [
    ("kd", {"alpha": 1.0}),
    ("dkd", {"alpha": 1.0, "beta": 8.0, "ce": 0.0, "warmup": 0.0}),
])
def test_logit_standardisation_ignores_each_samples_shift_and_scale(method, opts):
    s, b = random_batch()
    shift, scale = torch.randn(16, 1) * 5, torch.rand(16, 1) * 3 + 0.2
    moved = {**b, "teacher_logits": b["teacher_logits"] * scale.flip(0) - shift}
    base = LOSSES[method](s, b, temperature=2.0, logit_std=True, **opts)
    assert LOSSES[method](s * scale + shift, moved, temperature=2.0, logit_std=True, **opts).item() == \
        pytest.approx(base.item(), rel=1e-4)
    # without it, the scale matters
    assert LOSSES[method](s * scale, b, temperature=2.0, **opts).item() != pytest.approx(
        LOSSES[method](s, b, temperature=2.0, **opts).item(), rel=1e-2)


def test_standardised_logits_have_zero_mean_unit_std():
    z = standardise(torch.randn(4, 7) * 9 + 3)
    assert torch.allclose(z.mean(1), torch.zeros(4), atol=1e-5) and torch.allclose(z.std(1), torch.ones(4), atol=1e-5)


def test_dkd_terms_recombine_into_classical_kd():
    """Zhao et al. eq. 7: KD = TCKD + (1 - p_t) NCKD, p_t the teacher's target probability."""
    s, b = random_batch()
    T = 3.0
    tckd, nckd = decoupled_terms(s, b["teacher_logits"], b["y"], T)
    p_t = F.softmax(b["teacher_logits"] / T, 1).gather(1, b["y"][:, None]).squeeze(1)
    kd = T * T * F.kl_div(F.log_softmax(s / T, 1), F.log_softmax(b["teacher_logits"] / T, 1),
                          reduction="none", log_target=True).sum(1)
    assert torch.allclose(tckd + (1 - p_t) * nckd, kd, atol=1e-5)


def test_dkd_reduces_by_batch_mean_and_warms_up_linearly():
    s, b = random_batch()
    opts = {"temperature": 4.0, "alpha": 1.0, "beta": 8.0, "ce": 0.0, "warmup": 0.2}
    whole = LOSSES["dkd"](s, b, **opts)
    halves = [LOSSES["dkd"](s[i:i + 8], {k: v[i:i + 8] if torch.is_tensor(v) else v for k, v in b.items()}, **opts)
              for i in (0, 8)]
    assert whole.item() == pytest.approx((halves[0] + halves[1]).item() / 2, rel=1e-5)
    assert LOSSES["dkd"](s, {**b, "progress": 0.05}, **opts).item() == pytest.approx(whole.item() / 4, rel=1e-5)
    assert LOSSES["dkd"](s, {**b, "progress": 0.5}, **opts).item() == pytest.approx(whole.item(), rel=1e-6)


def test_dist_is_zero_for_the_teacher_plus_a_constant_per_sample():
    _, b = random_batch()
    s = b["teacher_logits"] + torch.randn(16, 1) * 7
    assert LOSSES["dist"](s, b, temperature=4.0, beta=1.0, gamma=1.0, ce=0.0).item() == pytest.approx(0, abs=1e-5)
    assert LOSSES["dist"](torch.randn(16, 10), b, temperature=4.0, beta=1.0, gamma=1.0, ce=0.0).item() > 0.1


METHODS = [("kd", {"alpha": 0.9}), ("kd", {"alpha": 0.9, "logit_std": True}),
           ("dkd", {"alpha": 1.0, "beta": 8.0, "ce": 1.0, "warmup": 0.1}),
           ("dkd", {"alpha": 1.0, "beta": 8.0, "ce": 1.0, "warmup": 0.1, "logit_std": True}),
           ("dist", {"beta": 1.0, "gamma": 1.0, "ce": 1.0})]


@pytest.mark.parametrize("method,opts", METHODS)
def test_finite_gradients_under_bf16_and_extreme_logits(method, opts):
    s, b = random_batch()
    for scale in (1.0, 1e3):  # a confident teacher: target probability 1.0 in float32
        x = (s * scale).bfloat16().requires_grad_()
        loss = LOSSES[method](x, {**b, "teacher_logits": (b["teacher_logits"] * scale).bfloat16()},
                              temperature=4.0, **opts)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(x.grad).all(), (method, scale)


def test_sections_of_methods_not_chosen_are_named_as_ignored():
    from kd.params import MethodParams
    assert MethodParams().ignored() == []
    m = MethodParams.model_validate({"name": "kd", "dist": {"beta": 2.0}})
    assert m.ignored() == ["method.dist (beta=2.0, gamma=1.0, ce=1.0) is ignored: method.name is kd"]
    assert m.options() == {"logit_std": False}
