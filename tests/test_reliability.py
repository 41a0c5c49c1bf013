"""No silent wrong results (issue #17): params edited while a stage runs, resume
after a code change, failures after training, and what killed runs leave behind.
Each runs real stage scripts (or `dvc repro`) on a copy of the built tiny project."""
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
import yaml

from conftest import set_param, sh, stages_run
from system import unavailable
from kd.dvc_stage import stage_fingerprint
from kd.files import file_md5
from kd.params import load_params
from kd.process_id import this_process


def copy_project(built_project, dst, *, dvc=False):
    src, _ = built_project
    skip = ["__pycache__", "mlflow.db", "mlartifacts", ".resume"] + ([] if dvc else [".git", "cache", "raw"])
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(*skip))
    return dst


@pytest.fixture
def proj(built_project, tmp_path):
    return copy_project(built_project, tmp_path / "proj")


def env(**extra):
    base = {k: v for k, v in os.environ.items() if k not in ("DVC_ROOT", "MLFLOW_TRACKING_URI")}
    return {**base, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",  # `python` of dvc.yaml
            "DVC_NO_ANALYTICS": "1", "KD_TRACKING": "0", "OMP_NUM_THREADS": "1",
            "PYTHONPATH": "src", **extra}  # as dvc.yaml's cmd lines set it, for stage scripts run directly


def run_stage(proj, name, **extra):
    return subprocess.run([sys.executable, f"stages/{name}.py"], cwd=proj, env=env(**extra),
                          capture_output=True, text=True, timeout=300)


def resume_states(proj, stage="train_teacher"):
    return sorted((proj / ".resume").glob(f"{stage}-*.pt"))


def hold_and_edit(cmd, proj, hold, edit, **extra):
    """Run cmd with the stage held after epoch 1 (KD_HOLD_AFTER_EPOCH), edit the
    project meanwhile, let it finish; returns (returncode, output)."""
    p = subprocess.Popen(cmd, cwd=proj, env=env(KD_HOLD_AFTER_EPOCH=f"1:{hold}", **extra),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 240
        while not hold.exists() and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert hold.exists(), "the stage never reached the end of epoch 1"
        edit()
        hold.unlink()
        out, _ = p.communicate(timeout=300)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    return p.returncode, out


# --- 1. params.yaml edited while a stage runs ------------------------------------

def test_params_edited_during_dvc_repro_fail_the_stage_and_dvc_records_nothing(built_project, tmp_path):
    proj = copy_project(built_project, tmp_path / "proj", dvc=True)
    dvc = [sys.executable, "-m", "dvc"]
    locked = lambda: yaml.safe_load((proj / "dvc.lock").read_text())["stages"]["train_teacher"]["params"][
        "params.yaml"]["teacher"]["epochs"]
    before = locked()
    set_param(proj, "teacher.epochs", 3)
    rc, out = hold_and_edit([*dvc, "repro", "-s", "train_teacher"], proj, tmp_path / "hold",
                            lambda: set_param(proj, "teacher.epochs", 4))
    assert rc != 0, out
    assert "[train_teacher] error: params.yaml changed while the stage ran (teacher.epochs: 3 -> 4)" in out
    assert locked() == before  # not the 3-epoch result filed under epochs: 4
    assert "train_teacher" in sh([*dvc, "status", "train_teacher"], proj).stdout
    rerun = sh([*dvc, "repro", "-s", "train_teacher"], proj, env={"KD_TRACKING": "0"})
    assert stages_run(rerun) == {"train_teacher"} and "cached" not in rerun.stdout
    assert json.loads((proj / "metrics/teacher.json").read_text())["epochs"] == 4 == locked()


def test_params_file_made_unreadable_during_a_run_is_a_clear_error(proj, tmp_path):
    set_param(proj, "teacher.epochs", 2)
    rc, out = hold_and_edit([sys.executable, "stages/train_teacher.py"], proj, tmp_path / "hold",
                            lambda: (proj / "params.yaml").write_bytes(b"teacher:\xff\xfe\n"))
    assert rc == 2, out
    assert "[train_teacher] error: params.yaml changed while the stage ran and cannot be read now" in out
    assert "Traceback" not in out
    assert len(resume_states(proj)) == 1  # kept: the same params rerun from it


# --- 2. the resume key covers the stage's code -------------------------------------

def test_resume_state_is_not_used_after_a_code_change(proj, tmp_path):
    set_param(proj, "teacher.epochs", 3)
    assert run_stage(proj, "train_teacher", KD_CRASH_AFTER_EPOCH="2").returncode == -9
    losses = proj / "src/kd/losses.py"
    before = losses.read_text()
    losses.write_text(before.replace('label_smoothing=label_smoothing)', 'label_smoothing=0.1)', 1))
    assert losses.read_text() != before  # the code the teacher trains with did change
    twin = tmp_path / "twin"
    shutil.copytree(proj, twin, ignore=shutil.ignore_patterns(".resume"))
    resumed = run_stage(proj, "train_teacher")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" not in resumed.stdout
    assert run_stage(twin, "train_teacher").returncode == 0
    a = torch.load(proj / "models/teacher.pt", weights_only=True)["state_dict"]
    b = torch.load(twin / "models/teacher.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_resume_key_is_what_dvc_yaml_declares(proj, monkeypatch):
    monkeypatch.chdir(proj)
    key = lambda: stage_fingerprint("train_teacher", load_params(), "stages/train_teacher.py")
    first = key()
    set_param(proj, "temperature", 3)  # not a param of train_teacher
    (proj / "src/kd/__pycache__").mkdir(exist_ok=True)
    (proj / "src/kd/__pycache__/losses.cpython-311.pyc").write_bytes(b"bytecode")
    assert key() == first
    set_param(proj, "teacher.lr", 0.01)
    second = key()
    assert second != first
    (proj / "src/kd/augment.py").write_text((proj / "src/kd/augment.py").read_text() + "\n# edited\n")
    assert key() != second
    # A stage run by hand without a dvc.yaml entry: all params and its script.
    (proj / "dvc.yaml").unlink()
    third = key()
    set_param(proj, "temperature", 4)
    assert key() != third


# --- 7. a failure after training ---------------------------------------------------

def mlflow_runs(proj):
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{proj}/mlflow.db")
    exp = client.get_experiment_by_name("kd-mnist")
    return client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])


def test_unwritable_output_folder_fails_before_training_and_marks_runs_failed(proj):
    # A folder the stage writes into, checked before it trains rather than at its last write.
    # (Tests run as root here, so a directory made read-only would not stop a write.)
    shutil.rmtree(proj / "metrics/timing")
    (proj / "metrics/timing").write_text("a file where a directory should be")
    failed = run_stage(proj, "train_teacher", KD_TRACKING="1")
    assert failed.returncode == 2, failed.stderr
    errors = [line for line in failed.stderr.splitlines() if "error" in line.lower()]
    assert errors == ["[train_teacher] error: metrics/timing/: cannot write there (File exists), "
                      "where stage train_teacher writes its outputs"], failed.stderr
    assert "epoch" not in failed.stdout  # before the first epoch
    assert {r.info.run_name: r.info.status for r in mlflow_runs(proj)} == {"train_teacher": "FAILED",
                                                                          "no-commit": "FAILED"}
    (proj / "metrics/timing").unlink()
    rerun = run_stage(proj, "train_teacher")
    assert rerun.returncode == 0, rerun.stderr
    assert resume_states(proj) == []


def test_far_out_epochs_are_a_one_line_warning(proj):
    set_param(proj, "teacher.epochs", 100000)
    checked = run_stage(proj, "check_params")
    assert checked.returncode == 0, checked.stderr
    assert "[check_params] warning: teacher.epochs: 100000 is far beyond the usual (at most a few hundred); " \
           "training runs them all" in checked.stdout


def test_file_size_limit_after_training_fails_clearly_and_the_rerun_resumes(proj):
    assert run_stage(proj, "train_teacher", KD_CRASH_AFTER_EPOCH="2").returncode == -9  # trained, nothing written
    limit = lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (4 << 20, 4 << 20))  # `ulimit -f 4096`
    full = subprocess.run([sys.executable, "stages/train_teacher.py"], cwd=proj, env=env(), capture_output=True,
                          text=True, timeout=300, preexec_fn=limit)
    assert full.returncode == 2, full.stderr
    assert "[train_teacher] error: models/teacher.pt: cannot write it (File too large)" in full.stderr
    assert "Traceback" not in full.stderr
    assert not list((proj / "models").glob(".*.tmp"))
    rerun = run_stage(proj, "train_teacher")
    assert rerun.returncode == 0 and "resuming after epoch 2" in rerun.stdout


# --- 8. what killed runs leave behind -------------------------------------------------

def test_stage_start_cleans_up_after_killed_runs(proj):
    killed = run_stage(proj, "train_teacher", KD_TRACKING="1", KD_CRASH_AFTER_EPOCH="1")
    assert killed.returncode == -9
    assert {r.info.status for r in mlflow_runs(proj)} == {"RUNNING"}  # the child and its parent
    dead = subprocess.Popen(["true"])
    dead.wait()
    me = this_process()  # "pid@start time"
    stale = [proj / f".resume/.train_teacher-0123.pt.{dead.pid}@{time.time()}.abc_1.tmp",
             proj / f"metrics/.teacher.json.{me.split('@')[0]}@1.5.xyz.tmp",  # an earlier process of this pid
             proj / f"metrics/.teacher.json.{os.getpid()}.xyz.tmp"]  # no start time: whose it was is unknown
    live = proj / f"metrics/.teacher.json.{me}.xyz.tmp"  # this test process: still running
    for f in [*stale, live]:
        f.write_bytes(b"half a file")
    old = []
    for i, age_days in enumerate([0.1, 0.2, 0.3, 8]):  # states of other params or code
        old.append(proj / f".resume/train_teacher-old{i}.pt")
        old[-1].write_bytes(b"state")
        mtime = time.time() - age_days * 86400
        os.utime(old[-1], (mtime, mtime))
    rerun = run_stage(proj, "train_teacher", KD_TRACKING="1")
    assert rerun.returncode == 0, rerun.stderr
    assert "resuming after epoch 1" in rerun.stdout
    assert not any(f.exists() for f in stale) and live.exists()
    assert [p.exists() for p in old] == [True, True, False, False]  # the newest 2, and none over 7 days
    runs = mlflow_runs(proj)
    assert [r.info.status for r in runs] == ["KILLED", "KILLED", "FINISHED", "FINISHED"]  # old, then new
    assert "marked MLflow run" in rerun.stderr


# --- 9. faults from outside the pipeline (issue #31) -------------------------------

def dvc_cmd(*args):
    return [sys.executable, "-m", "dvc", *args]


def locked_out_md5(proj, stage, path):
    outs = yaml.safe_load((proj / "dvc.lock").read_text())["stages"][stage]["outs"]
    return next(o["md5"] for o in outs if o["path"] == path)


def test_a_damaged_cache_object_is_refused_by_the_first_stage_that_loads_it_and_the_printed_repair_works(
        built_project, tmp_path):
    proj = copy_project(built_project, tmp_path / "proj", dvc=True)
    good = json.loads((proj / "metrics/evaluate.json").read_text())
    md5 = locked_out_md5(proj, "train_teacher", "models/teacher.pt")
    obj = proj / ".dvc/cache/files/md5" / md5[:2] / md5[2:]
    obj.chmod(0o644)  # DVC keeps its objects read-only
    blob = bytearray(obj.read_bytes())
    blob[len(blob) // 2:len(blob) // 2 + 4096] = bytes(4096)  # weights zeroed; still a loadable file
    obj.write_bytes(bytes(blob))
    (proj / "models/teacher.pt").unlink()
    sh(dvc_cmd("checkout"), proj)  # restores the damaged copy, and says nothing
    failed = sh(dvc_cmd("repro", "-f", "-s", "evaluate"), proj, check=False, env={"KD_TRACKING": "0"})
    assert failed.returncode != 0
    errors = [line for line in failed.stderr.splitlines() if "[evaluate] error" in line]
    assert len(errors) == 1, failed.stdout + failed.stderr
    assert errors[0].startswith(f"[evaluate] error: models/teacher.pt: md5 {file_md5(obj)}, but dvc.lock records "
                                f"{md5} for train_teacher's output"), errors[0]
    repair = errors[0].split("repair: `")[1].rstrip("`")
    assert repair == f"rm -f .dvc/cache/files/md5/{md5[:2]}/{md5[2:]} models/teacher.pt && dvc repro"
    fixed = sh(["sh", "-c", repair], proj, env={"KD_TRACKING": "0"})
    assert "train_teacher" in stages_run(fixed)
    assert file_md5(proj / "models/teacher.pt") == md5 == file_md5(obj)  # retrained bit-identically, recached
    rerun = sh(dvc_cmd("repro", "-f", "-s", "evaluate"), proj, env={"KD_TRACKING": "0"})
    assert json.loads((proj / "metrics/evaluate.json").read_text())["teacher"] == good["teacher"], rerun.stdout


def test_a_damaged_file_of_a_directory_output_is_refused_too(built_project, tmp_path):
    proj = copy_project(built_project, tmp_path / "proj", dvc=True)
    test_md5 = file_md5(proj / "data/prepared/test.pt")
    obj = proj / ".dvc/cache/files/md5" / test_md5[:2] / test_md5[2:]
    obj.chmod(0o644)
    with open(obj, "r+b") as f:  # in place, as a disk error would
        f.seek(obj.stat().st_size // 2)
        f.write(b"\xff" * 64)
    shutil.copyfile(obj, proj / "data/prepared/test.pt")  # what `dvc checkout` would restore
    failed = run_stage(proj, "evaluate")
    assert failed.returncode == 2
    assert f"[evaluate] error: data/prepared/test.pt: md5 {file_md5(obj)}, but dvc.lock records {test_md5} " \
           "for prepare's output" in failed.stderr
    assert "Traceback" not in failed.stderr


def test_inputs_rebuilt_by_hand_are_not_taken_for_damage(built_project, tmp_path):
    # The teacher differs from dvc.lock, but its cache object is sound: a newer file, not a damaged one.
    proj = copy_project(built_project, tmp_path / "proj", dvc=True)
    set_param(proj, "teacher.lr", 0.05)
    assert run_stage(proj, "train_teacher").returncode == 0
    rebuilt = run_stage(proj, "evaluate")
    assert rebuilt.returncode == 0, rebuilt.stderr


def gone(pid):
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE  # an orphan nobody reaped yet
    except psutil.NoSuchProcess:
        return True


def stage_pid(proj, stage="train_teacher"):
    return int((proj / f".resume/{stage}.lock").read_text().partition("@")[0])


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGKILL], ids=lambda s: s.name)
def test_a_stage_stops_with_its_dvc_and_the_rerun_resumes(built_project, tmp_path, sig):
    proj = copy_project(built_project, tmp_path / "proj", dvc=True)
    set_param(proj, "teacher.epochs", 3)
    hold, log = tmp_path / "hold", tmp_path / "dvc.log"
    with open(log, "w") as out:  # not a pipe: the orphaned stage would block on a full one
        dvc = subprocess.Popen(dvc_cmd("repro", "-s", "train_teacher"), cwd=proj, stdout=out, stderr=out,
                               env=env(KD_HOLD_AFTER_EPOCH=f"1:{hold}", KD_TRACKING="1"), start_new_session=True,
                               # as from a terminal, even when pytest runs under nohup (SIGHUP ignored, inherited)
                               preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 240
        while not hold.exists() and dvc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert hold.exists(), log.read_text()
        pid = stage_pid(proj)
        os.kill(dvc.pid, sig)  # dvc alone, as `kill <pid of dvc>` does
        dvc.wait(timeout=30)
        deadline = time.monotonic() + 10
        while not gone(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert gone(pid), f"train_teacher (pid {pid}) still runs after its dvc got {sig.name}"
    finally:
        if dvc.poll() is None:
            dvc.kill()
    assert "[train_teacher] stopped: its dvc process" in log.read_text()
    assert {r.info.status for r in mlflow_runs(proj)} == {"KILLED"}  # marked by the stage itself
    assert len(resume_states(proj)) == 1
    rerun = sh(dvc_cmd("repro", "-s", "train_teacher"), proj, env={"KD_TRACKING": "0"})
    assert "resuming after epoch 1" in rerun.stdout + rerun.stderr
    assert json.loads((proj / "metrics/teacher.json").read_text())["epochs"] == 3


def test_a_second_run_of_a_running_stage_is_refused_naming_the_first(proj, tmp_path):
    hold = tmp_path / "hold"
    first = subprocess.Popen([sys.executable, "stages/train_teacher.py"], cwd=proj, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, env=env(KD_HOLD_AFTER_EPOCH=f"1:{hold}"))
    try:
        deadline = time.monotonic() + 240
        while not hold.exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert hold.exists()
        second = run_stage(proj, "train_teacher")
        assert second.returncode == 2
        assert second.stderr.strip() == (f"[train_teacher] error: stage train_teacher is already running in this "
                                         f"workspace (pid {first.pid}); wait for it to end, or stop it "
                                         f"(`kill {first.pid}`) and rerun")
        hold.unlink()
        assert first.wait(timeout=240) == 0
    finally:
        if first.poll() is None:
            first.kill()
    assert run_stage(proj, "train_teacher").returncode == 0  # the lock went with the first process


def test_a_resume_state_whose_outputs_dvc_holds_is_removed_when_a_stage_starts(built_project, tmp_path):
    # A train_teacher killed before writing anything, with the params dvc.lock records: its
    # outputs are in the workspace as dvc.lock has them (as after a run-cache restore).
    proj = copy_project(built_project, tmp_path / "proj", dvc=True)
    assert run_stage(proj, "train_teacher", KD_CRASH_AFTER_EPOCH="1").returncode == -9
    other = proj / ".resume/train_teacher-0123456789abcdef.pt"  # of other inputs: kept for a rerun
    other.write_bytes(b"state")
    [state] = [p for p in resume_states(proj) if p != other]
    evaluated = run_stage(proj, "evaluate")
    assert evaluated.returncode == 0, evaluated.stderr
    assert f"[evaluate] removed {state}: DVC holds that stage's outputs for those inputs" in evaluated.stdout
    assert resume_states(proj) == [other]


def test_a_clock_step_does_not_stop_a_stage_whose_dvc_lives(monkeypatch):
    """A process's wall-clock start time is the kernel's btime plus its start since boot; a
    clock step can carry btime over a second boundary (it stopped two live stages on 2026-12-07)."""
    if not sys.platform.startswith("linux"):
        unavailable("steps the clock as Linux's /proc/stat reports it")  # fails under CI=true
    import psutil._pslinux

    from kd_pipeline import parent_watch

    dvc = psutil.Process(os.getppid())
    assert not parent_watch._gone(dvc)
    started = psutil.Process(dvc.pid).create_time()
    real = psutil._pslinux.boot_time
    monkeypatch.setattr(psutil._pslinux, "boot_time", lambda: real() + 1)  # btime one second on
    assert psutil.Process(dvc.pid).create_time() == started + 1  # what the old check compared
    assert not parent_watch._gone(dvc)
    ended = subprocess.Popen([sys.executable, "-c", ""])
    process = psutil.Process(ended.pid)
    ended.wait()
    assert parent_watch._gone(process)


def test_a_fork_of_a_stage_dies_of_sigterm_wherever_it_is():
    """The stage's SIGTERM handler raises Stopped between bytecodes. A fork of it (a decoding
    worker) must die of the signal at once: one that got it just before it blocked on its
    pool's lock slept for good, and a CI run's prepare hung 20 min in the pool's join()."""
    import multiprocessing

    from kd_pipeline import parent_watch

    handlers = parent_watch.stop_on_signals()
    r, w = os.pipe()
    try:
        child = multiprocessing.get_context("fork").Process(target=os.read, args=(r, 1))
        child.start()  # blocks reading a pipe that nobody writes
        child.terminate()
        child.join(30)
        assert child.exitcode == -signal.SIGTERM  # not 1: Stopped raised in the child
        assert signal.getsignal(signal.SIGTERM) is parent_watch._raise_stopped  # the stage keeps its own
    finally:
        parent_watch.restore_signals(handlers)
        os.close(r), os.close(w)
