import pytest
import torch

from kd.soft_labels import StaleSoftLabelsError, load_soft_labels, save_soft_labels


def test_soft_labels_refuse_another_teacher_or_data(tmp_path):
    teacher, data, out = tmp_path / "teacher.pt", tmp_path / "train.pt", tmp_path / "soft.pt"
    teacher.write_bytes(b"teacher v1")
    data.write_bytes(b"data v1")
    logits = torch.randn(5, 10)
    save_soft_labels(out, logits, teacher=teacher, data=data)
    assert torch.equal(load_soft_labels(out, teacher=teacher, data=data, n=5), logits)

    with pytest.raises(StaleSoftLabelsError, match="holds 5 logits for 6"):
        load_soft_labels(out, teacher=teacher, data=data, n=6)
    teacher.write_bytes(b"teacher v2")
    with pytest.raises(StaleSoftLabelsError, match="teacher.pt"):
        load_soft_labels(out, teacher=teacher, data=data, n=5)
    teacher.write_bytes(b"teacher v1")
    data.write_bytes(b"data v2")
    with pytest.raises(StaleSoftLabelsError, match="train.pt"):
        load_soft_labels(out, teacher=teacher, data=data, n=5)
