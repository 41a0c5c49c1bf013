"""Bad params, data, caches and signals: a clear message, exit code 2, and no
existing output touched. Each case runs a real stage script on a fresh copy of
a built tiny project."""
import re
import runpy
import shutil
import subprocess
import sys

import pytest
import torch
import yaml

from conftest import make_image_folder, need_mirror, set_param
from system import free_port
from kd.datasets import MNIST_FILES
from kd.files import file_md5


@pytest.fixture
def proj(built_project, tmp_path, monkeypatch):
    src, _ = built_project
    dst = tmp_path / "proj"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".git", "cache", "raw", "__pycache__",
                                                         "mlflow.db", "mlartifacts"))
    monkeypatch.chdir(dst)
    monkeypatch.setenv("KD_TRACKING", "0")  # tracking has tests of its own
    # A download (data.mirror not found) goes to a closed loopback port: refused at once.
    monkeypatch.setenv("KD_DOWNLOAD_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("PYTHONPATH", str(dst / "src"))  # stage subprocesses import src/ as dvc.yaml's cmds do
    monkeypatch.syspath_prepend(str(dst / "stages"))  # as `python stages/x.py` would
    return dst


def outputs(proj):
    return {str(p.relative_to(proj)): file_md5(p)
            for d in ("models", "data", "metrics") for p in sorted((proj / d).rglob("*")) if p.is_file()}


def param(key, value):
    return lambda proj: set_param(proj, key, value)


def write(relpath, text):
    return lambda proj: (proj / relpath).write_text(text)


def replace_text(old, new):
    """A hand edit of params.yaml, spelled as a user would type it (not as PyYAML dumps it)."""
    def edit(proj):
        path = proj / "params.yaml"
        text = path.read_text()
        assert old in text
        path.write_text(text.replace(old, new, 1))
    return edit


def append(text):
    def edit(proj):
        with open(proj / "params.yaml", "a") as f:
            f.write(text)
    return edit


def empty_transfer_set(*reruns):
    """data.max_train: 1 and omit_classes: [the class of that one image], after rerunning
    prepare (and `reruns`) on it, as `dvc repro` would have."""
    def edit(proj):
        param("data.max_train", 1)(proj)
        for stage in ("prepare", *reruns):
            subprocess.run([sys.executable, f"stages/{stage}.py"], cwd=proj, check=True, capture_output=True)
        only = int(torch.load(proj / "data/prepared/train.pt", weights_only=True)["y"][0])
        param("omit_classes", [only])(proj)
    return edit


def remove(relpath):
    return lambda proj: (proj / relpath).unlink()


def truncate(relpath):
    return lambda proj: (proj / relpath).write_bytes((proj / relpath).read_bytes()[:1000])


def replace_with(relpath, other):
    return lambda proj: shutil.copyfile(proj / other, proj / relpath)


def damaged_mirror(damage, name="train-labels-idx1-ubyte.gz"):
    def edit(proj):
        mirror = proj.parent / "mirror"
        shutil.copytree(need_mirror("mnist") / "mnist", mirror / "mnist")
        victim = mirror / "mnist" / name
        if damage == "delete":
            victim.unlink()
        elif damage == "truncate":
            victim.write_bytes(victim.read_bytes()[:500])
        else:
            blob = bytearray(victim.read_bytes())
            blob[len(blob) // 2] ^= 0x01
            victim.write_bytes(bytes(blob))
        param("data.mirror", str(mirror))(proj)
        param("data.val_size", 5001)(proj)  # so prepare must redo its work
    return edit


def then(*edits):
    def edit(proj):
        for e in edits:
            e(proj)
    return edit


def regenerate_soft_labels(*edits):
    """Soft labels made on other params (as `dvc repro` would have made them)."""
    def edit(proj):
        then(*edits)(proj)
        subprocess.run([sys.executable, "stages/generate_soft_labels.py"], cwd=proj, check=True, capture_output=True)
    return edit


def other_teacher_precision(proj):
    teacher = yaml.safe_load((proj / "params.yaml").read_text())["teacher"]
    param("teacher.precision", "fp32" if teacher["precision"] != "fp32" else "bf16")(proj)


def folder(mutate=lambda root: None, *, splits=False, **params):
    """A small image folder `imgs/` (4 CIFAR classes; train/ and test/ with splits=True),
    damaged by `mutate(root)`, and params that read it."""
    def edit(proj):
        root = proj / "imgs"
        if splits:
            make_image_folder(root / "train", per_class=4)
            make_image_folder(root / "test", per_class=2, split="test")
        else:
            make_image_folder(root, per_class=4)
        mutate(root)
        for key, value in {"data.dataset": "folder", "data.path": "imgs", "data.image_size": 32,
                           "data.val_size": 0.25, "data.test_size": 0.25, **params}.items():
            set_param(proj, key, value)
    return edit


def bomb(root):
    from PIL import Image
    Image.new("1", (10000, 10000)).save(root / "cat" / "huge.png")  # 100M pixels, 12 kB on disk


def teacher_init(write):
    def edit(proj):
        write(proj / "init.pt")
        set_param(proj, "teacher.init", "init.pt")
    return edit


def resnet18_weights(path):
    import torchvision
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), path)


CASES = [
    # (id, stage, edit, message)
    ("method-unknown", "check_params", param("method.name", "crd"), "method.name: Input should be 'kd', 'dkd' or 'dist'"),
    ("method-dkd-beta-negative", "train_student", param("method.dkd.beta", -1), "method.dkd.beta: Input should be greater than or equal to 0"),
    ("method-dkd-warmup-over-one", "check_params", param("method.dkd.warmup", 20), "method.dkd.warmup: Input should be less than or equal to 1"),
    ("method-dist-logit-std", "check_params", param("method.dist.logit_std", True), "method.dist.logit_std: unknown key"),
    ("temperature-zero", "check_params", param("temperature", 0), "temperature: Input should be greater than or equal to 0.01"),
    ("temperature-negative", "train_student", param("temperature", -3), "temperature: Input should be greater than or equal to 0.01"),
    ("alpha-above-1", "check_params", param("alpha", 1.5), "alpha: Input should be less than or equal to 1"),
    ("alpha-negative", "train_student", param("alpha", -0.5), "alpha: Input should be greater than or equal to 0"),
    ("omit-unknown-class", "check_params", param("omit_classes", [10]), r"omit_classes: \[10\] not in the mnist classes"),
    ("omit-every-class", "train_baseline", param("omit_classes", list(range(10))), "omits every class"),
    ("max-norm-zero", "check_params", param("teacher.max_norm", 0), "teacher.max_norm: Input should be greater than 0"),
    ("no-val-split-with-omit", "check_params", then(param("data.val_size", 0), param("omit_classes", [3])),
     "data.val_size: 0 leaves no validation split, and with omit_classes"),
    ("omit-duplicate-class", "check_params", param("omit_classes", [3, 3]),
     r"omit_classes: \[3, 3\] lists class 3 more than once; list each class once"),
    ("mirror-empty", "prepare", param("data.mirror", ""), "data.mirror: '' names no directory; write null"),
    ("batch-larger-than-training-set", "check_params", param("student.batch_size", 1000000000),
     "student.batch_size: 1000000000 is more than the 59800 training images of mnist; at most 59800"),
    ("unknown-key", "check_params", param("temprature", 5), "temprature: unknown key"),
    ("unknown-nested-key", "train_teacher", param("teacher.lr_decay", 0.1), "teacher.lr_decay: unknown key"),
    ("unknown-arch", "check_params", param("teacher.arch", "resnet9000"), "teacher.arch: unknown arch 'resnet9000'"),
    ("zero-epochs", "check_params", param("student.epochs", 0), "student.epochs: Input should be greater than or equal to 1"),
    ("unknown-optimizer", "check_params", param("student.optimizer", "lion"), "student.optimizer: Input should be 'sgd' or 'adam'"),
    ("unknown-dataset", "check_params", param("data.dataset", "imagenet"), "unknown dataset 'imagenet'"),
    ("label-smoothing-one", "train_baseline", param("baseline.label_smoothing", 1.0), "baseline.label_smoothing: Input should be less than 1"),
    ("negative-seed", "check_params", param("seed", -1), "seed: Input should be greater than or equal to 0"),
    ("missing-mirror", "prepare", param("data.mirror", "/nonexistent/mirror"),
     r"data.mirror: /nonexistent/mirror not found, and downloading MNIST train from http://127.0.0.1:\d+ "
     r"\(KD_DOWNLOAD_URL\) failed: .*Connection refused"),
    ("malformed-yaml", "check_params", write("params.yaml", "temperature: [20\n"), "params.yaml: not valid YAML"),
    ("params-not-a-mapping", "check_params", write("params.yaml", "- 1\n"), "expected a mapping"),
    ("params-missing", "evaluate", remove("params.yaml"), "params.yaml: file not found"),
    ("val-size-too-large", "prepare", param("data.val_size", 60000), "data.val_size: 60000 leaves no training images"),
    ("mirror-file-missing", "prepare", damaged_mirror("delete"), "train-labels-idx1-ubyte.gz: missing from the MNIST mirror"),
    ("mirror-file-truncated", "prepare", damaged_mirror("truncate"), "train-labels-idx1-ubyte.gz: md5 mismatch"),
    ("mirror-file-altered", "prepare", damaged_mirror("flip", "t10k-images-idx3-ubyte.gz"), "t10k-images-idx3-ubyte.gz: md5 mismatch"),
    ("soft-labels-from-other-teacher", "train_student", replace_with("models/teacher.pt", "models/baseline.pt"),
     "soft_labels.pt was made from a different models/teacher.pt"),
    ("soft-labels-other-seed-and-views", "train_student",
     then(regenerate_soft_labels(param("student.jitter", 1), param("soft_labels.views", 2)),
          param("seed", 1), param("soft_labels.views", 3)),
     r"soft_labels.pt was made with other params: seed=0 \(now 1\), soft_labels.views=2 \(now 3\); "
     "rerun `dvc repro generate_soft_labels`"),
    ("soft-labels-other-teacher-precision", "train_student", other_teacher_precision,
     r"soft_labels.pt was made with other params: teacher\.precision="),
    ("soft-labels-missing", "train_student", remove("data/soft_labels.pt"), "data/soft_labels.pt: missing; run `dvc repro`"),
    ("checkpoint-truncated", "evaluate", truncate("models/student.pt"), "models/student.pt: unreadable"),
    ("student-truncated-for-export", "export_onnx", truncate("models/student.pt"), "models/student.pt: unreadable"),
    ("prepared-split-truncated", "train_teacher", truncate("data/prepared/train.pt"), "data/prepared/train.pt: unreadable"),
    ("prepared-split-missing", "generate_soft_labels", remove("data/prepared/train.pt"), "data/prepared/train.pt: missing"),
    ("diverging-lr", "train_teacher", param("teacher.lr", 1e30), r"loss is (nan|inf) at epoch 1, batch \d+"),
    # Non-finite and absurd values: they used to pass, then fail mid-training as "lower the learning rate".
    ("temperature-inf", "train_student", param("temperature", float("inf")), "temperature: Input should be a finite number, got .inf"),
    ("temperature-nan", "check_params", param("temperature", float("nan")), "temperature: Input should be a finite number, got .nan"),
    ("temperature-underflow", "train_student", param("temperature", 1e-300), "temperature: Input should be greater than or equal to 0.01"),
    ("temperature-huge", "check_params", param("temperature", 1e6), "temperature: Input should be less than or equal to 1000"),
    ("alpha-nan", "train_student", param("alpha", float("nan")), "alpha: Input should be a finite number, got .nan"),
    ("lr-inf", "train_teacher", replace_text("lr: 0.05", "lr: .inf"), "teacher.lr: Input should be a finite number, got .inf"),
    ("weight-decay-nan", "train_baseline", param("student.weight_decay", float("nan")), "student.weight_decay: Input should be a finite number"),
    ("seed-too-large", "check_params", param("seed", 2**64), "seed: Input should be less than or equal to 4294967295"),
    ("jitter-out-of-frame", "check_params", param("teacher.jitter", 28), "teacher.jitter: 28 shifts the 28x28 mnist images out of the frame"),
    # No silent coercions: each of these used to be converted quietly (`true` trained as 1.0).
    ("temperature-bool", "check_params", param("temperature", True), "temperature: Input should be a valid number, got true"),
    ("seed-bool", "train_baseline", param("seed", True), "seed: Input should be a valid integer, got true"),
    ("omit-classes-not-ints", "check_params", param("omit_classes", ["3", 3.0]),
     r'omit_classes.0: Input should be a valid integer, got "3"\n  omit_classes.1: Input should be a valid integer, got 3.0'),
    ("epochs-float", "train_teacher", param("teacher.epochs", 2.0), "teacher.epochs: Input should be a valid integer, got 2.0"),
    ("max-train-string", "prepare", param("data.max_train", "400"), 'data.max_train: Input should be a valid integer, got "400"'),
    # YAML 1.2, as DVC reads params.yaml: `yes` is a string, a duplicate key an error.
    ("flip-yes", "train_teacher", replace_text("flip: false", "flip: yes"),
     r'teacher.flip: Input should be a valid boolean, got "yes" \(a string in YAML 1.2'),
    ("duplicate-key", "check_params", append("temperature: 5\n"), 'params.yaml: not valid YAML: .*found duplicate key "temperature"'),
    # What the schema cannot see: the classes of the images data.max_train keeps.
    ("empty-transfer-set-baseline", "train_baseline", empty_transfer_set(),
     r"omit_classes: \[\d\] leaves the baseline no training images: data.max_train: 1 keeps only images of those"),
    ("empty-transfer-set-student", "train_student", empty_transfer_set("generate_soft_labels"),
     r"omit_classes: \[\d\] leaves the student no training images"),
    # Your own images (data.dataset: folder) and your own teacher (teacher.init).
    ("folder-missing", "check_params", folder(lambda r: shutil.rmtree(r)), r"data.path: imgs is not a folder"),
    ("folder-empty", "check_params", folder(lambda r: [shutil.rmtree(d) for d in r.iterdir()]), "data.path: imgs is empty"),
    ("folder-without-image-size", "check_params", folder(**{"data.image_size": None}), "data.image_size: required for a folder"),
    ("class-folder-empty", "prepare", folder(lambda r: [f.unlink() for f in (r / "cat").iterdir()]),
     "imgs/cat: class folder with no images"),
    ("single-class", "check_params", folder(lambda r: [shutil.rmtree(d) for d in r.iterdir() if d.name != "ship"]),
     r"holds a single class \(ship\)"),
    ("image-truncated", "prepare",
     folder(lambda r: [f.write_bytes(f.read_bytes()[:300]) for f in (r / "cat/0000.jpg", r / "ship/0000.jpg")]),
     r"imgs/cat/0000.jpg: cannot be decoded .*; 1 more unreadable: imgs/ship/0000.jpg"),
    ("not-an-image", "prepare", folder(lambda r: (r / "cat" / "notes.txt").write_text("hi")),
     "imgs/cat/notes.txt: not an image Pillow can read"),
    ("decompression-bomb", "prepare", folder(bomb), r"imgs/cat/huge.png: larger than Pillow's decompression-bomb limit "
     r"\(PIL.Image.MAX_IMAGE_PIXELS"),
    ("split-classes-differ", "check_params", folder(lambda r: shutil.rmtree(r / "test" / "cat"), splits=True),
     r"the class folders of test/ differ from train/'s: missing \['cat'\]"),
    ("image-in-train-and-test", "prepare",
     folder(lambda r: shutil.copyfile(r / "train/cat/0001.png", r / "test/ship/x.png"), splits=True),
     r"the same image is in two splits \(1 pair.*imgs/train/cat/0001.png = imgs/test/ship/x.png"),
    ("image-size-too-small-for-net", "check_params", folder(**{"teacher.arch": "torchvision.inception_v3"}),
     r"teacher.arch: torchvision.inception_v3 cannot take 32x32 images \(.*\); choose a larger data.image_size"),
    ("unknown-torchvision-arch", "check_params", param("student.arch", "torchvision.resnet9000"),
     r"student.arch: unknown arch 'torchvision.resnet9000': torchvision's classification models are"),
    ("teacher-zero-epochs-no-init", "check_params", param("teacher.epochs", 0), "teacher.epochs: 0 uses the teacher as"),
    ("init-missing", "train_teacher", param("teacher.init", "nope.pt"), "teacher.init: nope.pt not found"),
    ("init-not-weights", "train_teacher", teacher_init(lambda p: p.write_text("weights?")),
     r"teacher.init: init.pt is not a plain weights file: torch.load\(weights_only=True\) refused it"),
    ("init-pickled-code", "train_teacher", teacher_init(lambda p: torch.save({"fn": print}, p)),
     "teacher.init: init.pt is not a plain weights file"),
    ("init-other-arch", "train_teacher", teacher_init(resnet18_weights),
     r"teacher.init: init.pt does not fit mlp1200: it has no '2.weight'"),
]


@pytest.mark.parametrize("stage,edit,message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_fails_clearly_and_touches_nothing(proj, capsys, stage, edit, message):
    edit(proj)
    before = outputs(proj)
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(f"stages/{stage}.py", run_name="__main__")
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"[{stage}] error:" in err
    assert re.search(message, err, re.S), err
    assert "Traceback" not in err
    assert outputs(proj) == before
    assert not list(proj.rglob("*.tmp"))  # no half-written file left behind


def test_killed_training_resumes_and_ends_identical(proj, tmp_path):
    """SIGKILL after epoch 2 of 3, rerun: same weights as a run never killed."""
    param("teacher.epochs", 3)(proj)
    twin = tmp_path / "twin"
    shutil.copytree(proj, twin)
    cmd = [sys.executable, "stages/train_teacher.py"]
    killed = subprocess.run(cmd, cwd=proj, env={**__import__("os").environ, "KD_CRASH_AFTER_EPOCH": "2"},
                            capture_output=True, text=True)
    assert killed.returncode == -9
    assert len(list((proj / ".resume").glob("train_teacher-*.pt"))) == 1
    resumed = subprocess.run(cmd, cwd=proj, capture_output=True, text=True, check=True)
    assert "resuming after epoch 2" in resumed.stdout
    assert not list((proj / ".resume").glob("*.pt"))  # cleared once finished
    subprocess.run(cmd, cwd=twin, capture_output=True, text=True, check=True)
    a = torch.load(proj / "models/teacher.pt", weights_only=True)["state_dict"]
    b = torch.load(twin / "models/teacher.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (proj / "metrics/curves/teacher.csv").read_text() == (twin / "metrics/curves/teacher.csv").read_text()
