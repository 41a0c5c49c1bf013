"""Classify images with a trained model: `python -m kd.predict MODEL IMAGE_OR_FOLDER...`.

MODEL is the exported student (`models/student.onnx`, its int8 copy) or a checkpoint
(`models/student.pt`, any `models/*.pt`). Both carry the class names and the input
size, so the file alone is enough: each image is prepared as `prepare` prepared the
training images (RGB, EXIF orientation, shorter side resized, centre crop), and the
top-k classes are printed with their probabilities (`--json` for programs).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from kd.datasets import ImageSpec
from kd.device import inference_batch
from kd.errors import UserError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


class PredictError(UserError, RuntimeError):
    """The model or an image cannot be used."""


def image_files(paths: list[str]) -> list[Path]:
    """The files named, and the images (by suffix) below the folders named, sorted."""
    out = []
    for name in paths:
        p = Path(name)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise PredictError(f"{p}: no images in this folder ({', '.join(sorted(IMAGE_SUFFIXES))})")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise PredictError(f"{p}: no such file or folder")
    return out


def load_images(files: list[Path], spec: ImageSpec) -> np.ndarray:
    """float32 [N, C, H, W] in [0, 1], prepared as `prepare` prepares a folder dataset."""
    from kd.image_folder import why_unreadable, load_image

    arrays = []
    for f in files:
        try:
            arrays.append(load_image(f.read_bytes(), spec.shape[1], channels=spec.shape[0]))
        except Exception as e:
            raise PredictError(f"{f}: {why_unreadable(e)}") from None
    return np.stack(arrays).astype(np.float32) / 255


class Classifier:
    """An ONNX file (onnxruntime) or a checkpoint (PyTorch), with the spec it carries."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise PredictError(f"{self.path}: model file not found")
        if self.path.suffix == ".onnx":
            self._onnx()
        else:
            self._torch()
        out = self.logits(np.zeros((1, *self.spec.shape), dtype=np.float32)).shape[1]
        if out != self.spec.num_classes:
            raise PredictError(f"{self.path}: the model outputs {out} logits but names "
                               f"{self.spec.num_classes} classes; it was not exported by this pipeline as is")

    def _onnx(self):
        import onnxruntime as ort

        from kd.export import INPUT, OUTPUT, SPEC_KEY, read_spec

        try:
            spec = read_spec(self.path)
            session = ort.InferenceSession(str(self.path), providers=["CPUExecutionProvider"])
        except Exception as e:  # not ONNX, truncated, ...
            raise PredictError(f"{self.path}: not a readable ONNX model ({type(e).__name__}: "
                               f"{str(e).splitlines()[0][:200]})") from None
        if spec is None:
            raise PredictError(f"{self.path}: no class names inside (ONNX metadata {SPEC_KEY!r}); "
                               "export it with this pipeline (`dvc repro export_onnx`)")
        self.spec = spec
        self.logits = lambda x: session.run([OUTPUT], {INPUT: x})[0]

    def _torch(self):
        import torch

        from kd.checkpoint import checkpoint_spec, load_model

        try:
            model, ckpt = load_model(self.path)
        except UserError:
            raise
        except Exception as e:  # a state dict without arch, another program's pickle, ...
            raise PredictError(f"{self.path}: not a checkpoint of this pipeline ({type(e).__name__}: "
                               f"{str(e).splitlines()[0][:200]})") from None
        self.spec = checkpoint_spec(ckpt)

        def logits(x):
            with torch.no_grad():
                return model(torch.from_numpy(x)).float().numpy()
        self.logits = logits

    def top(self, x: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
        z = self.logits(x).astype(np.float64)
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        best = np.argsort(-p, axis=1, kind="stable")[:, :k]
        return [[(self.spec.classes[j], float(p[i, j])) for j in row] for i, row in enumerate(best)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kd.predict", description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="models/student.onnx, models/student.int8.onnx or a models/*.pt checkpoint")
    ap.add_argument("images", nargs="+", help="image files or folders (searched recursively)")
    ap.add_argument("-k", "--top-k", type=int, default=3, help="classes to print per image (default 3)")
    ap.add_argument("--json", action="store_true", help="one JSON document on stdout")
    args = ap.parse_args(argv)
    try:
        model = Classifier(args.model)
        files = image_files(args.images)
        k, n = max(1, min(args.top_k, model.spec.num_classes)), inference_batch(model.spec.shape)
        tops = [t for i in range(0, len(files), n) for t in model.top(load_images(files[i : i + n], model.spec), k)]
    except UserError as e:
        print(f"predict: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        json.dump([{"file": str(f), "top": [{"class": c, "probability": round(p, 6)} for c, p in top]}
                   for f, top in zip(files, tops)], sys.stdout, indent=2)
        print()
    else:
        for f, top in zip(files, tops):
            print(f"{f}: " + ", ".join(f"{c} {p:.3f}" for c, p in top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
