"""params.yaml is validated in one place; every bad value names its key."""
import shutil
import sys

import pytest
import torch
import yaml

from conftest import REPO, sh, stages_run
from kd import profiles
from kd.params import _KEYS, ParamsError, check_training_set, load_params, project_root
from kd.yaml_reader import parse_yaml


def write(tmp_path, edit):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
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
    ("seed", "abc", "seed"),
    # Non-finite floats, anywhere in the schema.
    ("temperature", float("nan"), "temperature: Input should be a finite number, got .nan"),
    ("temperature", float("inf"), "temperature: Input should be a finite number, got .inf"),
    ("alpha", float("nan"), "alpha: Input should be a finite number"),
    ("teacher.lr", float("inf"), "teacher.lr: Input should be a finite number"),
    ("student.momentum", float("nan"), "student.momentum: Input should be a finite number"),
    ("student.weight_decay", float("inf"), "student.weight_decay: Input should be a finite number"),
    ("teacher.dropout", float("nan"), "teacher.dropout: Input should be a finite number"),
    # Absurd values.
    ("temperature", 1e-300, "temperature: Input should be greater than or equal to 0.01"),
    ("temperature", 0.009, "temperature: Input should be greater than or equal to 0.01"),
    ("temperature", 1000.5, "temperature: Input should be less than or equal to 1000"),
    ("seed", 2**32, "seed: Input should be less than or equal to 4294967295"),
    ("teacher.seed", 2**70, "teacher.seed: Input should be less than or equal to 4294967295"),
    ("data.split_seed", -1, "data.split_seed: Input should be greater than or equal to 0"),
    ("teacher.jitter", 28, "teacher.jitter: 28 shifts the 28x28 mnist images out of the frame; use less than 28"),
    ("student.jitter", 10**9, "student.jitter: 1000000000 shifts"),
    # No silent coercion.
    ("temperature", True, "temperature: Input should be a valid number, got true"),
    ("alpha", "0.5", 'alpha: Input should be a valid number, got "0.5"'),
    ("seed", True, "seed: Input should be a valid integer, got true"),
    ("seed", 1.0, "seed: Input should be a valid integer, got 1.0"),
    ("omit_classes", ["3", 3.0], 'omit_classes.0: Input should be a valid integer, got "3"\n  omit_classes.1: Input should be a valid integer, got 3.0'),
    ("omit_classes", [True], "omit_classes.0: Input should be a valid integer, got true"),
    ("student.epochs", 2.5, "student.epochs: Input should be a valid integer, got 2.5"),
    ("student.flip", 1, "student.flip: Input should be a valid boolean, got 1"),
    ("student.flip", "yes", 'student.flip: Input should be a valid boolean, got "yes" (a string in YAML 1.2'),
    ("teacher.flip", "true", 'teacher.flip: Input should be a valid boolean, got "true"'),
    ("data.mirror", 3, "data.mirror: Input should be a valid string, got 3"),
    ("data.max_train", "100", 'data.max_train: Input should be a valid integer, got "100"'),
    ("distributed.processes", 2.0, "distributed.processes: Input should be a valid integer, got 2.0"),
]


@pytest.mark.parametrize("key,value,message", BAD, ids=[f"{k}={v!r}" for k, v, _ in BAD])
def test_bad_value_names_the_key(tmp_path, key, value, message):
    path = write(tmp_path, _set(key, value))
    with pytest.raises(ParamsError) as err:
        load_params(path)
    assert message in str(err.value)


GOOD = [
    ("teacher.lr", 1, 1.0),  # an int is a float
    ("temperature", 0.01, 0.01),
    ("temperature", 1000, 1000.0),
    ("seed", 2**32 - 1, 2**32 - 1),
    ("student.jitter", 27, 27),
    # A mirror that does not exist is no params error: prepare downloads instead (test_download.py).
    ("data.mirror", "/nonexistent/mirror", "/nonexistent/mirror"),
]


@pytest.mark.parametrize("key,value,read", GOOD, ids=[f"{k}={v!r}" for k, v, _ in GOOD])
def test_edge_values_are_accepted(tmp_path, key, value, read):
    params = load_params(write(tmp_path, _set(key, value)))
    *parents, leaf = key.split(".")
    node = params
    for k in parents:
        node = getattr(node, k)
    got = getattr(node, leaf)
    assert got == read and type(got) is type(read)


# Spellings that YAML 1.1 (PyYAML) and YAML 1.2 (DVC) read differently, as typed by hand.
SPELLINGS = [
    ("seed: 0", "seed: 010", "seed", 10),            # YAML 1.1: octal 8
    ("seed: 0", "seed: 0o10", "seed", 8),            # YAML 1.1: the string "0o10"
    ("temperature: 20", "temperature: 2e1", "temperature", 20.0),  # YAML 1.1: the string "2e1"
    ("  lr: 0.05", "  lr: 5e-2", "teacher.lr", 0.05),
]


@pytest.mark.parametrize("old,new,key,value", SPELLINGS, ids=[n for _, n, _, _ in SPELLINGS])
def test_params_are_read_as_dvc_reads_them(tmp_path, old, new, key, value):
    from dvc.utils.serialize import load_yaml  # what DVC hashes and records in dvc.lock

    text = (REPO / "params.yaml").read_text()
    assert old in text
    path = tmp_path / "params.yaml"
    path.write_text(text.replace(old, new, 1))
    dvc = load_yaml(str(path))
    params = load_params(path)
    node, ours = dvc, params
    for k in key.split("."):
        node, ours = node[k], getattr(ours, k)
    assert node == ours == value
    assert parse_yaml(path.read_text()) == dvc


def test_duplicate_key_is_an_error(tmp_path):
    path = write(tmp_path, lambda params: None)
    path.write_text(path.read_text() + "temperature: 5\n")  # PyYAML: the last one silently won
    with pytest.raises(ParamsError, match='(?s)not valid YAML: .*found duplicate key "temperature" with value "5" \\(original value: "20"\\)\n  at line \\d+, column 1'):
        load_params(path)


def test_training_set_checks_name_the_params(tmp_path):
    def edit(params):
        params["data"]["max_train"] = 1
        params["omit_classes"] = [5]
    p = load_params(write(tmp_path, edit))
    with pytest.raises(ParamsError, match=r"omit_classes: \[5\] leaves the student no training images: "
                                          r"data.max_train: 1 keeps only"):
        check_training_set(p, "student", 0)
    check_training_set(p, "student", 1)
    p = p.model_copy(update={"distributed": p.distributed.model_copy(update={"processes": 2})})
    with pytest.raises(ParamsError, match="distributed.processes: 2 processes for the teacher's 1 training image"):
        check_training_set(p, "teacher", 1)
    check_training_set(p, "teacher", 2)


def test_edited_seed_trains_what_dvc_records(built_project, tmp_path):
    """`seed: 010` trained with PyYAML's octal 8 while DVC recorded 10; changing it to
    `seed: 10` then left the seed-8 models in place, "up to date"."""
    src, _ = built_project
    proj = tmp_path / "proj"
    shutil.copytree(src, proj, symlinks=True, ignore=shutil.ignore_patterns("mlflow.db", "mlartifacts"))
    env = {"KD_TRACKING": "0", "PYTHONPATH": "src"}  # as dvc.yaml runs the stages
    path = proj / "params.yaml"
    text = path.read_text()
    assert "\nseed: 0\n" in text
    path.write_text(text.replace("\nseed: 0\n", "\nseed: 010\n"))
    assert "train_baseline" in stages_run(sh([sys.executable, "-m", "dvc", "repro", "train_baseline"], proj, env=env))
    lock = parse_yaml((proj / "dvc.lock").read_text())
    assert lock["stages"]["train_baseline"]["params"]["params.yaml"]["seed"] == 10
    trained = torch.load(proj / "models/baseline.pt", weights_only=True)["state_dict"]
    path.write_text(text.replace("\nseed: 0\n", "\nseed: 10\n"))
    status = sh([sys.executable, "-m", "dvc", "status", "train_baseline"], proj, env=env)
    assert "up to date" in status.stdout
    sh([sys.executable, "stages/train_baseline.py"], proj, env=env)  # what seed 10 trains
    again = torch.load(proj / "models/baseline.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(trained[k], again[k]) for k in trained)


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


PROFILES = sorted(p.stem for p in (REPO / "profiles").glob("*.yaml"))


@pytest.mark.parametrize("profile", PROFILES)
def test_a_profile_lists_only_params_keys_that_differ_from_the_defaults(profile):
    changes = profiles.delta(profile, REPO)
    assert set(changes) <= _KEYS  # delta() names an unknown key; this is its contract
    default = profiles._flat(profiles.defaults(root=REPO))
    assert not [k for k, v in changes.items() if default[k] == v], "a profile lists only what differs"
    assert (profile == "default") == (not changes)


@pytest.mark.parametrize("profile", PROFILES)
def test_an_applied_profile_is_a_valid_params_file(profile, tmp_path):
    out = profiles.apply(profile, REPO, out=tmp_path / "params.yaml")
    params = load_params(out)
    assert params.data.dataset == ("mnist" if profile == "default" else profile.split("-")[0])  # cifar10-cpu, mnist-hinton
    assert parse_yaml(out.read_text()) == profiles.load_profile(profile, REPO)
    assert params.data.mirror == "../shared/datasets"  # the same relative default as params.yaml
    # Its own comments replace the defaults' remarks on the values it changes.
    if profile.startswith("cifar10"):
        assert "784-1200-1200-10" not in out.read_text() and "0.1 diverged" not in out.read_text()


def test_the_committed_params_file_holds_the_default_profile():
    # params.yaml is `make profile P=default`'s output; a key added to one must be added to the other.
    assert parse_yaml((REPO / "params.yaml").read_text()) == profiles.load_profile("default", REPO)


def test_applying_a_profile_starts_from_the_defaults_not_from_the_last_profile(tmp_path):
    shutil.copytree(REPO / "profiles", tmp_path / "profiles")
    profiles.apply("cifar10-cpu", tmp_path)
    profiles.apply("mnist-hinton", tmp_path)
    assert parse_yaml((tmp_path / "params.yaml").read_text()) == profiles.load_profile("mnist-hinton", REPO)
    assert profiles.dvc_args("mnist-hinton", tmp_path) == []
    profiles.apply("default", tmp_path)
    assert profiles.dvc_args("cifar10-cpu", tmp_path)[:4] == ["-S", "temperature=4", "-S", "data.dataset=cifar10"]


def test_a_typo_in_a_profile_is_named_and_nothing_is_written(tmp_path):
    shutil.copytree(REPO / "profiles", tmp_path / "profiles")
    (tmp_path / "params.yaml").write_text("untouched\n")
    (tmp_path / "profiles" / "typo.yaml").write_text("teacher:\n  epocs: 10\n")
    with pytest.raises(profiles.ProfileError, match="unknown params key.*teacher.epocs"):
        profiles.apply("typo", tmp_path)
    (tmp_path / "profiles" / "bad.yaml").write_text("alpha: 2\n")  # a known key, a bad value
    with pytest.raises(profiles.ProfileError, match="alpha"):
        profiles.apply("bad", tmp_path)
    with pytest.raises(profiles.ProfileError, match="no such profile"):
        profiles.apply("nonesuch", tmp_path)
    assert (tmp_path / "params.yaml").read_text() == "untouched\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml", "profiles"]  # no temp file left


def test_several_views_need_student_augmentation(tmp_path):
    def edit(params):
        params["soft_labels"] = {"mode": "cached", "views": 4}
        params["student"].update(jitter=0, flip=False)
    with pytest.raises(ParamsError, match="soft_labels.views: 4 views are all the same image"):
        load_params(write(tmp_path, edit))


def test_parse_yaml_hands_out_copies_of_what_it_caches():
    first = parse_yaml("a: {b: [1, 2]}")
    first["a"]["b"].append(3)
    assert parse_yaml("a: {b: [1, 2]}") == {"a": {"b": [1, 2]}}
