"""The ONNX export of a model: same logits under onnxruntime as in PyTorch, any batch size."""
from pathlib import Path

import numpy as np
import pytest
import torch

import kd.models
from kd.checkpoint import new_model
from kd.datasets import builtin_spec
from kd.export import ExportMismatchError, check_export, export_latency, export_onnx, logit_tolerance, onnx_predict, \
    quantize_int8, session


def images(n, shape=(1, 28, 28), seed=0):
    return torch.randint(0, 256, (n, *shape), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    model = new_model("mlp800", "mnist").eval()
    path = tmp_path_factory.mktemp("onnx") / "student.onnx"
    export_onnx(model, builtin_spec("mnist"), path)
    int8 = path.with_suffix(".int8.onnx")
    quantize_int8(path, int8, builtin_spec("mnist"))
    return model, path, int8


def test_onnx_gives_the_pytorch_logits_at_any_batch_size(exported):
    model, path, _ = exported
    sess = session(path)
    assert sess.get_inputs()[0].shape[1:] == [1, 28, 28]
    assert isinstance(sess.get_inputs()[0].shape[0], str)  # a dynamic batch
    for n in (1, 7, 300):
        x = images(n, seed=n)
        with torch.no_grad():
            ref = model(x.float() / 255)
        got = onnx_predict(sess, x, batch_size=128)  # 300 = 3 uneven chunks
        assert got.shape == (n, 10)
        np.testing.assert_allclose(got.numpy(), ref.numpy(), atol=1e-5)


def test_check_export_reports_parity_and_the_int8_copy(exported):
    model, path, int8 = exported
    x = images(500)
    y = torch.arange(500) % 10
    out = check_export(model, path, int8, x, y)
    assert out["onnx"]["agreement"] == 1.0 and out["onnx"]["max_abs_logit_diff"] < 1e-5
    assert out["onnx"]["accuracy"] == out["pytorch"]["accuracy"]
    assert out["onnx_int8"]["size_bytes"] < out["onnx"]["size_bytes"] / 3  # int8 weights, float32 before
    assert out["onnx_int8"]["accuracy_drop"] == pytest.approx(
        out["pytorch"]["accuracy"] - out["onnx_int8"]["accuracy"])
    assert 0 < out["onnx_int8"]["max_abs_logit_diff"] < 1


def test_check_export_fails_on_a_graph_of_another_model(exported, tmp_path):
    _, path, int8 = exported
    torch.manual_seed(1)
    other = new_model("mlp800", "mnist").eval()
    with pytest.raises(ExportMismatchError, match="logits differ"):
        check_export(other, path, int8, images(50), torch.zeros(50, dtype=torch.long))


def test_latency_covers_pytorch_and_each_onnx_file(exported):
    model, path, int8 = exported
    lat = export_latency(model, {"onnx": path, "onnx_int8": int8}, (1, 28, 28), budget_s=0.5)
    assert set(lat) == {"pytorch", "onnx", "onnx_int8"}
    assert all(v > 0 for row in lat.values() for v in row.values())
    assert set(lat["onnx"]) == {"cpu_ms_per_image_batch1", "cpu_ms_per_image_batch256"}


def test_the_onnx_file_holds_no_path_of_the_machine_that_built_it(exported):
    _, path, _ = exported
    data = path.read_bytes()
    assert b"stack_trace" not in data
    assert str(Path(kd.models.__file__).parents[2]).encode() not in data  # src/, where the model's code lives


def test_the_tolerance_scales_with_the_logits_so_a_large_correct_model_still_exports(exported, tmp_path):
    """Rounding grows with the logits (a DIST student's near 60 differed by 6e-3 in a correct
    graph): the bound is relative to the largest |logit|, never below the absolute 1e-3."""
    assert logit_tolerance(torch.tensor([[0.1, -0.5]])) == pytest.approx(1e-3)
    assert logit_tolerance(torch.tensor([[60.0, -80.0]])) == pytest.approx(0.08)
    model, _, _ = exported
    big = new_model("mlp800", "mnist").eval()
    big.load_state_dict(model.state_dict())
    with torch.no_grad():  # the same net with logits 1000x as large: a correct export must pass
        last = [m for m in big.modules() if isinstance(m, torch.nn.Linear)][-1]
        last.weight.mul_(1000), last.bias.mul_(1000)
    path = tmp_path / "big.onnx"
    export_onnx(big, builtin_spec("mnist"), path)
    int8 = path.with_suffix(".int8.onnx")
    quantize_int8(path, int8, builtin_spec("mnist"))
    out = check_export(big, path, int8, images(200), torch.arange(200) % 10)
    assert out["onnx"]["agreement"] == 1.0 and out["onnx"]["logit_tolerance"] > 1e-3
