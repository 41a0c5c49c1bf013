"""Your own images: decoding, splits, leakage; then the whole pipeline on an image folder
with a torchvision student and a teacher started from a weights file, and a prediction."""
import io
import json
import shutil
import sys

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from conftest import FOLDER_CLASSES, REPO, make_image_folder, make_project, sh, stages_run
from kd.image_folder import ImageFolderError, load_image, read_folder, round_robin, stratified_split


def png(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=kw.pop("format", "PNG"), **kw)
    return buf.getvalue()


def test_every_mode_becomes_rgb_of_the_right_size():
    red = Image.new("RGB", (40, 20), (255, 0, 0))
    for img in (red, red.convert("L"), red.convert("P"), red.convert("CMYK"), red.convert("RGBA")):
        out = load_image(png(img, format="TIFF" if img.mode == "CMYK" else "PNG"), 16)
        assert out.shape == (3, 16, 16) and out.dtype == np.uint8
    # Transparent pixels are composited on white, not left black.
    clear = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    assert load_image(png(clear), 8).min() == 255
    # 16-bit grey is scaled down, not clipped to white.
    grey16 = Image.fromarray(np.full((8, 8), 32768, dtype=np.uint16))
    assert load_image(png(grey16), 8)[0, 0, 0] == 128


def test_exif_orientation_and_centre_crop():
    img = Image.new("RGB", (30, 10), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 10, 10))  # white on the left third
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: viewers turn it 90 degrees clockwise
    out = load_image(png(img, format="JPEG", exif=exif, quality=95), 10)
    # Upright it is 10 wide, 30 tall with white on top; the centre crop keeps the middle third.
    assert out.shape == (3, 10, 10) and out.mean() < 40


def test_stratified_split_is_seeded_and_keeps_every_class():
    y = torch.arange(100) % 4
    a = stratified_split(y, {"val": 0.1, "test": 0.2}, seed=3)
    assert {k: len(v) for k, v in a.items()} == {"val": 8, "test": 20, "train": 72}
    assert all(set(y[v].tolist()) == {0, 1, 2, 3} for v in a.values())
    b = stratified_split(y, {"val": 0.1, "test": 0.2}, seed=3)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["val"], stratified_split(y, {"val": 0.1, "test": 0.2}, seed=4)["val"])
    order = round_robin(torch.tensor([0, 0, 0, 1, 1, 2]))
    assert torch.tensor([0, 0, 0, 1, 1, 2])[order][:3].tolist() == [0, 1, 2]


def test_split_folders_are_used_and_classes_must_agree(tmp_path):
    make_image_folder(tmp_path / "train", per_class=6)
    make_image_folder(tmp_path / "test", per_class=3, split="test")
    found = read_folder(tmp_path, 16, val_size=0.34, test_size=0.5, seed=0)
    assert found["classes"] == list(FOLDER_CLASSES)
    sizes = {k: len(v[1]) for k, v in found["splits"].items()}
    assert sizes == {"test": 12, "val": 8, "train": 16}  # test/ as it is; val carved from train/
    shutil.rmtree(tmp_path / "test" / "cat")
    (tmp_path / "test" / "dog").mkdir()
    with pytest.raises(ImageFolderError, match=r"test/ differ from train/'s: missing \['cat'\]; extra \['dog'\]"):
        read_folder(tmp_path, 16, val_size=0.34, test_size=0.5, seed=0)


def test_the_same_bytes_in_two_splits_is_refused(tmp_path):
    make_image_folder(tmp_path / "train", per_class=4)
    make_image_folder(tmp_path / "test", per_class=2, split="test")
    shutil.copyfile(tmp_path / "train/cat/0000.jpg", tmp_path / "test/cat/copy.jpg")
    with pytest.raises(ImageFolderError, match=r"same image is in two splits \(1 pair.*train/cat/0000.jpg = .*copy.jpg"):
        read_folder(tmp_path, 16, val_size=1, test_size=0.5, seed=0)


def test_every_bad_image_is_counted(tmp_path):
    make_image_folder(tmp_path, per_class=4)
    (tmp_path / "cat" / "0000.jpg").write_bytes((tmp_path / "cat" / "0000.jpg").read_bytes()[:200])
    (tmp_path / "ship" / "notes.txt").write_text("not an image")
    (tmp_path / "ship" / ".DS_Store").write_text("hidden files are skipped")
    with pytest.raises(ImageFolderError, match=r"cat/0000.jpg: cannot be decoded .*; 1 more unreadable: .*notes.txt"):
        read_folder(tmp_path, 16, val_size=0.25, test_size=0.25, seed=0)


# --- The whole pipeline ------------------------------------------------------------------

@pytest.fixture(scope="module")
def folder_project(tmp_path_factory):
    """A project on 4 CIFAR classes (mixed formats), torchvision.mobilenet_v3_small student,
    torchvision.resnet18 teacher started from an ImageNet-shaped (1000-class) weights file."""
    base = tmp_path_factory.mktemp("folder")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"].update(dataset="folder", path="data/images", image_size=32, val_size=0.15, test_size=0.2,
                          mirror=None)
    params["teacher"].update(arch="torchvision.resnet18", init="data/resnet18.pth", epochs=1, batch_size=32,
                             lr=0.01)
    params["student"].update(arch="torchvision.mobilenet_v3_small", epochs=1, batch_size=32)

    def setup(proj):
        make_image_folder(proj / "data" / "images", per_class=40)
        torch.manual_seed(0)
        import torchvision
        torch.save(torchvision.models.resnet18(num_classes=1000).state_dict(), proj / "data" / "resnet18.pth")
        sh([sys.executable, "-m", "dvc", "add", "-q", "data/images", "data/resnet18.pth"], proj)
        return sh([sys.executable, "-m", "dvc", "repro"], proj, env={"KD_TRACKING": "0"})
    return make_project(base / "proj", params, setup)


def test_folder_pipeline_with_torchvision_nets_and_a_teacher_from_a_file(folder_project):
    proj, out = folder_project
    assert stages_run(out) >= {"prepare", "train_teacher", "train_student", "evaluate", "export_onnx"}
    assert "teacher.init: the head 'fc' has 1000 classes in data/resnet18.pth, the data has 4: replaced" in out.stdout
    assert "images/s" in out.stdout
    meta = json.loads((proj / "data/prepared/meta.json").read_text())
    assert meta["classes"] == list(FOLDER_CLASSES) and meta["shape"] == [3, 32, 32]
    assert meta["images"] == {"train": 104, "val": 24, "test": 32}  # 15% and 20% of each class's 40
    per_class = (proj / "metrics/per_class/student.csv").read_text()
    assert all(c in per_class for c in FOLDER_CLASSES)
    cost = json.loads((proj / "metrics/model_cost.json").read_text())
    assert cost["student"]["macs"] > 0 and cost["teacher"]["params"] == 11_178_564  # resnet18, 4-class head
    # The ONNX file alone names the classes.
    predicted = sh([sys.executable, "-m", "kd.predict", "models/student.onnx", "data/images/cat/0001.png",
                    "data/images/ship", "--json", "-k", "4"], proj, env={"PYTHONPATH": "src"})
    results = json.loads(predicted.stdout)
    assert len(results) == 41 and results[0]["file"] == "data/images/cat/0001.png"
    assert sorted(t["class"] for t in results[0]["top"]) == sorted(FOLDER_CLASSES)
    assert sum(t["probability"] for t in results[0]["top"]) == pytest.approx(1, abs=1e-4)
    text = sh([sys.executable, "-m", "kd.predict", "models/student.pt", "data/images/truck/0002.png"], proj,
              env={"PYTHONPATH": "src"}).stdout
    assert text.startswith("data/images/truck/0002.png: ") and any(c in text for c in FOLDER_CLASSES)


def test_editing_one_image_reruns_prepare_and_what_follows_only(folder_project):
    proj, _ = folder_project
    assert "up to date" in sh([sys.executable, "-m", "dvc", "status"], proj).stdout
    img = proj / "data/images/cat/0000.jpg"
    Image.open(img).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(img)
    status = sh([sys.executable, "-m", "dvc", "status", "--json"], proj).stdout
    changed = json.loads(status)
    assert "prepare" in changed and "check_params" not in changed and "train_teacher" not in changed
    assert "data/images" in json.dumps(changed["prepare"])
