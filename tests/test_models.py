import pytest
import torch

from kd.checkpoint import load_model, new_model, save_model
from kd.models import count_params


@pytest.mark.parametrize("arch,expected", [("mlp1200", 2_395_210), ("mlp800", 1_276_810)])
def test_hinton_mlp_parameter_counts(arch, expected):
    # 784-1200-1200-10 = 2.39M and 784-800-800-10 = 1.28M, as in the paper
    assert count_params(new_model(arch, "mnist")) == expected


def test_checkpoint_round_trip_gives_the_same_outputs(tmp_path):
    model = new_model("mlp800", "mnist", dropout=0.3).eval()
    save_model(tmp_path / "m.pt", model, arch="mlp800", dataset="mnist", dropout=0.3)
    loaded, meta = load_model(tmp_path / "m.pt")
    x = torch.rand(4, 1, 28, 28)
    assert meta["arch"] == "mlp800"
    assert torch.equal(model(x), loaded(x))
