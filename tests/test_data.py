import shutil

import pytest
import torch

from kd.datasets import DATASETS, MNIST_FILES, DataError, check_split, fetch_mnist, split_train_val


def copy_mirror(src, dst):
    (dst / "mnist").mkdir(parents=True)
    for name in MNIST_FILES:
        shutil.copyfile(src / "mnist" / name, dst / "mnist" / name)
    return dst


def test_mnist_from_mirror_has_the_official_sizes(mirror, tmp_path):
    data = fetch_mnist(mirror, tmp_path / "raw")
    (x, y), (xt, yt) = data["train"], data["test"]
    assert x.shape == (60000, 1, 28, 28) and x.dtype == torch.uint8
    assert xt.shape == (10000, 1, 28, 28)
    assert torch.bincount(yt).tolist()[3] == 1010  # the official count of test 3s
    assert not any(mirror.rglob("MNIST"))  # nothing written into the mirror


@pytest.mark.parametrize("damage", ["truncate", "alter", "delete"])
def test_damaged_mirror_file_is_named(mirror, tmp_path, damage):
    fake = copy_mirror(mirror, tmp_path / "mirror")
    victim = fake / "mnist" / "t10k-labels-idx1-ubyte.gz"
    if damage == "truncate":
        victim.write_bytes(victim.read_bytes()[:100])
    elif damage == "alter":
        blob = bytearray(victim.read_bytes())
        blob[-1] ^= 0xFF
        victim.write_bytes(bytes(blob))
    else:
        victim.unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz"):
        fetch_mnist(fake, tmp_path / "raw")


def test_split_is_seeded_disjoint_and_complete():
    x = torch.arange(100).view(100, 1, 1, 1).to(torch.uint8)
    y = torch.arange(100) % 10
    (tx, _), (vx, _) = split_train_val(x, y, 20, seed=7)
    (tx2, _), _ = split_train_val(x, y, 20, seed=7)
    (tx3, _), _ = split_train_val(x, y, 20, seed=8)
    assert torch.equal(tx, tx2) and not torch.equal(tx, tx3)
    assert len(vx) == 20 and len(tx) == 80
    assert sorted(tx.flatten().tolist() + vx.flatten().tolist()) == list(range(100))
    with pytest.raises(DataError, match="val_size"):
        split_train_val(x, y, 100, seed=0)
    (tx, _), (vx, _) = split_train_val(x, y, 0, seed=0)  # no validation split: all train
    assert len(vx) == 0 and sorted(tx.flatten().tolist()) == list(range(100))


def test_check_split_rejects_wrong_shapes_and_labels():
    info = DATASETS["mnist"]
    with pytest.raises(DataError, match="shape"):
        check_split("train", torch.zeros(2, 3, 28, 28, dtype=torch.uint8), torch.zeros(2), info)
    with pytest.raises(DataError, match="labels outside"):
        check_split("train", torch.zeros(2, 1, 28, 28, dtype=torch.uint8), torch.tensor([0, 10]), info)
