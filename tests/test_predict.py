"""`python -m kd.predict`: the model file alone names the classes; bad models and images
give one clear line and exit 2."""
import json
import subprocess
import sys

import onnx
import pytest
import torch
from PIL import Image

from conftest import REPO
from kd.checkpoint import new_model, save_model
from kd.datasets import ImageSpec
from kd.export import SPEC_KEY, export_onnx, read_spec

SPEC = ImageSpec(("cat", "dog", "owl"), (3, 16, 16), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def predict(*args, cwd):
    return subprocess.run([sys.executable, "-m", "kd.predict", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"})


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("predict")
    torch.manual_seed(0)
    model = new_model("vgg5", SPEC).eval()
    save_model(d / "model.pt", model, arch="vgg5", dataset="folder", spec=SPEC)
    export_onnx(model, SPEC, d / "model.onnx")
    Image.new("RGB", (40, 24), (200, 30, 30)).save(d / "red.png")
    Image.new("L", (16, 16), 90).save(d / "grey.jpg")
    return d, model


def test_onnx_and_checkpoint_agree_and_name_the_classes(models):
    d, model = models
    assert read_spec(d / "model.onnx") == SPEC
    a = json.loads(predict(d / "model.onnx", d / "red.png", d / "grey.jpg", "--json", "-k", "3", cwd=d).stdout)
    b = json.loads(predict(d / "model.pt", d / "red.png", d / "grey.jpg", "--json", "-k", "3", cwd=d).stdout)
    assert [r["file"] for r in a] == [str(d / "red.png"), str(d / "grey.jpg")]
    for ra, rb in zip(a, b):
        assert [t["class"] for t in ra["top"]] == [t["class"] for t in rb["top"]]
        assert sorted(t["class"] for t in ra["top"]) == ["cat", "dog", "owl"]
        assert [t["probability"] for t in ra["top"]] == pytest.approx([t["probability"] for t in rb["top"]], abs=1e-5)
    text = predict(d / "model.onnx", d, "-k", "1", cwd=d).stdout.splitlines()  # a folder: its images, sorted
    assert [line.split(":")[0] for line in text] == [str(d / "grey.jpg"), str(d / "red.png")]


def strip_spec(src, dst):
    proto = onnx.load(str(src))
    keep = [p for p in proto.metadata_props if p.key != SPEC_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    onnx.save(proto, str(dst))


def other_spec(src, dst):
    proto = onnx.load(str(src))
    for p in proto.metadata_props:
        if p.key == SPEC_KEY:
            p.value = json.dumps({**SPEC.to_json(), "classes": ["cat", "dog"]})
    onnx.save(proto, str(dst))


@pytest.mark.parametrize("make,args,message", [
    (strip_spec, ["red.png"], r"bad.onnx: no class names inside \(ONNX metadata 'kd.image_spec'\)"),
    (other_spec, ["red.png"], "bad.onnx: the model outputs 3 logits but names 2 classes"),
    (lambda src, dst: dst.write_text("not onnx"), ["red.png"], "bad.onnx: not a readable ONNX model"),
    (None, ["broken.png"], "broken.png: cannot be decoded"),
    (None, ["notes.txt"], "notes.txt: not an image Pillow can read"),
    (None, ["missing.png"], "missing.png: no such file or folder"),
])
def test_bad_models_and_images_fail_clearly(models, make, args, message):
    import re

    d, _ = models
    model = d / "model.onnx"
    if make:
        model = d / "bad.onnx"
        make(d / "model.onnx", model)
    (d / "broken.png").write_bytes((d / "red.png").read_bytes()[:60])
    (d / "notes.txt").write_text("hello")
    out = predict(model, *[d / a for a in args], cwd=d)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.startswith("predict: error: ") and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert re.search(message, out.stderr), out.stderr
