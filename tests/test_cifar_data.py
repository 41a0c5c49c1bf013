"""CIFAR-10 from the JPEG image-folder mirror: order, labels, clear errors."""
import pytest
import torch
from torchvision.io import encode_jpeg

import kd.datasets as datasets
from conftest import MIRROR
from kd.datasets import CIFAR10_CLASSES, DataError, fetch_cifar10, split_train_val


@pytest.fixture
def fake_mirror(tmp_path, monkeypatch):
    """3 train / 2 test images per class; pixel value 20*class + image number."""
    monkeypatch.setattr(datasets, "CIFAR10_PER_CLASS", {"train": 3, "test": 2})
    for split, n in (("train", 3), ("test", 2)):
        for c, name in enumerate(CIFAR10_CLASSES):
            folder = tmp_path / "mirror" / "cifar10-jpeg" / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                img = torch.full((3, 32, 32), 20 * c + i, dtype=torch.uint8)
                (folder / f"{i:04d}.jpg").write_bytes(encode_jpeg(img, quality=100).numpy().tobytes())
    return tmp_path / "mirror"


def test_class_index_is_alphabetical_and_order_is_round_robin(fake_mirror, tmp_path):
    data = fetch_cifar10(fake_mirror, tmp_path / "raw")
    x, y = data["train"]
    assert y.tolist() == list(range(10)) * 3  # every prefix is class-balanced
    images = x[:]
    assert images.shape == (30, 3, 32, 32) and images.dtype == torch.uint8
    # image i of class c sits at 10*i + c and holds the value 20*c + i (JPEG: +-2)
    expected = torch.tensor([20 * c + i for i in range(3) for c in range(10)], dtype=torch.float)
    assert torch.allclose(images.float().mean((1, 2, 3)), expected, atol=2)
    assert (tmp_path / "raw" / "source.json").exists()


def test_subset_decodes_only_the_images_it_takes(fake_mirror, tmp_path):
    x, y = fetch_cifar10(fake_mirror, tmp_path / "raw")["train"]
    perm = torch.randperm(30, generator=torch.Generator().manual_seed(0))  # split_train_val's draw
    used = set(perm[:10].tolist()) | set(perm[10:].sort().values[:5].tolist())
    for i in set(range(30)) - used:
        x.files[i].write_bytes(b"garbage")  # never indexed below
    (tx, ty), (vx, vy) = split_train_val(x, y, 10, seed=0, max_train=5)
    assert tx.shape == (5, 3, 32, 32) and vx.shape == (10, 3, 32, 32)
    assert len(ty) == 5 and len(vy) == 10


@pytest.mark.parametrize("damage", ["delete", "garbage", "png"])
def test_missing_or_undecodable_image_is_named(fake_mirror, tmp_path, damage):
    victim = fake_mirror / "cifar10-jpeg" / "test" / "frog" / "0001.jpg"
    if damage == "delete":
        victim.unlink()
    elif damage == "garbage":
        victim.write_bytes(victim.read_bytes()[:50])
    else:
        victim.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    with pytest.raises(DataError, match="test/frog/0001.jpg"):
        x, _ = fetch_cifar10(fake_mirror, tmp_path / "raw")["test"]
        x[:]


def test_real_mirror_test_split_has_the_official_counts(tmp_path):
    if not (MIRROR / "cifar10-jpeg").is_dir():
        pytest.skip(f"no CIFAR-10 mirror at {MIRROR}")
    x, y = fetch_cifar10(MIRROR, tmp_path / "raw")["test"]
    assert len(x) == 10000 and torch.bincount(y).tolist() == [1000] * 10
    first = x[:20]  # two of each class
    assert first.shape == (20, 3, 32, 32) and first.dtype == torch.uint8
    assert 0.3 < first.float().mean().item() / 255 < 0.7
