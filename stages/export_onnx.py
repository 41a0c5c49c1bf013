"""Stage export_onnx: the distilled student as ONNX (and an int8 copy), checked
with onnxruntime against PyTorch on the whole test set."""
import json

from kd.checkpoint import checkpoint_spec, load_model
from kd.export import check_export, export_latency, export_onnx, quantize_int8
from kd.files import write_json
from kd.paths import metrics_file, model_file, onnx_file, split_file
from kd.splits import load_split
from kd_pipeline.stage import stage

with stage("export_onnx") as run:
    model, ckpt = load_model(model_file("student"))
    spec = checkpoint_spec(ckpt)
    shape = spec.shape
    fp32, int8 = onnx_file("student"), onnx_file("student", ".int8")
    # The class names and input spec travel inside the files (kd.predict reads them).
    export_onnx(model, spec, fp32)
    quantize_int8(fp32, int8, spec)
    x, y = load_split("test")
    check = check_export(model, fp32, int8, x, y)
    # Exact numbers here; wall-clock ones apart, so a rerun leaves export.json identical.
    write_json(metrics_file("export"), check)
    latency = export_latency(model, {"onnx": fp32, "onnx_int8": int8}, shape)
    write_json(metrics_file("export_latency"), latency)
    for name in ("onnx", "onnx_int8"):
        c, ms = check[name], latency[name]
        print(f"{name:9s} {c['size_bytes'] / 1e6:.2f} MB, test accuracy {c['accuracy']:.4f} "
              f"(PyTorch {check['pytorch']['accuracy']:.4f}), top-1 agreement with PyTorch {c['agreement']:.4f}, "
              f"max |logit diff| {c['max_abs_logit_diff']:.2g}, {ms['cpu_ms_per_image_batch1']:.3f} ms/image "
              f"at batch 1 (PyTorch {latency['pytorch']['cpu_ms_per_image_batch1']:.3f})")
    run.tracking.log_artifact(fp32, "onnx")
    run.tracking.log_artifact(int8, "onnx")
    # On the student's MLflow model page, beside its test metrics: onnx.agreement, ...
    run.tracking.model_metrics(model_file("student"), "student", model, x[:4],
                               {k: v for k, v in check.items() if k != "pytorch"},
                               dataset=(split_file("test"), f"{ckpt['dataset']}-test"))
    # Both files as MLflow onnx models too, the class names inside (kd_pipeline.registry).
    run.tracking.log_onnx_models(ckpt, {"onnx": fp32, "onnx_int8": int8}, x[:4], check,
                                 (split_file("test"), f"{ckpt['dataset']}-test"), model_file("student"))
    # Only now is all known that makes the registered student `champion`, or says why not.
    run.tracking.promote(model_file("student"), run.params.data.dataset,
                         json.loads(metrics_file("evaluate").read_text()), check,
                         check["onnx"]["logit_tolerance"])
