"""`make poster` (python -m kd_study.poster): which experiments it queues, that only
experiments whose params or pipeline code changed run again, that a failed one is
reported and makes the command fail, that experiments share their teacher through
DVC's run-cache, and the report's arithmetic."""
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from conftest import PROJECT_FILES, REPO, need_mirror, sh
from kd.params import flatten
from kd.paths import metrics_file
from kd_study import dvc_exps, poster
from kd_study.experiments import FAILED, Experiment, PosterError, profile_overrides
from kd_study.experiments import (BUDGETS, CIFAR_SEEDS, STUDY_TEACHER_EPOCHS, WEAK_TEACHER_EPOCHS, choose,
                                  choose_hinton_student, choose_hinton_teacher, choose_teachers, hinton_final,
                                  hinton_missed, hinton_students, plan, reversed_tuning_runs, study_runs)
from kd_study.report import followup_reading, followup_summary, verdict, write_report
from kd_study.runs import gain_test, pct

EVALUATION = metrics_file("evaluate").as_posix()
SMALL = ["--parts", "mnist", "--seeds", "0", "1", "--temperatures", "20"]
SMALL_NAMES = {"mnist-T20-s0", "mnist-T20-s1", "mnist-omit3-s0", "mnist-omit3-s1"}


def test_profile_overrides_are_the_changed_leaves():
    base = {"temperature": 20, "data": {"dataset": "mnist", "mirror": "m"}, "omit_classes": []}
    profile = {"temperature": 4, "data": {"dataset": "cifar10", "mirror": "m"}, "omit_classes": []}
    assert profile_overrides(base, profile) == {"temperature": 4, "data.dataset": "cifar10"}
    with pytest.raises(PosterError, match="data.mirror"):
        profile_overrides(base, {"temperature": 4, "data": {"dataset": "cifar10"}, "omit_classes": []})


def test_set_args_are_yaml_values_dvc_parses():
    exp = Experiment("x", "mnist", "omit", 0, {"omit_classes": [3], "teacher.flip": True,
                                               "data.mirror": None, "teacher.weight_decay": 0.0005})
    assert exp.set_args() == ["-S", "omit_classes=[3]", "-S", "teacher.flip=true", "-S", "data.mirror=null",
                              "-S", "teacher.weight_decay=0.0005"]


def test_the_poster_list():
    by_part = plan(REPO)
    exps = [e for part in by_part.values() for e in part]
    names = [e.name for e in exps]
    # hinton phase 1: 3 teacher lengths; cifar phase 1: 6 vgg5 candidates and the vgg8 teacher, 3
    # true-label students, 2 x 6 grid points (reversed's waits for its teacher), 3 smoothing;
    # methods phase 1: 3 pair-budgets x 5 methods x 4 settings
    assert len(names) == len(set(names)) == 21 + 3 + (6 + 1 + 3 + 12 + 3) + 3 * 5 * 4
    mnist = by_part["mnist"]
    assert {e.overrides["temperature"] for e in mnist if e.kind == "sweep"} == {1, 2, 4, 8, 20, 50}
    assert all(e.overrides.get("omit_classes") == [3] for e in mnist if e.kind == "omit")
    for kind in {e.kind for e in mnist}:  # every MNIST comparison over >= 3 seeds
        assert len({e.seed for e in exps if e.kind == kind}) >= 3
    # No phase-1 run sets the teacher's seed: they share one teacher per setting.
    assert not any("teacher.seed" in e.overrides for e in exps)


def test_the_hinton_study_chooses_on_validation_then_trains_on_every_image():
    tuning = plan(REPO, ["hinton"])["hinton"]
    assert [e.overrides["teacher.epochs"] for e in tuning] == [150, 300, 600]
    assert all(e.targets == ("train_teacher",) and e.seed == 100 for e in tuning)
    assert all(e.overrides["teacher.dropout"] == 0.5 and e.overrides["teacher.input_dropout"] == 0.2
               and e.overrides["teacher.max_norm"] == 3.5 for e in tuning)
    teacher, student = metrics_file("teacher").as_posix(), metrics_file("student").as_posix()
    val = {150: 0.990, 300: 0.992, 600: 0.992}  # ties go to the shorter
    assert choose_hinton_teacher([(e, None) for e in tuning]) is None
    assert choose_hinton_teacher([(e, {teacher: {"val_acc": val[e.overrides["teacher.epochs"]]}})
                                  for e in tuning]) == 300
    grid = [Experiment(f"{s.name}-s100", "hinton", s.kind, 100, s.overrides) for s in hinton_students(REPO, 300)]
    assert {(e.overrides["alpha"], e.overrides["student.epochs"]) for e in grid} == {(0.5, 20), (0.5, 60),
                                                                                     (0.9, 20), (0.9, 60)}
    assert all(e.overrides["teacher.epochs"] == 300 and e.overrides["temperature"] == 20 for e in grid)
    picked = choose_hinton_student([(e, {student: {"val_acc": 0.99 + (e.overrides["alpha"] == 0.9) / 1000}})
                                    for e in grid])
    assert picked == {"teacher.epochs": 300, "alpha": 0.9, "student.epochs": 20}
    (final,) = hinton_final(REPO, picked)
    assert final.overrides["data.val_size"] == 0 and final.overrides["teacher.max_norm"] == 3.5
    assert {k: final.overrides[k] for k in picked} == picked
    assert hinton_missed([72, 74, 76], (0, 1, 2)) is False and hinton_missed([73, 74, 76], (0, 1, 2)) is True
    assert hinton_missed([60, 60], (0, 1, 2)) is None  # a seed still running: no follow-ups yet
    # the design's reading: below the final's mean by more than both standard deviations
    final = [88, 91, 88]  # 89.0 +/- 1.7
    assert followup_reading([84, 80, 77], final, 3) == "-8.7 (the larger std 3.5): accounts for part of the gap"
    assert followup_reading([87, 86, 89], final, 3).endswith("does not account for it")  # -1.7, not > 1.7
    assert followup_reading([70, 71], final, 3) == "2 of 3 seeds: no reading yet"
    # once every factor has its seeds: what the gap is attributable to, and what is left
    results = {"jitter": ([84, 80, 77], [77, 78, 79]), "longer": ([81, 97, 90], [150, 142, 156]),
               "fp32": ([92, 98, 92], [146, 158, 149])}
    assert followup_summary({**results, "fp32": ([92], [146])}, final) is None  # a seed still to run
    assert followup_summary(results, final) == (
        "Every follow-up has run. Accounts for part of the gap: jitter (-8.7 errors). Its true-label student "
        "makes 78.0 errors on the same recipe, no more than the distilled one: the factor helps any student, "
        "not distillation. Closest to 74: jitter, 80.3 errors; the remaining 6.3 errors are not attributable "
        "to any factor tested here.")
    assert followup_summary({"fp32": ([92, 98, 92], [146, 158, 149])}, final).startswith(
        "Every follow-up has run. None of the factors tested accounts for any of the gap. Closest to 74: the final "
        "recipe, 89.0 errors; the remaining 15.0")
    assert followup_summary({"jitter": ([70, 72, 74], [90, 91, 92])}, final) == (
        "Every follow-up has run. Accounts for part of the gap: jitter (-17.0 errors). "
        "74 is reached with jitter: 72.0 errors.")


STUDENT_M, BASELINE_M, TEACHER_M = (metrics_file(r).as_posix() for r in ("student", "baseline", "teacher"))
BASE_VAL = {5: 0.72, 10: 0.80, 30: 0.86}                    # the true-label vgg8 student's validation accuracy


def tuning_metrics(e):
    """vgg5 teachers improve with epochs; grids prefer T=8, alpha 0.5 on validation (never test)."""
    if e.kind == "teacher":
        return {TEACHER_M: {"val_acc": 0.70 + e.overrides["teacher.epochs"] / 400}}
    if e.kind == "base":
        return {BASELINE_M: {"val_acc": BASE_VAL[e.overrides["student.epochs"]]}}
    good = e.overrides.get("temperature") == 8 and e.overrides.get("alpha") == 0.5
    return {STUDENT_M: {"val_acc": 0.9 if good else 0.8},
            BASELINE_M: {"val_acc": 0.7 + e.overrides.get("baseline.label_smoothing", 0)},
            EVALUATION: {"student": {"accuracy": 0.1 if good else 0.99}}}


def test_the_cifar_study_picks_a_weaker_teacher_tunes_on_validation_then_runs_10_seeds_2_teachers():
    tuning = plan(REPO, ["cifar"])["cifar"]
    assert {e.seed for e in tuning} == {100}  # the tuning seed is no evaluation seed
    teachers = [e for e in tuning if e.kind == "teacher"]
    assert {(e.overrides["teacher.arch"], e.overrides["teacher.epochs"]) for e in teachers} == {
        *(("vgg5", n) for n in WEAK_TEACHER_EPOCHS), ("vgg8", STUDY_TEACHER_EPOCHS)}
    assert all(e.targets == ("train_teacher",) for e in teachers)
    assert all(e.targets == ("train_baseline",) for e in tuning if e.kind == "base")
    assert {e.kind for e in tuning if "-T" in e.name} == {"grid-self", "grid-hetero"}
    runs = [(e, tuning_metrics(e)) for e in tuning]
    # The longest-trained vgg5 at least 0.5 points below the student on validation, per budget.
    weak = choose_teachers(runs)
    assert weak == {5: 5, 10: 20, 30: 40}
    assert choose_teachers([(e, None if e.name == "cifar-teacher-vgg5-e3-s100" else m) for e, m in runs]) == {}
    more = reversed_tuning_runs(REPO, weak)
    assert len(more) == 6 and {e.overrides["teacher.epochs"] for e in more} == {20}
    runs += [(e, tuning_metrics(e)) for e in more]
    chosen = choose(runs)
    assert chosen == {kind: {"temperature": 8, "alpha": 0.5} for kind in ("reversed", "self", "hetero")} | {
        "smooth": {"baseline.label_smoothing": 0.2}}
    # An unfinished grid point: that family waits, the others go on.
    partial = [(e, None if e.name == "cifar-self-e10-T2-a0.5-s100" else m) for e, m in runs]
    assert set(choose(partial)) == {"reversed", "hetero", "smooth"}

    study = study_runs(REPO, chosen, weak)
    assert {e.seed for e in study} == set(CIFAR_SEEDS) == set(range(10))
    assert all(e.overrides["teacher.seed"] == e.seed % 2 for e in study)  # 2 teachers, 5 students each
    # One teacher seed's students first, each seed complete before the next.
    order = [e.seed for e in study]
    assert [seed for i, seed in enumerate(order) if i == 0 or seed != order[i - 1]] == [0, 2, 4, 6, 8, 1, 3, 5, 7, 9]
    for kind in ("reversed", "self", "hetero"):
        assert {(e.overrides["student.epochs"], e.seed) for e in study if e.kind == kind} == {
            (b, s) for b in BUDGETS for s in CIFAR_SEEDS}
    assert {(e.overrides["student.epochs"], e.overrides["teacher.epochs"]) for e in study if e.kind == "reversed"} \
        == {(5, 5), (10, 20), (30, 40)}
    assert {e.overrides["teacher.epochs"] for e in study if e.kind != "reversed"} == {STUDY_TEACHER_EPOCHS}
    smooth = [e for e in study if e.kind == "smooth"]
    assert {e.seed for e in smooth} == set(CIFAR_SEEDS) and all(e.overrides["student.epochs"] == 30 for e in smooth)
    # The smoothing run differs from self-KD's run of the same seed only in what train_baseline reads,
    # so its distilled student comes from the run-cache.
    self30 = {e.seed: e.overrides for e in study if e.kind == "self" and e.overrides["student.epochs"] == 30}
    for e in smooth:
        assert {k: v for k, v in e.overrides.items() if k != "baseline.label_smoothing"} == self30[e.seed]
    hetero = next(e for e in study if e.kind == "hetero")
    assert (hetero.overrides["teacher.arch"], hetero.overrides["student.arch"]) == ("vgg8", "resnet8")
    # No candidate weaker than the 5-epoch student: reversed KD is not run at 5 epochs.
    assert not [e for e in study_runs(REPO, chosen, {**weak, 5: None})
                if e.kind == "reversed" and e.overrides["student.epochs"] == 5]


def test_the_study_report_gives_intervals_holm_teachers_and_verdicts(tmp_path):
    tuning = plan(REPO, ["cifar"])["cifar"]
    runs = [(e, tuning_metrics(e)) for e in tuning]
    weak = choose_teachers(runs)
    runs += [(e, tuning_metrics(e)) for e in reversed_tuning_runs(REPO, weak)]
    chosen = choose(runs)

    def metrics(e):
        base = 0.80 + e.seed / 100
        gain = {"reversed": 0.01 + e.seed / 1000, "self": (e.seed - 4.5) / 1000, "hetero": -0.01 - e.seed / 1000,
                "smooth": 0}[e.kind]
        teacher = 0.78 if e.kind == "reversed" else 0.85
        return {EVALUATION: {"teacher": {"accuracy": teacher},
                             "baseline": {"accuracy": base - (e.kind == "smooth") / 200},
                             "student": {"accuracy": base + gain}}}
    out = tmp_path / "poster.md"
    # two seeds at 5 and 10 epochs, one at 30: p where a comparison has two runs, and Holm's
    # correction not yet (it needs every comparison)
    write_report(out, runs + [(e, metrics(e)) for e in study_runs(REPO, chosen, weak)
                              if e.seed == 0 or (e.seed == 2 and "-e30-" not in e.name)],
                 header=["h"], temperatures=[20], chosen=chosen)
    claims = out.read_text().split("### The poster's claims")[1].split("\n### ")[0]
    assert "(Holm pending)" in claims and "(Holm )" not in claims
    # every comparison has runs, but only teacher 0's and 3 of 10 seeds: Holm is computed, no verdict
    write_report(out, runs + [(e, metrics(e)) for e in study_runs(REPO, chosen, weak) if e.seed in (0, 2, 4)],
                 header=["h"], temperatures=[20], chosen=chosen)
    text = out.read_text()
    claims = text.split("### The poster's claims")[1].split("\n### ")[0]
    assert claims.count("not resolved yet (3 of 10 seeds run, with 1 of 2 teachers;") == 11, claims
    bullets = "\n".join(line for line in claims.splitlines() if line.startswith("- "))
    assert not re.search(r"confirmed|refuted|resolved at this scale|same sign with every", bullets)
    assert "p and Holm's p below are interim figures" in text
    # one cell complete, another not: Holm's p is not final, so no verdict anywhere yet
    write_report(out, runs + [(e, metrics(e)) for e in study_runs(REPO, chosen, weak) if e.name != "cifar-self-e5-s9"],
                 header=["h"], temperatures=[20], chosen=chosen)
    claims = out.read_text().split("### The poster's claims")[1].split("\n### ")[0]
    assert re.search(r"Reversed KD.*30 epochs, gap -6\.50: not resolved yet \(its seeds are in; Holm's", claims)
    runs += [(e, metrics(e)) for e in study_runs(REPO, chosen, weak)]
    write_report(out, runs, header=["h"], temperatures=[20], chosen=chosen)
    text = out.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| reversed KD, vgg5 -> vgg8 | 30 |"))
    # mean ± sd over 10 runs, t(0.975, 9)·sd/√10; gap = 0.78 − (0.80 + mean seed/100); each teacher's mean;
    # the teacher-random interval: mean of the 2 teachers' means ± t(0.975, 1)·sd/√2
    assert "| vgg5 e40 | 10 | -6.50 |" in row and "+1.45 ± 0.30" in row and "[+1.23, +1.67]" in row
    assert "t0: +1.40, t1: +1.50" in row and "[+0.81, +2.09]" in row
    claims = text.split("### The poster's claims")[1]
    assert re.search(r"Reversed KD.*30 epochs, gap -6\.50: confirmed", claims)
    assert re.search(r"Self-KD.*30 epochs, gap [-+0-9.]+: not resolved at this scale \(Holm-adjusted p", claims)
    assert re.search(r"VGG -> ResNet\*\* \(.*\): 5 epochs, gap [-+0-9.]+: refuted", claims)
    assert "waiting for its runs" not in text and "| 30 | 86.00 | vgg5, 40 epochs: 80.00 (-6.00) |" in text
    assert (tmp_path / "poster" / "cifar-budget.png").stat().st_size > 1000
    for block in re.findall(r"((?:^\|.*\n)+)", text, flags=re.M):
        assert len({line.count("|") for line in block.splitlines()}) == 1, block
    # A diverged seeded run is not rerun (docs/cifar-study.md): its cells say so, for good.
    how = {FAILED: "loss is nan at epoch 2, batch 5"}
    write_report(out, [(e, how if e.name in ("cifar-self-e10-s3", "cifar-smooth-e30-s4") else m) for e, m in runs],
                 header=["h"], temperatures=[20], chosen=chosen)
    claims = out.read_text().split("### The poster's claims")[1]
    assert re.search(r"Self-KD.*10 epochs, gap [-+0-9.]+: not resolved: cifar-self-e10-s3 diverged", claims)
    assert claims.count("not resolved: cifar-smooth-e30-s4 diverged") == 2  # against self and reversed KD
    assert re.search(r"Reversed KD.*30 epochs, gap -6\.50: confirmed", claims)
    text = out.read_text()
    assert "interim figures" not in text  # the diverged seed is not waited for
    assert "Diverged, not rerun: cifar-self-e10-s3." in text
    row = next(line.split("|") for line in text.splitlines()
               if line.startswith("| self-KD") and line.split("|")[2].strip() == "10")
    assert row[4].strip() == "9"  # the cell is over the 9 seeds that finished


def test_gain_test_separates_signal_from_noise():
    clear = gain_test([0.991, 0.992, 0.990], [0.985, 0.985, 0.984])
    assert clear["mean"] == pytest.approx(0.0063333, abs=1e-6) and clear["p"] < 0.05
    assert verdict(clear).startswith("yes, a gain")
    noisy = gain_test([0.99, 0.98, 0.995], [0.985, 0.99, 0.985])
    assert noisy["p"] > 0.05 and verdict(noisy).startswith("no")
    assert verdict({"gains": [0.6, 0.62, 0.61], "mean": 0.61, "p": 0.0004}) == "yes, a gain (p<0.001)"
    assert pct([0.99, 0.98]) == "98.50 ± 0.71" and pct([]) == "not run" and pct([0.9]) == "90.00 (n=1)"


def evaluation(acc_b, acc_s) -> dict:
    """What evaluate.json holds, in the shape the report reads."""
    role = lambda a: {"accuracy": a, "errors": round((1 - a) * 10000), "ece": 0.01}  # noqa: E731
    return {"teacher": role(0.993), "baseline": {**role(acc_b), "agreement": 0.98, "kl_from_teacher": 0.1},
            "student": {**role(acc_s), "agreement": 0.99, "kl_from_teacher": 0.05}}


def test_report_rows_hold_mean_std_and_the_papers_numbers(tmp_path):
    runs = [(Experiment(f"mnist-T20-s{s}", "mnist", "sweep", s, {"temperature": 20, "seed": s}),
             {EVALUATION: evaluation(0.985 + s / 1000, 0.991 + s / 1000)}) for s in range(3)]
    runs.append((Experiment("mnist-T1-s0", "mnist", "sweep", 0, {"temperature": 1, "seed": 0}), None))
    out = tmp_path / "reports" / "poster.md"
    write_report(out, runs, header=["header line"], temperatures=[1, 20])
    text = out.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| student, distilled (T=20)"))
    assert "99.20 ± 0.10" in row and "99.26 (74 errors)" in row
    assert "+0.60 ± 0.00" in text  # identical per-seed gains
    assert "mnist-T1-s0" in text.split("## Not run")[1]
    # Every table row has as many cells as its header (no stray `|` inside a cell).
    for block in re.findall(r"((?:^\|.*\n)+)", text, flags=re.M):
        widths = {line.count("|") for line in block.splitlines()}
        assert len(widths) == 1, block
    assert (out.parent / "poster" / "temperature.png").stat().st_size > 1000



def test_reports_kept_from_earlier_code_stay_linked(tmp_path):
    runs = [(Experiment("mnist-T20-s0", "mnist", "sweep", 0, {"temperature": 20, "seed": 0}),
             {EVALUATION: evaluation(0.985, 0.991)})]
    out = tmp_path / "reports" / "poster.md"
    write_report(out, runs, header=["h"], temperatures=[20])
    assert "## Earlier results" not in out.read_text()
    kept = out.parent / "poster" / "earlier" / "2026-12-01-0f28fa3" / "poster.md"
    kept.parent.mkdir(parents=True)
    kept.write_text("# old\n")
    write_report(out, runs, header=["h"], temperatures=[20])
    assert "- [2026-12-01-0f28fa3](poster/earlier/2026-12-01-0f28fa3/poster.md)" in out.read_text()
    assert (REPO / "reports/poster/earlier/2026-12-01-0f28fa3/poster.md").is_file()  # the study's 71 runs

# ---- the driver against a scripted `dvc` -------------------------------------------------

FAKE_DVC = '''\
"""A scripted `dvc`: experiments live in $FAKE_DVC_STATE (JSON); each call is recorded.
`exp run --run-all` "runs" the queued ones; those named in $FAKE_DVC_FAIL fail. With
$FAKE_DVC_DETACHED, --run-all returns at once and a worker runs them as `exp show` is called."""
import json, os, subprocess, sys
import yaml

path = os.environ["FAKE_DVC_STATE"]
state = json.load(open(path)) if os.path.exists(path) else {"calls": [], "exps": []}
args = sys.argv[1:]
state["calls"].append(args)
head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
exps = state["exps"]


def finish(e):
    failed = e["name"] in (os.environ.get("FAKE_DVC_FAIL", "") + "," + os.environ.get("FAKE_DVC_DIVERGE", "")).split(",")
    e["state"] = "failed" if failed else "success"
    if not failed:  # as DVC keeps it: refs/exps/<baseline sha[:2]>/<its rest>/<name>
        base = e["baseline"]
        subprocess.run(["git", "update-ref", f"refs/exps/{base[:2]}/{base[2:]}/{e['name']}", base])
    acc = {"teacher": 0.99, "baseline": 0.98 + e["params"]["seed"] / 1000}
    acc["student"] = acc["baseline"] + float(os.environ.get("FAKE_DVC_GAIN", "0.005"))
    e["metrics"] = {} if failed else {
        "metrics/evaluate.json": {r: {"accuracy": a, "errors": round((1 - a) * 10000)} for r, a in acc.items()},
        **{f"metrics/{r}.json": {"val_acc": a} for r, a in acc.items()}}


detached = os.environ.get("FAKE_DVC_DETACHED")  # "race": --run-all returns at once; "lost": and it never runs
if args[:2] == ["exp", "show"]:
    revs = [args[i + 1] for i, a in enumerate(args) if a == "--rev"]
    print(json.dumps([{"rev": "workspace", "experiments": None}] + [{"rev": rev, "experiments": [
        {"name": e["name"], "executor": {"state": e["state"]}, "revs": [{"rev": e["rev"], "name": e["name"], "data": {
            "params": {"params.yaml": {"data": e["params"]}},
            "metrics": {p: {"data": d} for p, d in e["metrics"].items()}}}]}
        for e in exps if e["baseline"] == rev and e["state"] != "taken"]} for rev in revs]))
    # Taken by the worker, unlisted -> running -> done, one step per look at its baseline.
    for e in [e for e in exps if e["baseline"] in revs] if detached == "race" else []:
        if e["state"] == "running":
            finish(e)
        elif e["state"] == "taken":
            e["state"] = "running"
elif args[:3] == ["exp", "run", "--queue"]:
    params = yaml.safe_load(open("params.yaml"))
    for key, value in (a.split("=", 1) for a in args[args.index("-n") + 2:] if "=" in a):
        *parents, leaf = key.split(".")
        node = params
        for p in parents:
            node = node[p]
        node[leaf] = yaml.safe_load(value)
    exps.append({"name": args[args.index("-n") + 1], "state": "queued", "baseline": head, "rev": head,
                 "params": params, "metrics": {}})
elif args[:3] == ["exp", "run", "--run-all"]:
    for e in exps:
        if e["state"] == "queued":
            if detached:
                e["state"] = "taken"
                if detached == "race":  # and the user commits something meanwhile
                    subprocess.run(["git", "commit", "-q", "--allow-empty", "-m", "meanwhile"])
            else:
                finish(e)
elif args[:2] == ["queue", "logs"]:
    if args[2] in os.environ.get("FAKE_DVC_DIVERGE", "").split(","):
        print("[train_student] error: loss is nan at epoch 2, batch 188; lower the learning rate")
elif args[:2] == ["exp", "remove"]:
    state["exps"] = [e for e in exps if not (e["name"] in args[2:] and e["baseline"] == head)]
else:
    sys.exit(f"fake dvc: unexpected {args}")
json.dump(state, open(path, "w"))
'''


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A git repo with this project's dvc.yaml and params.yaml, and a scripted `dvc` on PATH."""
    proj, bin_dir = tmp_path / "proj", tmp_path / "bin"
    proj.mkdir(), bin_dir.mkdir()
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copyfile(REPO / name, proj / name)
    sh(["git", "init", "-q", "-b", "main"], proj)
    sh(["git", "add", "-A"], proj)
    sh(["git", "commit", "-qm", "init"], proj)
    (bin_dir / "dvc").write_text(f"#!{sys.executable}\n{FAKE_DVC}")
    (bin_dir / "dvc").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_DVC_STATE", str(tmp_path / "state.json"))
    monkeypatch.chdir(proj)
    return proj


def run_poster(args=SMALL) -> int:
    """`python -m kd_study.poster args`, after forgetting the scripted dvc's earlier calls."""
    path = Path(os.environ["FAKE_DVC_STATE"])
    if path.exists():
        path.write_text(json.dumps({**json.loads(path.read_text()), "calls": []}))
    return poster.main(args)


def dvc_calls(*what: str) -> list[list[str]]:
    """The scripted dvc's calls (since the last run_poster) that start with `what`."""
    calls = json.loads(Path(os.environ["FAKE_DVC_STATE"]).read_text())["calls"]
    return [c for c in calls if tuple(c[:len(what)]) == what]


def queued() -> set[str]:
    return {c[c.index("-n") + 1] for c in dvc_calls("exp", "run", "--queue")}


def test_a_second_run_with_nothing_changed_queues_nothing(fake):
    assert run_poster() == 0
    assert queued() == SMALL_NAMES
    # One worker, so experiments run one at a time: two would race to train the same teacher.
    assert dvc_calls("exp", "run", "--run-all") == [["exp", "run", "--run-all", "--jobs", "1"]]
    report = (fake / "reports" / "poster.md").read_text()
    assert "4 run now and 0 reused" in report and "## Not run" not in report

    assert run_poster() == 0
    assert dvc_calls("exp", "run") == [] and dvc_calls("exp", "remove") == []
    assert "0 run now and 4 reused" in (fake / "reports" / "poster.md").read_text()


def test_only_experiments_whose_params_or_code_changed_run_again(fake):
    assert run_poster() == 0
    # Params: mnist-T20-s1 ran with another alpha; it is removed (same commit) and queued again.
    state_file = Path(os.environ["FAKE_DVC_STATE"])
    state = json.loads(state_file.read_text())
    next(e for e in state["exps"] if e["name"] == "mnist-T20-s1")["params"]["alpha"] = 0.5
    state_file.write_text(json.dumps(state))
    record_file = fake / "reports" / "poster" / "runs.jsonl"  # which that run would have recorded
    runs = [json.loads(line) for line in record_file.read_text().splitlines()]
    next(r for r in runs if r["name"] == "mnist-T20-s1")["params"]["alpha"] = 0.5
    record_file.write_text("".join(json.dumps(r) + "\n" for r in runs))
    assert run_poster() == 0
    assert dvc_calls("exp", "remove") == [["exp", "remove", "mnist-T20-s1"]]
    assert queued() == {"mnist-T20-s1"}
    # A new commit that changes no pipeline code: the experiments of the last one are current.
    (fake / "README.md").write_text("notes\n")
    sh(["git", "add", "README.md"], fake)
    sh(["git", "commit", "-qm", "docs"], fake)
    assert run_poster() == 0
    assert queued() == set()
    # Pipeline code: a committed change to dvc.yaml makes every experiment stale.
    with open(fake / "dvc.yaml", "a") as f:
        f.write("# a change\n")
    sh(["git", "commit", "-qam", "code"], fake)
    assert run_poster() == 0
    assert queued() == SMALL_NAMES and dvc_calls("exp", "remove") == []  # the old ones stay, on their commit


def forget_dvc_experiments(proj: Path) -> None:
    """What a fresh clone has: no experiment refs, nothing in DVC's queue."""
    state_file = Path(os.environ["FAKE_DVC_STATE"])
    state_file.write_text(json.dumps({**json.loads(state_file.read_text()), "exps": []}))
    for ref in sh(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], proj).stdout.split():
        sh(["git", "update-ref", "-d", ref], proj)


def test_a_fresh_clone_reuses_the_recorded_experiments_until_code_or_params_change(fake):
    assert run_poster() == 0
    record_file = fake / "reports" / "poster" / "runs.jsonl"
    lines = record_file.read_text().splitlines()
    assert [json.loads(line)["name"] for line in lines] == sorted(SMALL_NAMES)
    report = (fake / "reports" / "poster.md").read_text()
    tables = [line for line in report.splitlines() if line.startswith("| student")]

    forget_dvc_experiments(fake)
    assert run_poster() == 0
    assert queued() == set()
    again = (fake / "reports" / "poster.md").read_text()
    assert "0 run now and 4 reused" in again
    assert [line for line in again.splitlines() if line.startswith("| student")] == tables
    assert record_file.read_text().splitlines() == lines

    # A recorded run with other params is stale, and only it runs again (and is recorded anew).
    edited = [json.loads(line) for line in lines]
    edited[0]["params"]["alpha"] = 0.5
    record_file.write_text("\n".join(json.dumps(run) + "\n" for run in edited))  # blank lines are skipped
    assert run_poster() == 0
    assert queued() == {edited[0]["name"]}
    assert json.loads(record_file.read_text().splitlines()[0])["params"]["alpha"] != 0.5

    # Pipeline code changed: every recorded run is stale (uncommitted edits count too: see the
    # fingerprint test; the scripted dvc could not run them).
    forget_dvc_experiments(fake)
    with open(fake / "dvc.yaml", "a") as f:
        f.write("# a change\n")
    sh(["git", "commit", "-qam", "code"], fake)
    assert run_poster() == 0
    assert queued() == SMALL_NAMES


def test_a_broken_record_line_is_named_and_nothing_runs(fake, capsys):
    record_file = fake / "reports" / "poster" / "runs.jsonl"
    record_file.parent.mkdir(parents=True)
    record_file.write_text('{"name": "mnist-T20-s0"}\n')
    assert run_poster() == 2
    assert "runs.jsonl:1: not a recorded experiment" in capsys.readouterr().err
    assert not Path(os.environ["FAKE_DVC_STATE"]).exists()  # dvc was never called
    assert record_file.read_text() == '{"name": "mnist-T20-s0"}\n'


def test_the_code_fingerprint_of_a_commit_and_of_the_working_tree_agree(fake):
    code = dvc_exps.pipeline_code(fake)
    assert dvc_exps.fingerprint(fake, code) == dvc_exps.fingerprint(fake, code, "HEAD")
    (fake / "params.yaml").write_text((fake / "params.yaml").read_text() + "# edited\n")
    (fake / "README.md").write_text("not pipeline code\n")
    sh(["git", "add", "README.md"], fake)
    assert dvc_exps.fingerprint(fake, ["dvc.yaml"]) == dvc_exps.fingerprint(fake, ["dvc.yaml"], "HEAD")
    assert dvc_exps.fingerprint(fake, ["dvc.yaml", "params.yaml"]) != dvc_exps.fingerprint(
        fake, ["dvc.yaml", "params.yaml"], "HEAD")


def test_a_time_limit_runs_one_at_a_time_and_the_next_run_goes_on(fake, capsys):
    # Nothing may start: all four are left for the next run, which is no failure.
    assert run_poster([*SMALL, "--hours", "0"]) == 0
    assert dvc_calls("exp", "run") == []
    out, err = capsys.readouterr()
    assert "time limit is reached: 4 experiments left" in out and "not run:" not in err
    assert "poster: left for the next run: mnist-T20-s0, " in out
    assert "mnist-T20-s0" in (fake / "reports" / "poster.md").read_text().split("## Not run")[1]
    assert run_poster([*SMALL, "--hours", "1"]) == 0
    assert queued() == SMALL_NAMES
    assert len(dvc_calls("exp", "run", "--run-all")) == 4  # one experiment per queue run
    log = (fake / "reports" / "poster" / "machine-time.csv").read_text().splitlines()
    assert log[0].startswith("date,commit,part,experiments_run,seconds,cpu_capability") and len(log) == 2
    assert ",mnist,4," in log[1]
    report = (fake / "reports" / "poster.md").read_text()
    assert "## Machine time" in report and "[poster/machine-time.csv](poster/machine-time.csv)" in report
    assert re.search(r"^\| mnist \| .* \| 4 \| [0-9.]+ \|$", report, flags=re.M)  # the runs' own commit counts
    assert str(fake) not in report  # no path of this machine in a committed report
    assert run_poster([*SMALL, "--hours", "1"]) == 0 and queued() == set()
    with pytest.raises(SystemExit):
        run_poster([*SMALL, "--hours", "-1"])
    assert "--hours must be 0 or more, got -1" in capsys.readouterr().err


def test_a_part_run_alone_keeps_the_other_parts_in_the_report(fake, capsys):
    shutil.copytree(REPO / "profiles", fake / "profiles")
    assert run_poster() == 0  # mnist at seeds 0 1 and T=20
    # hinton alone, under a time limit that starts nothing: the report keeps the MNIST part (as
    # `make poster` plans it: seeds 0-2, six temperatures, so 4 of 21 done) and only the named
    # part's missing experiments are listed; parts with nothing finished stay out.
    assert run_poster(["--parts", "hinton", "--hours", "0"]) == 0
    assert dvc_calls("exp", "run") == []
    out, err = capsys.readouterr()
    assert "poster: mnist: 21 experiments, 4 up to date, not named in --parts: report only" in out
    assert "cifar" not in out and "methods" not in out
    assert "left for the next run: hinton-teacher-e150-s100" in out and "mnist-" not in out.split("next run:")[-1]
    report = (fake / "reports" / "poster.md").read_text()
    assert "- mnist: 4 of 21 experiments finished (report only)" in report
    assert "## MNIST: normal KD (Hinton et al. 2015)" in report and "## MNIST at Hinton's level" in report
    assert "Seeds [0, 1, 2] (mnist, hinton): every mean" in report and "## CIFAR-10" not in report
    assert "mnist-T20-s0" in report.split("## Experiments")[1] and "mnist-T4-s2" in report.split("## Not run")[1]


@pytest.mark.parametrize("gain, followed_up", [(0.005, True), (0.0125, False)])
def test_the_hinton_study_runs_its_phases_and_follows_up_a_miss_of_74_errors(fake, capsys, gain, followed_up,
                                                                              monkeypatch):
    """Teachers, then the student grid, then the final models in one call; the follow-ups
    (docs/hinton-study.md) only if the final students' mean test errors miss 74."""
    shutil.copytree(REPO / "profiles", fake / "profiles")
    monkeypatch.setenv("FAKE_DVC_GAIN", str(gain))  # students: 150 or 75 errors at seed 0, 10 fewer per seed
    assert run_poster(["--parts", "hinton"]) == 0
    names = queued()
    assert {"hinton-teacher-e150-s100", "hinton-e150-a0.5-se20-s100", "hinton-final-e150-a0.5-se20-s2"} <= names
    followups = {n for n in names if n.startswith("hinton-followup-")}
    assert followups == ({f"hinton-followup-{f}-s{k}" for f in ("jitter", "se180", "fp32") for k in (0, 1, 2)}
                         if followed_up else set())
    report = (fake / "reports" / "poster.md").read_text().split("## MNIST at Hinton's level")[1]
    assert ("Follow-ups, since the final students missed 74 errors" in report) == followed_up
    if followed_up:  # the same 150, 140, 130 errors: the fake's students ignore the factor
        assert "| student 180 epochs (true-label student too) | 140.0 ± 10.0 | 150, 140, 130 |" in report
        assert "+0.0 (the larger std 10.0): does not account for it |" in report
    state = json.loads(Path(os.environ["FAKE_DVC_STATE"]).read_text())
    params = {e["name"]: e["params"] for e in state["exps"]}
    final = params["hinton-final-e150-a0.5-se20-s0"]
    for name, changed in (("jitter", {"student.jitter": 2, "soft_labels.views": 4}),
                          ("se180", {"student.epochs": 180}), ("fp32", {"teacher.precision": "fp32"})):
        if followed_up:  # the final recipe, exactly one factor changed
            got = flatten(params[f"hinton-followup-{name}-s0"])
            assert {k: v for k, v in got.items() if flatten(final)[k] != v} == changed
    assert run_poster(["--parts", "hinton"]) == 0 and queued() == set()  # nothing left to run


def test_nothing_is_queued_while_the_previous_queue_worker_shuts_down(fake, monkeypatch):
    """A task queued while DVC's idle worker shuts down can be dropped and followed forever
    (treeverse/dvc#10398): each experiment is queued only once that worker has exited."""
    monkeypatch.setattr(dvc_exps, "WORKER_POLL_S", 0.05)
    info = fake / ".dvc" / "tmp" / "exps" / "celery" / "dvc-exp-worker-1.json"
    info.parent.mkdir(parents=True)
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1.5)"])
    info.write_text(json.dumps({"pid": worker.pid, "stdin": None, "returncode": None}))
    assert dvc_exps.workers_gone(fake, timeout=0.2) is False  # still up: gives up after the timeout
    started = time.monotonic()
    assert run_poster(["--parts", "mnist", "--seeds", "0", "--temperatures", "20", "--hours", "1"]) == 0
    assert worker.poll() is not None and time.monotonic() - started > 1.0  # it waited for the worker
    assert queued() == {"mnist-T20-s0", "mnist-omit3-s0"}
    info.write_text(json.dumps({"pid": os.getpid(), "returncode": 0}))  # exited, as dvc_task records it
    assert dvc_exps.workers_gone(fake, timeout=0) is True
    info.write_text("{")  # unreadable: not a worker we could wait for
    assert dvc_exps.workers_gone(fake, timeout=0) is True


def test_an_experiment_still_running_when_run_all_returns_is_waited_for(fake, monkeypatch, capsys):
    """`dvc exp run --run-all` can return while a worker left by the previous call runs the new
    experiment unlisted (DVC 3.67.1): the driver waits until it has finished."""
    monkeypatch.setattr(dvc_exps, "POLL_S", 0)
    monkeypatch.setattr(dvc_exps, "LOST_S", 5)
    monkeypatch.setenv("FAKE_DVC_DETACHED", "race")
    assert run_poster([*SMALL, "--hours", "1"]) == 0
    assert "4 run now and 0 reused" in (fake / "reports" / "poster.md").read_text()
    # One that no worker ever lists is given up on after LOST_S, and reported as not run.
    monkeypatch.setenv("FAKE_DVC_DETACHED", "lost")
    monkeypatch.setattr(dvc_exps, "LOST_S", 0)
    assert run_poster(["--parts", "mnist", "--seeds", "5", "--temperatures", "20", "--hours", "1"]) == 1
    assert "not run: mnist-T20-s5, mnist-omit3-s5" in capsys.readouterr().err


def test_a_report_outside_the_project_is_written(fake, tmp_path):
    # Nothing has run, and it was not asked to run anything: not a failure.
    assert run_poster([*SMALL, "--report-only", "--out", str(tmp_path / "elsewhere" / "poster.md")]) == 0
    assert "mnist: 0 of 4 experiments finished" in (tmp_path / "elsewhere" / "poster.md").read_text()


def test_a_failed_experiment_is_not_run_and_the_command_fails(fake, monkeypatch, capsys):
    monkeypatch.setenv("FAKE_DVC_FAIL", "mnist-omit3-s1")
    assert run_poster() == 1
    report = (fake / "reports" / "poster.md").read_text()
    assert "mnist-omit3-s1" in report.split("## Not run")[1].split("##")[0]
    assert "3 run now and 0 reused" in report
    assert "not run: mnist-omit3-s1" in capsys.readouterr().err
    # A failed experiment is never reused: the next run replaces it, and only it.
    monkeypatch.delenv("FAKE_DVC_FAIL")
    assert run_poster() == 0
    assert dvc_calls("exp", "remove") == [["exp", "remove", "mnist-omit3-s1"]]
    assert queued() == {"mnist-omit3-s1"}


def test_a_busy_queue_is_refused_before_anything_is_queued(fake, capsys):
    head = sh(["git", "rev-parse", "HEAD"], fake).stdout.strip()
    Path(os.environ["FAKE_DVC_STATE"]).write_text(json.dumps({"calls": [], "exps": [
        {"name": "other", "state": "running", "baseline": head, "rev": head, "params": {}, "metrics": {}}]}))
    assert run_poster() == 2
    assert "already has queued or running experiments (other)" in capsys.readouterr().err
    assert dvc_calls("exp", "run") == []


def test_tool_calls_do_not_wait_for_a_detached_worker(tmp_path, monkeypatch):
    """dvc detaches a queue worker that inherits its stdout: we must not wait on it."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    done = tmp_path / "worker-finished"
    fake = bin_dir / "dvc"
    fake.write_text(f"#!/bin/sh\necho starting a worker\n(sleep 5; touch {done}) &\nexit 0\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    out = dvc_exps.dvc(tmp_path, "queue", "start")
    assert out.returncode == 0 and "starting a worker" in out.stdout
    assert not done.exists()  # returned while the "worker" still runs


# ---- the driver against real DVC ---------------------------------------------------------

TOY_DVC_YAML = """\
stages:
  train_teacher:
    cmd: python teacher.py
    deps: [teacher.py]
    params: [teacher]
    outs: [models/teacher.txt]
  train_student:
    cmd: python student.py
    deps: [student.py, models/teacher.txt]
    params: [seed, temperature, omit_classes]
    outs: [models/student.txt]
    metrics:
      - metrics/evaluate.json:
          cache: false
"""
TOY_TEACHER = """\
import os, yaml
os.makedirs("models", exist_ok=True)
open("models/teacher.txt", "w").write(str(yaml.safe_load(open("params.yaml"))["teacher"]))
"""
TOY_STUDENT = """\
import json, os, yaml
p = yaml.safe_load(open("params.yaml"))
if p["omit_classes"]:
    raise SystemExit("this student fails")
os.makedirs("models", exist_ok=True), os.makedirs("metrics", exist_ok=True)
open("models/student.txt", "w").write(str(p))
acc = 0.98 + p["seed"] / 1000
json.dump({"teacher": {"accuracy": 0.99}, "baseline": {"accuracy": acc}, "student": {"accuracy": acc + 0.005}},
          open("metrics/evaluate.json", "w"))
"""


def test_real_dvc_shares_the_teacher_reuses_and_reports_a_failure(tmp_path):
    """A pipeline of two tiny stages under real DVC: three experiments share a teacher and
    `dvc exp run --run-all` trains it once; `dvc exp show --json` finds the results; the
    failed experiment (mnist-omit3-s0) is under "Not run" and the command exits 1."""
    proj = tmp_path / "toy"
    proj.mkdir()
    files = {"dvc.yaml": TOY_DVC_YAML, "teacher.py": TOY_TEACHER, "student.py": TOY_STUDENT,
             "params.yaml": "temperature: 20\nalpha: 0.9\nseed: 0\nomit_classes: []\nteacher: {seed: 0}\n"}
    for name, text in files.items():
        (proj / name).write_text(textwrap.dedent(text))
    sh(["git", "init", "-q", "-b", "main"], proj)
    sh([sys.executable, "-m", "dvc", "init", "-q"], proj)
    sh(["git", "add", "-A"], proj)
    sh(["git", "commit", "-qm", "toy"], proj)
    cmd = [sys.executable, "-m", "kd_study.poster", "--parts", "mnist", "--seeds", "0", "--temperatures", "2", "20"]
    env = {"PYTHONPATH": str(REPO / "src")}

    first = sh(cmd, proj, env=env, check=False)
    assert first.returncode == 1, first.stdout + first.stderr
    assert "3 experiments, 0 up to date, 3 to run" in first.stdout
    # `dvc exp run --run-all` follows each experiment's log in turn (as `dvc queue logs <name>` shows it).
    logs = dict(re.findall(r"Reproducing experiment '([\w-]+)'(.*?)(?=Reproducing experiment|\Z)", first.stdout, re.S))
    assert set(logs) == {"mnist-T2-s0", "mnist-T20-s0", "mnist-omit3-s0"}, first.stdout
    trained = [n for n, log in logs.items() if "Running stage 'train_teacher'" in log]
    assert trained == ["mnist-T2-s0"], logs  # the first; the others restored it from the run-cache
    assert all("Stage 'train_teacher' is cached" in log for n, log in logs.items() if n not in trained)
    report = (proj / "reports" / "poster.md").read_text()
    assert "2 run now and 0 reused" in report
    assert report.split("## Not run")[1].split("##")[0].count("mnist-") == 1

    # Found again, and the failure still fails the command (no rerun here: the scripted-dvc tests
    # check what is queued; this one only that DVC's own records say the same).
    again = sh([*cmd, "--report-only"], proj, env=env, check=False)
    assert again.returncode == 1 and "3 experiments, 2 up to date, 1 to run" in again.stdout
    assert "mnist: 2 of 3 experiments finished" in (proj / "reports" / "poster.md").read_text()
    assert "not run: mnist-omit3-s0" in again.stderr

    # A fresh clone has none of DVC's experiment refs: the committed record brings the two back.
    sh(["git", "add", "reports/poster/runs.jsonl"], proj)
    sh(["git", "commit", "-qm", "record"], proj)
    sh(["git", "clone", "-q", str(proj), str(tmp_path / "clone")], tmp_path)
    fresh = sh([*cmd, "--report-only"], tmp_path / "clone", env=env, check=False)
    assert "3 experiments, 2 up to date, 1 to run" in fresh.stdout, fresh.stdout
    # The clone has no record of the failure, only of what finished: the rest is not run yet.
    assert fresh.returncode == 0 and "poster: not run yet: mnist-omit3-s0" in fresh.stdout, fresh.stdout
    def results(report: Path) -> str:  # the sections after the header (which names the commit)
        return report.read_text().split("\n## ", 1)[1].split("## Not run")[0]
    assert results(tmp_path / "clone" / "reports" / "poster.md") == results(proj / "reports" / "poster.md")
    assert "98.50" in results(proj / "reports" / "poster.md")  # the toy student's accuracy


def test_poster_shares_the_teacher_and_a_rerun_trains_nothing(tmp_path):
    mirror = need_mirror("mnist")
    proj = tmp_path / "proj"
    for name in [*PROJECT_FILES, "profiles"]:
        src, dst = REPO / name, proj / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copyfile)(src, dst)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"].update(mirror=str(mirror), max_train=300, val_size=200)
    for role in ("teacher", "student"):
        params[role].update(epochs=1, batch_size=64)
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(["git", "init", "-q", "-b", "main"], proj)
    sh(["git", "add", "-A"], proj)
    sh(["git", "commit", "-qm", "init"], proj)
    cmd = [sys.executable, "-m", "kd_study.poster", *SMALL]
    env = {"KD_TRACKING": "0", "PYTHONPATH": "src"}  # what `make poster` sets

    out = sh(cmd, proj, env=env)
    assert "4 experiments, 0 up to date, 4 to run" in out.stdout
    trained = {n: re.findall(r"Running stage '(\w+)'", sh(["dvc", "queue", "logs", n], proj, env=env).stdout)
               for n in SMALL_NAMES}
    assert sum("train_teacher" in stages for stages in trained.values()) == 1, trained  # the run-cache shares it
    assert all("train_student" in stages for stages in trained.values())
    report = (proj / "reports" / "poster.md").read_text()
    assert "## Not run" not in report and "4 run now and 0 reused" in report
    omit_row = next(line for line in report.splitlines() if line.startswith("| student, distilled | after |"))
    assert "±" in omit_row and "not run" not in omit_row

    again = sh(cmd, proj, env=env)
    assert "4 experiments, 4 up to date, 0 to run" in again.stdout
    assert "0 run now and 4 reused" in (proj / "reports" / "poster.md").read_text()


def test_machine_time_counts_only_the_invocations_of_the_reported_runs(tmp_path):
    from kd_study.report_cifar import machine_time
    csv_file = tmp_path / "machine-time.csv"
    csv_file.write_text("date,commit,part,experiments_run,seconds,cpu_capability,auto_precision,device\n"
                        "2026-11-30,aaaaaaa,cifar tuning,4,3600,AVX512,bf16,cpu\n"
                        "2026-12-01,bbbbbbb,cifar study,8,5400,AVX512,bf16,cpu\n"
                        "2026-12-01,bbbbbbb,cifar tuning,2,1800,AVX2,fp32,cpu\n")
    text = "\n".join(machine_time(csv_file, {"b" * 40}))
    assert "| cifar study | AVX512, bf16, cpu | 8 | 1.50 |" in text
    assert "| cifar tuning | AVX2, fp32, cpu | 2 | 0.50 |" in text and "AVX512, bf16, cpu | 4 |" not in text
    assert "The CIFAR-10 study in all: 2.00 h." in text
    assert "Not counted: 1.00 h of invocations on earlier code" in text
    assert "\n\n\n" not in text and text.endswith("\n")  # one blank line between blocks, one before the next heading
    everything = "\n".join(machine_time(csv_file))
    assert "| cifar tuning | AVX512, bf16, cpu | 4 | 1.00 |" in everything and "Not counted" not in everything


def test_a_cifar_verdict_needs_holm_and_the_same_sign_with_every_teacher():
    from kd_study.report_cifar import verdict as cifar_verdict

    g = {"n": 10, "mean": 0.01, "holm": 0.01, "teachers": {0: 0.02, 1: 0.005}}
    assert cifar_verdict(g) == "confirmed"
    assert cifar_verdict({**g, "mean": -0.01, "teachers": {0: -0.02, 1: -0.001}}).startswith("refuted")
    assert "not the same sign with every teacher" in cifar_verdict({**g, "teachers": {0: 0.02, 1: -0.001}})
    assert cifar_verdict({**g, "teachers": {0: 0.02}}).startswith("not resolved yet (10 of 10 seeds run, with 1 of 2")
    assert cifar_verdict({**g, "n": 4}).startswith("not resolved yet (4 of 10 seeds run, with 2 of 2 teachers")
    assert cifar_verdict({**g, "holm": 0.2}).startswith("not resolved at this scale (Holm-adjusted p 0.200)")
    assert "Holm's correction is pending" in cifar_verdict({**g, "holm": float("nan")})
    assert cifar_verdict({**g, "n": 9, "diverged": ["cifar-self-e5-s3"]}) == "not resolved: cifar-self-e5-s3 diverged"


def test_the_hinton_section_reports_each_phase_and_the_final_errors(tmp_path):
    tuning = plan(REPO, ["hinton"])["hinton"]
    teacher, student, baseline = (metrics_file(r).as_posix() for r in ("teacher", "student", "baseline"))
    runs = [(e, {teacher: {"val_acc": 0.99 + e.overrides["teacher.epochs"] / 100_000}}) for e in tuning]
    grid = [Experiment(f"{s.name}-s100", "hinton", s.kind, 100, s.overrides) for s in hinton_students(REPO, 600)]
    runs += [(e, {student: {"val_acc": 0.991}, baseline: {"val_acc": 0.985}}) for e in grid]
    (final,) = hinton_final(REPO, {"teacher.epochs": 600, "alpha": 0.5, "student.epochs": 60})
    runs += [(Experiment(f"{final.name}-s{k}", "hinton", final.kind, k, final.overrides),
              {EVALUATION: {"teacher": {"errors": 66, "accuracy": 0.9934},
                            "baseline": {"errors": 140 + k, "accuracy": 0.986},
                            "student": {"errors": 72 + 2 * k, "accuracy": 0.9928 - k / 5000}}}) for k in (0, 1, 2)]
    out = tmp_path / "poster.md"
    write_report(out, runs, header=["h"], temperatures=[20])
    text = out.read_text().split("## MNIST at Hinton's level")[1].split("\n## ")[0]
    assert "| 600 | 99.60 |" in text and "| 0.5 | 60 | 99.10 | 98.50 |" in text
    assert "| student, distilled (T=20) | 74.0 ± 2.0 | 72, 74, 76 |" in text
    assert "Teacher: 66 errors (Hinton: 67). Distilled students: mean 74.0 errors (Hinton: 74); at or below 74: " \
           "2 of 3 seeds." in text and "Follow-ups" not in text


def test_a_diverged_run_is_a_result_not_rerun_and_a_failed_one_runs_again(fake, monkeypatch):
    monkeypatch.setenv("FAKE_DVC_DIVERGE", "mnist-T20-s1")
    monkeypatch.setenv("FAKE_DVC_FAIL", "mnist-omit3-s1")  # failed for another reason: not a result
    assert run_poster() == 1  # the other failure is missing
    report = (fake / "reports" / "poster.md").read_text()
    assert "## Diverged" in report and "mnist-T20-s1 (train_student: loss is nan at epoch 2, batch 188)" in report
    not_run = report.split("## Not run")[1].split("\n## ")[0]
    assert "mnist-omit3-s1" in not_run and "mnist-T20-s1" not in not_run
    assert run_poster() == 1
    assert queued() == {"mnist-omit3-s1"}  # the diverged one is not queued again
    # It is recorded with how it diverged, so a fresh clone (no failed DVC runs, no queue logs)
    # neither reruns it nor loses it: a tuning grid there still ranks it last.
    records = {r["name"]: r for r in map(json.loads, (fake / "reports" / "poster" / "runs.jsonl").read_text().splitlines())}
    assert records["mnist-T20-s1"]["metrics"] == {"failed": "train_student: loss is nan at epoch 2, batch 188"}
    assert "mnist-omit3-s1" not in records
    forget_dvc_experiments(fake)
    monkeypatch.delenv("FAKE_DVC_DIVERGE")
    assert run_poster() == 1
    assert queued() == {"mnist-omit3-s1"}
    report = (fake / "reports" / "poster.md").read_text()
    assert "mnist-T20-s1 (train_student: loss is nan at epoch 2, batch 188)" in report.split("## Diverged")[1]


def test_a_diverged_tuning_point_ranks_last_and_all_diverged_chooses_nothing():
    from kd_study.experiments import FAILED, best

    points = [(Experiment(f"p{i}", "cifar", "grid-self", 100, {"i": i}), m) for i, m in enumerate(
        [{FAILED: "diverged"}, {STUDENT_M: {"val_acc": 0.7}}, {STUDENT_M: {"val_acc": 0.8}}])]
    assert best(points, "student").name == "p2"
    assert best(points[:1], "student") is None
    assert best(points + [(points[0][0], None)], "student") is None  # one still to run: no choice yet
