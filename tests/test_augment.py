import torch

from kd.augment import random_shift


def test_zero_shift_without_flip_is_identity(toy_images):
    x, _ = toy_images
    assert random_shift(x, 0, torch.Generator().manual_seed(0)) is x


def test_same_seed_same_views_other_seed_other_views(toy_images):
    x, _ = toy_images
    a = random_shift(x, 2, torch.Generator().manual_seed(3), flip=True)
    b = random_shift(x, 2, torch.Generator().manual_seed(3), flip=True)
    c = random_shift(x, 2, torch.Generator().manual_seed(4), flip=True)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == x.shape and a.dtype == x.dtype


def test_each_image_is_a_zero_filled_translation_of_itself():
    x = torch.arange(1, 1 + 2 * 3 * 6 * 6, dtype=torch.int64).view(2, 3, 6, 6)
    out = random_shift(x, 2, torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(len(x)):
        matches = [(dy, dx) for dy in range(5) for dx in range(5)
                   if torch.equal(out[i], padded[i, :, dy : dy + 6, dx : dx + 6])]
        assert len(matches) == 1  # exactly one shift explains it, same for all channels


def test_flip_mirrors_about_half_the_images():
    x = torch.arange(36).view(1, 1, 6, 6).repeat(400, 1, 1, 1)
    out = random_shift(x, 0, torch.Generator().manual_seed(0), flip=True)
    flipped = (out == x.flip(3)).flatten(1).all(1)
    same = (out == x).flatten(1).all(1)
    assert bool((flipped | same).all())
    assert 150 < int(flipped.sum()) < 250
