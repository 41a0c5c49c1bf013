"""DDP: sharded batches, and a 2-process gloo run that matches the single-process one."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import REPO, make_toy_images
from kd.datasets import builtin_spec
from kd.files import load_torch, save_torch, write_json
from kd.params import ParamsError, load_params
from kd.loop import TensorBatches

CPU = torch.device("cpu")


def batches(toy, rank=0, world=1, n=None, y=None):
    x, labels = toy
    y = labels[:n] if y is None else y
    return TensorBatches(x[:n], y, 32, seed=3, jitter=2, flip=True, rank=rank, world=world)


@pytest.mark.parametrize("n", [300, 299])  # 299: the order is padded to split evenly
def test_ranks_split_each_batch_without_overlap_into_the_single_process_batch(toy_images, n):
    ids = torch.arange(n)
    # Image ids as labels, to see which images each batch holds.
    single = list(batches(toy_images, n=n, y=ids).epoch(1, CPU))
    shards = [list(batches(toy_images, r, 2, n=n, y=ids).epoch(1, CPU)) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == len(single) == len(batches(toy_images, 0, 2, n=n))
    for (x, b), (x0, b0), (x1, b1) in zip(single, *shards):
        assert len(b0["y"]) == len(b1["y"])  # DDP averages equally sized shards
        assert not set(b0["y"].tolist()) & set(b1["y"].tolist())
        if len(b0["y"]) + len(b1["y"]) == len(b["y"]):  # every batch but a padded last one
            merged = torch.stack([b0["y"], b1["y"]], 1).flatten()
            assert torch.equal(merged, b["y"])
            # the same shifts and flips as in the single-process batch, image for image
            assert torch.equal(torch.stack([x0, x1], 1).flatten(0, 1), x)
    seen = torch.cat([b["y"] for s in shards for _, b in s])
    assert set(seen.tolist()) == set(range(n)) and len(seen) == n + n % 2


def test_batch_size_must_split_evenly(toy_images, tmp_path):
    with pytest.raises(ValueError, match="multiple of the 3 distributed processes"):
        batches(toy_images, 0, 3)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"]["mirror"] = None
    params["distributed"] = {"processes": 3}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ParamsError, match="teacher.batch_size: 128 is not a multiple of distributed.processes=3"):
        load_params(tmp_path / "params.yaml")


# --- a real stage under torchrun -------------------------------------------------

# PYTHONPATH as dvc.yaml's cmd lines set it (absolute: the tests run stages from other dirs).
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO / "src")}


def make_project(path: Path, toy, processes=1) -> Path:
    x, y = toy
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"]["mirror"] = None
    # No dropout: with it ranks draw other masks than one process would, by design.
    # fp32: bf16 rounding would swamp the summation-order difference the test bounds.
    params["teacher"].update(epochs=2, batch_size=32, dropout=0.0, input_dropout=0.0, jitter=1, precision="fp32")
    params["distributed"] = {"processes": processes}
    path.mkdir(parents=True)
    (path / "params.yaml").write_text(yaml.safe_dump(params))
    save_torch({"x": x[:250], "y": y[:250]}, path / "data/prepared/train.pt")
    save_torch({"x": x[250:], "y": y[250:]}, path / "data/prepared/val.pt")
    write_json(path / "data/prepared/meta.json", builtin_spec("mnist").to_json())  # what prepare writes beside them
    return path


def run(args, cwd):
    out = subprocess.run(args, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"{args} failed:\n{out.stdout}\n{out.stderr}"
    return out.stdout + out.stderr


def files(root: Path) -> set[str]:
    # MLflow's artifact paths hold run and model ids, new on every run; mlflow.db still counts.
    return {str(p.relative_to(root)) for p in root.rglob("*")
            if p.is_file() and p.relative_to(root).parts[0] != "mlartifacts"}


@pytest.fixture(scope="module")
def single(tmp_path_factory, toy_images_module):
    proj = make_project(tmp_path_factory.mktemp("single") / "p", toy_images_module)
    run([sys.executable, str(REPO / "stages/train_teacher.py")], proj)
    return proj


@pytest.fixture(scope="module")
def toy_images_module():
    return make_toy_images()


def test_two_gloo_processes_match_one_and_only_rank0_writes(tmp_path, single, toy_images_module):
    ranks = [make_project(tmp_path / f"rank{r}", toy_images_module) for r in (0, 1)]
    before = [files(p) for p in ranks]
    log = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(REPO / "tests/rank_cwd.py"), str(REPO / "stages/train_teacher.py")], tmp_path)
    assert "processes=2" in log
    assert files(ranks[1]) == before[1], "rank 1 wrote files"
    assert files(ranks[0]) == files(single)

    # Same global batches, shifts and learning-rate steps; the only difference is
    # float summation order in the gradient average, so the weights agree to 1e-5.
    one, two = (load_torch(p / "models/teacher.pt")["state_dict"] for p in (single, ranks[0]))
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=0, atol=1e-5, msg=name)
    m1, m2 = (json.loads((p / "metrics/teacher.json").read_text()) for p in (single, ranks[0]))
    assert m2["val_acc"] == pytest.approx(m1["val_acc"], abs=0.01)  # at most 1 of 50 images flips
    assert m2["train_acc"] == pytest.approx(m1["train_acc"], abs=0.01)
    assert m2["val_loss"] == pytest.approx(m1["val_loss"], rel=1e-3)


def test_processes_param_relaunches_the_stage_under_torchrun(tmp_path, single, toy_images_module):
    proj = make_project(tmp_path / "p", toy_images_module, processes=2)
    log = run([sys.executable, str(REPO / "stages/train_teacher.py")], proj)
    assert "relaunching under torchrun" in log and "processes=2" in log
    assert log.count("finished in") == 1  # rank 0 only
    assert files(proj) == files(single)


def test_a_stage_that_cannot_train_distributed_refuses_torchrun(tmp_path, toy_images_module):
    proj = make_project(tmp_path / "p", toy_images_module)
    env = {**ENV, "WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}  # as torchrun sets them
    out = subprocess.run([sys.executable, str(REPO / "stages/generate_soft_labels.py")], cwd=proj, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "generate_soft_labels does not run under torchrun" in out.stderr
    assert not (proj / "metrics").exists()
