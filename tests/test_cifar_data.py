"""CIFAR-10 from the JPEG image-folder mirror: order, labels, clear errors."""
import re
import runpy
import shutil

import pytest
import torch
import yaml
from torchvision.io import encode_jpeg

import kd.datasets as datasets
from conftest import REPO, need_mirror
from kd.datasets import CIFAR10_CLASSES, DataError, fetch_cifar10, split_train_val
from kd.files import file_md5
from kd.profiles import load_profile


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
    x, y = fetch_cifar10(need_mirror("cifar10-jpeg"), tmp_path / "raw")["test"]
    assert len(x) == 10000 and torch.bincount(y).tolist() == [1000] * 10
    first = x[:20]  # two of each class
    assert first.shape == (20, 3, 32, 32) and first.dtype == torch.uint8
    assert 0.3 < first.float().mean().item() / 255 < 0.7


@pytest.mark.parametrize("entry,kind", [("train/unicorn", "dir"), ("train/notes.txt", "file"),
                                        ("test/.DS_Store", "file"), ("README", "file")])
def test_unexpected_entry_in_the_tree_is_named(fake_mirror, tmp_path, entry, kind):
    """An extra class folder would otherwise be silently left out of the data."""
    path = fake_mirror / "cifar10-jpeg" / entry
    if kind == "dir":
        path.mkdir()
        (path / "0000.jpg").write_bytes((path.parent / "cat" / "0000.jpg").read_bytes())
    else:
        path.write_text("stray\n")
    with pytest.raises(DataError, match=f"{entry}: unexpected entry"):
        fetch_cifar10(fake_mirror, tmp_path / "raw")
    assert not (tmp_path / "raw" / "source.json").exists()


def _damage(mirror, damage):
    victim = mirror / "cifar10-jpeg" / "train" / "dog" / "0002.jpg"
    if damage == "truncated":
        victim.write_bytes(victim.read_bytes()[:300])
    elif damage == "not-a-jpeg":
        victim.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    elif damage == "wrong-size":
        victim.write_bytes(encode_jpeg(torch.zeros((3, 16, 32), dtype=torch.uint8)).numpy().tobytes())
    elif damage == "grayscale":  # decoded as RGB: still fine
        victim.write_bytes(encode_jpeg(torch.full((1, 32, 32), 100, dtype=torch.uint8)).numpy().tobytes())
    else:  # an extra class
        shutil.copytree(victim.parent, victim.parent.parent / "unicorn")
    return victim


def _outputs(proj):
    return {p: file_md5(p) for p in sorted((proj / "data").rglob("*")) if p.is_file()}


BAD_MIRRORS = {
    "truncated": "train/dog/0002.jpg: not a decodable JPEG",
    "not-a-jpeg": "train/dog/0002.jpg: not a decodable JPEG",
    "wrong-size": r"train/dog/0002.jpg: expected a 32x32 RGB image, got shape \(3, 16, 32\)",
    "extra-class": "train/unicorn: unexpected entry",
}


@pytest.mark.parametrize("damage", BAD_MIRRORS)
def test_prepare_swaps_nothing_in_from_a_bad_mirror(fake_mirror, tmp_path, monkeypatch, capsys, damage):
    """The stage script, on a good mirror, then on a damaged copy: exit 2, every output as before."""
    proj = tmp_path / "proj"
    proj.mkdir()
    params = load_profile("cifar10-cpu", REPO)
    params["data"].update(mirror=str(fake_mirror), val_size=10, max_train=None)
    (proj / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(proj)
    monkeypatch.setenv("KD_TRACKING", "0")
    monkeypatch.syspath_prepend(str(REPO / "stages"))  # as `python stages/prepare.py` would
    runpy.run_path(str(REPO / "stages" / "prepare.py"), run_name="__main__")
    assert torch.load("data/prepared/train.pt", weights_only=True)["x"].shape == (20, 3, 32, 32)
    before = _outputs(proj)
    assert proj / "data/raw/cifar10/source.json" in before
    capsys.readouterr()

    other = tmp_path / "other"  # the same images under another path, so source.json would change
    shutil.copytree(fake_mirror, other)
    _damage(other, damage)
    params["data"]["mirror"] = str(other)
    (proj / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(REPO / "stages" / "prepare.py"), run_name="__main__")
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert re.search(f"\\[prepare\\] error: {other}/cifar10-jpeg/{BAD_MIRRORS[damage]}", err), err
    assert _outputs(proj) == before
    assert str(fake_mirror) in (proj / "data/raw/cifar10/source.json").read_text()


def test_a_grayscale_jpeg_is_decoded_as_rgb(fake_mirror, tmp_path):
    _damage(fake_mirror, "grayscale")
    x, _ = fetch_cifar10(fake_mirror, tmp_path / "raw")["train"]
    assert x[:].shape == (30, 3, 32, 32)
