import copy
import pytest
import torch

from kd.augment import apply_shifts
from kd.checkpoint import new_model
from kd.device import resolve_precision
from kd.loop import TensorBatches, fit
from kd.losses import LOSSES
from kd.params import TrainParams
from kd.soft_labels import (StaleSoftLabelsError, ViewCache, LiveTeacher, load_soft_labels, save_soft_labels,
                            teacher_view_logits, view_shifts)

CPU = torch.device("cpu")


@pytest.fixture
def cifar_like():
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (40, 3, 32, 32), generator=g, dtype=torch.uint8), torch.arange(40) % 10


@pytest.fixture
def teacher():
    torch.manual_seed(0)
    return new_model("resnet8", "cifar10").eval()


def make_cache(teacher, x, views=3, seed=0):
    shifts = view_shifts(len(x), views, 4, True, seed)
    return ViewCache(shifts, 4, True, teacher_view_logits(teacher, x, shifts, views, device=CPU, batch_size=16))


def test_views_are_reproducible_from_the_seed():
    def fields(s):
        return s.dy, s.dx, s.mirrored

    a, b, c = view_shifts(50, 3, 4, True, 7), view_shifts(50, 3, 4, True, 7), view_shifts(50, 3, 4, True, 8)
    assert all(torch.equal(u, v) for u, v in zip(fields(a), fields(b)))
    assert not torch.equal(a.dy, c.dy)
    assert a.dy.shape[:2] == (3, 50) and a.mirrored.shape == (3, 50) and int(a.dy.max()) <= 8
    # view k of image i does not depend on how many views were drawn
    assert all(torch.equal(u[:2], v) for u, v in zip(fields(a), fields(view_shifts(50, 2, 4, True, 7))))
    assert view_shifts(50, 1, 0, False, 7) is None  # nothing to draw without augmentation


def test_cached_logits_of_view_k_equal_the_teacher_on_view_k(teacher, cifar_like):
    x, _ = cifar_like
    cache = make_cache(teacher, x)
    with torch.no_grad():
        for k in range(3):
            view = apply_shifts(x, cache.shifts[k])
            assert torch.allclose(cache.logits[k], teacher(view.float() / 255), atol=1e-5)
    assert not torch.allclose(cache.logits[0], cache.logits[1])  # views differ


def test_student_batches_carry_the_logits_of_the_view_they_show(teacher, cifar_like):
    x, y = cifar_like
    cache = make_cache(teacher, x)
    keep = y != 3  # omit_classes=[3]
    batches = TensorBatches(x[keep], y[keep], 8, seed=1, jitter=4, flip=True, teacher=cache.subset(keep))
    seen_views = 0
    with torch.no_grad():
        for epoch in range(2):
            for xb, batch in batches.epoch(epoch, CPU):
                assert torch.allclose(teacher(xb), batch["teacher_logits"], atol=1e-5)
                seen_views += len(xb)
    assert seen_views == 2 * int(keep.sum())


def test_live_teacher_trains_a_student_on_the_batch_it_sees(teacher, cifar_like):
    x, y = cifar_like
    seen = []
    live = LiveTeacher(teacher, CPU, "fp32")

    def loss(logits, batch):
        seen.append(batch["teacher_logits"])
        return LOSSES["kd"](logits, batch, temperature=4, alpha=0.9)

    cfg = TrainParams(arch="vgg8", epochs=1, batch_size=16, lr=0.05, jitter=4, flip=True)
    student = new_model("vgg8", "cifar10")
    history = fit(student, TensorBatches(x, y, 16, seed=0, jitter=4, flip=True, teacher=live), (x[:8], y[:8]), loss,
                  cfg, device=CPU, precision=resolve_precision(cfg.precision, CPU))
    assert len(seen) == 3 and seen[0].shape == (16, 10) and history[0]["train_loss"] > 0


def test_live_teacher_infers_in_the_layout_it_trained_in(teacher, cifar_like):
    x, _ = cifar_like
    plain = copy.deepcopy(teacher).eval()
    live = LiveTeacher(teacher, CPU, "fp32")
    conv = next(p for p in live.teacher.parameters() if p.dim() == 4)
    assert conv.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert torch.allclose(live.logits_for(x[:8].float() / 255, None, None), plain(x[:8].float() / 255), atol=1e-5)


def test_soft_labels_refuse_another_teacher_data_or_params(tmp_path, teacher, cifar_like):
    x, _ = cifar_like
    teacher_file, data, out = tmp_path / "teacher.pt", tmp_path / "train.pt", tmp_path / "soft.pt"
    teacher_file.write_bytes(b"teacher v1")
    data.write_bytes(b"data v1")
    cache = make_cache(teacher, x, views=2)
    made_with = {"seed": 0, "soft_labels.mode": "cached", "soft_labels.views": 2, "student.jitter": 4,
                 "student.flip": True}
    save_soft_labels(out, cache, teacher=teacher_file, data=data, mode="cached", made_with=made_with)
    kw = dict(teacher=teacher_file, data=data, n=40, params={**made_with, "temperature": 4.0})
    loaded = load_soft_labels(out, **kw)  # params the views do not depend on may differ
    assert torch.equal(loaded.logits, cache.logits) and torch.equal(loaded.shifts.dx, cache.shifts.dx)

    with pytest.raises(StaleSoftLabelsError, match="holds 40 logits for 41"):
        load_soft_labels(out, **{**kw, "n": 41})
    # The one check of the cache against the training settings: every param it was made with.
    with pytest.raises(StaleSoftLabelsError, match=r"student.jitter=4 \(now 2\)"):
        load_soft_labels(out, **{**kw, "params": {**made_with, "student.jitter": 2}})
    with pytest.raises(StaleSoftLabelsError, match=r"soft_labels.mode='cached' \(now 'live'\)"):
        load_soft_labels(out, **{**kw, "params": {**made_with, "soft_labels.mode": "live"}})
    teacher_file.write_bytes(b"teacher v2")
    with pytest.raises(StaleSoftLabelsError, match="teacher.pt"):
        load_soft_labels(out, **kw)
    teacher_file.write_bytes(b"teacher v1")
    data.write_bytes(b"data v2")
    with pytest.raises(StaleSoftLabelsError, match="train.pt"):
        load_soft_labels(out, **kw)
    data.write_bytes(b"data v1")
    live = {**made_with, "soft_labels.mode": "live"}
    save_soft_labels(out, None, teacher=teacher_file, data=data, mode="live", made_with=live)
    assert load_soft_labels(out, **{**kw, "params": live}) is None
    save_soft_labels(out, cache, teacher=teacher_file, data=data, mode="cached")  # records no params
    with pytest.raises(StaleSoftLabelsError, match="does not record the params"):
        load_soft_labels(out, **kw)


def test_one_view_without_augmentation_is_the_clean_image(teacher, cifar_like):
    x, _ = cifar_like
    shifts = view_shifts(len(x), 1, 0, False, 0)
    logits = teacher_view_logits(teacher, x, shifts, 1, device=CPU)
    with torch.no_grad():
        assert torch.allclose(logits[0], teacher(x.float() / 255), atol=1e-5)


def test_ddp_ranks_split_a_cached_view_batch_exactly(teacher, cifar_like):
    x, y = cifar_like
    cache = make_cache(teacher, x, views=2)
    whole = list(TensorBatches(x, y, 8, seed=3, jitter=4, flip=True, teacher=cache).epoch(0, CPU))
    ranks = [list(TensorBatches(x, y, 8, seed=3, jitter=4, flip=True, teacher=cache, rank=r, world=2).epoch(0, CPU))
             for r in range(2)]
    for i, (xb, batch) in enumerate(whole):
        for r in range(2):
            xr, br = ranks[r][i]
            assert torch.equal(xr, xb[r::2]) and torch.equal(br["teacher_logits"], batch["teacher_logits"][r::2])
