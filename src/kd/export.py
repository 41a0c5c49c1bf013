"""The distilled student as ONNX, checked against PyTorch with onnxruntime.

Input and output are those of the PyTorch model (and of the MLflow model's
signature): float32 images [N, C, H, W] scaled to [0, 1], normalised inside
the graph; logits [N, classes]. N is dynamic.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from kd.datasets import ImageSpec
from kd.device import inference_batch
from kd.files import write_bytes
from kd.inference import predict

INPUT, OUTPUT = "images", "logits"
# fp32 ONNX against fp32 PyTorch differs by float rounding only (~1e-6 on MNIST
# logits), which grows with the logits' size; anything near this bound, relative to the
# largest |logit| (at least 1), is a wrong graph, not rounding. (A DIST student's logits
# near 60 differed by 6e-3 in a correct graph.)
MAX_LOGIT_DIFF = 1e-3


class ExportMismatchError(RuntimeError):
    """The ONNX model does not compute what the PyTorch model computes."""


SPEC_KEY = "kd.image_spec"  # ONNX metadata: classes, shape, mean, std (kd.datasets.ImageSpec as JSON)


def with_spec(proto, spec: ImageSpec):
    """The class names and input shape, as model metadata: the file alone is enough to
    preprocess an image and name the prediction (`python -m kd.predict`)."""
    keep = [p for p in proto.metadata_props if p.key != SPEC_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    entry = proto.metadata_props.add()
    entry.key, entry.value = SPEC_KEY, json.dumps(spec.to_json())
    return proto


def read_spec(path: str | Path) -> ImageSpec | None:
    """The spec an exported file carries, or None."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    for p in proto.metadata_props:
        if p.key == SPEC_KEY:
            return ImageSpec.from_json(json.loads(p.value))
    return None


def export_onnx(model: nn.Module, spec: ImageSpec, path: str | Path) -> None:
    """torch.onnx's dynamo exporter (the default since torch 2.9; needs onnxscript),
    with a dynamic batch dimension."""
    model = model.cpu().float().eval()
    example = torch.zeros(2, *spec.shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (example,), input_names=[INPUT], output_names=[OUTPUT],
                                    dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
                                    dynamo=True, verbose=False)
    write_bytes(path, with_spec(without_stack_traces(program.model_proto), spec).SerializeToString())


def without_stack_traces(proto):
    """The exporter stores each node's Python stack trace, with this machine's absolute
    paths: the same model would hash differently in every clone, and the shipped file
    would say where it was built."""
    for nodes in [proto.graph.node, *(f.node for f in proto.functions)]:
        for node in nodes:
            keep = [p for p in node.metadata_props if p.key != "pkg.torch.onnx.stack_trace"]
            del node.metadata_props[:]
            node.metadata_props.extend(keep)
    return proto


def quantize_int8(src: str | Path, dst: str | Path, spec: ImageSpec) -> None:
    """Dynamic int8 quantization of the weights (activations quantized at run time)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    dst = Path(dst)
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp")
    os.close(fd)
    root = logging.getLogger()  # the quantizer's advice to pre-process goes to the root logger
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_dynamic(str(src), tmp, weight_type=QuantType.QInt8)
        write_bytes(dst, with_spec(onnx.load(tmp), spec).SerializeToString())
    finally:
        root.setLevel(level)
        Path(tmp).unlink(missing_ok=True)


def session(path: str | Path):
    """A CPU onnxruntime session with torch's thread count, so latencies compare."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # errors only
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def onnx_predict(sess, x: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
    """Logits for uint8 images x, scaled like kd.inference.predict."""
    batch_size = batch_size or inference_batch(x.shape)
    out = [sess.run([OUTPUT], {INPUT: x[i : i + batch_size].float().div_(255).numpy()})[0]
           for i in range(0, len(x), batch_size)]
    return torch.from_numpy(np.concatenate(out))


def _rate(hits: torch.Tensor) -> float:
    return round(int(hits.sum()) / len(hits), 6)


def _sig(value: float) -> float:
    # Rounding noise: 2 significant digits keep the magnitude, and keep the file
    # quiet under `dvc metrics diff` when the last float bits move.
    return float(f"{value:.2g}")


def check_export(model: nn.Module, onnx_path: Path, int8_path: Path, x: torch.Tensor,
                 y: torch.Tensor) -> dict:
    """Both models on every image of x: accuracy, top-1 agreement with PyTorch, max |logit
    difference|, file size. Raises ExportMismatchError when the fp32 graph is wrong."""
    ref = predict(model.cpu().float(), x, device=torch.device("cpu"))
    out = {"pytorch": {"accuracy": _rate(ref.argmax(1) == y)}}
    for name, path in (("onnx", onnx_path), ("onnx_int8", int8_path)):
        logits = onnx_predict(session(path), x)
        out[name] = {
            "accuracy": _rate(logits.argmax(1) == y),
            "agreement": _rate(logits.argmax(1) == ref.argmax(1)),
            "max_abs_logit_diff": _sig((logits - ref).abs().max().item()),
            "size_bytes": Path(path).stat().st_size,
        }
    out["onnx_int8"]["accuracy_drop"] = round(out["pytorch"]["accuracy"] - out["onnx_int8"]["accuracy"], 6)
    out["onnx"]["logit_tolerance"] = _sig(logit_tolerance(ref))
    if out["onnx"]["max_abs_logit_diff"] > out["onnx"]["logit_tolerance"]:
        raise ExportMismatchError(f"{onnx_path}: logits differ from PyTorch's by up to "
                                  f"{out['onnx']['max_abs_logit_diff']} (tolerance {out['onnx']['logit_tolerance']}: "
                                  f"{MAX_LOGIT_DIFF} of the largest |logit|, at least 1)")
    return out


def logit_tolerance(logits: torch.Tensor) -> float:
    """How far fp32 ONNX logits may stray from PyTorch's: MAX_LOGIT_DIFF relative to their scale."""
    return MAX_LOGIT_DIFF * max(1.0, logits.abs().max().item())


def _median_ms_per_image(run, batch: int, repeats: int, budget_s: float) -> float:
    times, start = [], time.perf_counter()
    for i in range(2 + repeats):  # 2 warm-up calls
        t0 = time.perf_counter()
        run()
        if i >= 2:
            times.append(time.perf_counter() - t0)
            if len(times) >= 3 and time.perf_counter() - start > budget_s:
                break  # big nets on a small CPU: 3 timed calls are enough for a median
    times.sort()
    return round(1000 * times[len(times) // 2] / batch, 4)


@torch.no_grad()
def export_latency(model: nn.Module, paths: dict[str, Path], in_shape: tuple[int, ...], *,
                   budget_s: float = 5.0) -> dict:
    """CPU ms per image at batch 1 and 256: PyTorch and each ONNX file under onnxruntime."""
    model = model.cpu().float().eval()
    runners = {"pytorch": lambda xb: model(xb)}
    for name, path in paths.items():
        sess = session(path)
        runners[name] = lambda xb, s=sess: s.run([OUTPUT], {INPUT: xb.numpy()})
    out = {}
    for name, run in runners.items():
        out[name] = {}
        for batch, repeats in ((1, 50), (256, 10)):
            xb = torch.rand(batch, *in_shape)
            out[name][f"cpu_ms_per_image_batch{batch}"] = _median_ms_per_image(lambda: run(xb), batch, repeats,
                                                                               budget_s)
    return out
