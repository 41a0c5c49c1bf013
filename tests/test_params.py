"""params.yaml is validated in one place; every bad value names its key."""
import shutil

import pytest
import yaml

from conftest import REPO
from kd.params import ParamsError, load_params, project_root


def write(tmp_path, edit):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"]["mirror"] = str(tmp_path)  # an existing directory
    edit(params)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def test_default_params_are_valid():
    p = load_params(REPO / "params.yaml")
    assert p.temperature > 0 and 0 <= p.alpha <= 1
    assert p.teacher.arch == "mlp1200" and p.student.arch == "mlp800"


def _set(path, value):
    def edit(params):
        *parents, leaf = path.split(".")
        node = params
        for key in parents:
            node = node[key]
        node[leaf] = value
    return edit


BAD = [
    ("temperature", 0, "temperature"),
    ("temperature", -1.5, "temperature"),
    ("alpha", 1.5, "alpha"),
    ("alpha", -0.1, "alpha"),
    ("omit_classes", [10], "omit_classes"),
    ("omit_classes", [-1], "omit_classes"),
    ("omit_classes", list(range(10)), "omits every class"),
    ("temprature", 5, "temprature: unknown key"),
    ("teacher.lr_decay", 0.1, "teacher.lr_decay: unknown key"),
    ("teacher.arch", "resnet9000", "unknown arch 'resnet9000'"),
    ("student.epochs", 0, "student.epochs"),
    ("student.optimizer", "lion", "student.optimizer"),
    ("data.dataset", "imagenet", "unknown dataset 'imagenet'"),
    ("data.mirror", "/nonexistent/mirror", "data.mirror: directory /nonexistent/mirror does not exist"),
    ("seed", "abc", "seed"),
]


@pytest.mark.parametrize("key,value,message", BAD, ids=[f"{k}={v}" for k, v, _ in BAD])
def test_bad_value_names_the_key(tmp_path, key, value, message):
    path = write(tmp_path, _set(key, value))
    with pytest.raises(ParamsError, match=message.replace("[", r"\[").replace("(", r"\(")):
        load_params(path)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ParamsError, match="file not found"):
        load_params(tmp_path / "params.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("temperature: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ParamsError, match="mapping"):
        load_params(bad)


def test_relative_mirror_is_taken_from_the_real_repo_inside_a_queued_experiment(tmp_path):
    exp_dir = tmp_path / "repo" / ".dvc" / "tmp" / "exps" / "run" / "abc123"
    exp_dir.mkdir(parents=True)
    assert project_root(exp_dir) == tmp_path / "repo"
    assert project_root(tmp_path) == tmp_path.resolve()
    shutil.rmtree(tmp_path / "repo")


def _keys(node, prefix=""):
    if not isinstance(node, dict):
        return {prefix}
    return set().union(*(_keys(v, f"{prefix}{k}.") for k, v in node.items()))


@pytest.mark.parametrize("profile", sorted((REPO / "profiles").glob("*.yaml")), ids=lambda p: p.stem)
def test_profiles_are_valid_params_files_with_the_same_keys(profile, tmp_path):
    raw = yaml.safe_load(profile.read_text())
    assert raw["data"]["mirror"] == "../shared/datasets"  # the same relative default as params.yaml
    raw["data"]["mirror"] = str(tmp_path)  # the profile is used from the repo root, not profiles/
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    assert load_params(tmp_path / "params.yaml").data.dataset == "cifar10"
    # A key added to params.yaml must be added to every profile too.
    assert _keys(yaml.safe_load(profile.read_text())) == _keys(yaml.safe_load((REPO / "params.yaml").read_text()))


def test_several_views_need_student_augmentation(tmp_path):
    def edit(params):
        params["soft_labels"] = {"mode": "cached", "views": 4}
        params["student"].update(jitter=0, flip=False)
    with pytest.raises(ParamsError, match="soft_labels.views: 4 views are all the same image"):
        load_params(write(tmp_path, edit))
