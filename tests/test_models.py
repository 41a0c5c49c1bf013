import copy

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


@pytest.mark.parametrize("arch,expected", [("resnet18", 11_173_962), ("vgg13", 9_416_010)])
def test_poster_conv_net_parameter_counts(arch, expected):
    # The poster's 11.17M ResNet18 and 9.41M VGG13 (the public CIFAR variants)
    assert count_params(new_model(arch, "cifar10")) == expected


def test_the_cpu_studys_reversed_teacher_is_smaller_than_its_student():
    # Reversed KD needs a smaller teacher: vgg5 (99,210 params) teaches vgg8 (147,930).
    assert count_params(new_model("vgg5", "cifar10")) == 99_210 < count_params(new_model("vgg8", "cifar10"))


@pytest.mark.parametrize("arch", ["resnet8", "resnet20", "vgg8", "vgg5"])
def test_small_conv_nets_classify_cifar_images_in_fp32_and_bf16(arch):
    torch.manual_seed(0)
    model = new_model(arch, "cifar10").eval()
    x = torch.rand(3, 3, 32, 32)
    ref = model(x).detach()  # fp32, the usual contiguous layout
    assert ref.shape == (3, 10)
    # .to(memory_format=...) converts in place: convert a copy, so `ref` stays independent.
    fast = copy.deepcopy(model).to(memory_format=torch.channels_last)
    assert any(p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
               for p in fast.parameters())  # the copy really is channels_last
    with torch.no_grad():
        assert torch.allclose(fast(x), ref, rtol=0, atol=1e-5)  # fp32: only the layout differs
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = fast(x).float()
    # bf16 is close, not equal. Untrained logits are small (|max| ~0.1), so the tolerance is
    # relative to them: 5% of the largest (bf16 is off by about 0.5% here).
    assert (out - ref).abs().max() <= 0.05 * ref.abs().max()
