"""The methods study of `make poster` (issue #32, docs/methods-study.md): its experiments, the
choice on validation, Holm's correction, and its report section with complete and unfinished
results, on made-up metrics."""
import math
import re
import shutil

import pytest
import yaml

from conftest import REPO
from kd.params import Params
from kd.paths import metrics_file
from kd_study.experiments import (METHOD_PAIRS, METHODS, choose_methods, methods_seeds, plan, study_runs,
                                  choose)
from kd_study.report import write_report
from kd_study.report_methods import methods_section
from kd_study.runs import holm
from test_poster import dvc_calls, fake, run_poster  # noqa: F401  (fake: the scripted-dvc fixture)

EVALUATION, STUDENT = metrics_file("evaluate").as_posix(), metrics_file("student").as_posix()
TAGS = [m.tag for m in METHODS]


def unflatten(flat: dict) -> dict:
    out = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def tag(e) -> str:
    return e.kind.rsplit("-", 1)[1]


def test_the_methods_list():
    tuning = plan(REPO, ["methods"])["methods"]
    names = [e.name for e in tuning]
    assert len(names) == len(set(names)) == 3 * 5 * 4  # pair-budgets x methods x settings
    assert {e.seed for e in tuning} == {100} and {e.part for e in tuning} == {"methods"}
    assert "methods-mnist-dkd-b4-s100" in names and "methods-hetero-e30-dist-g2-s100" in names
    assert all(re.fullmatch(r"methods-(mnist|hetero-e10|hetero-e30)-(kd|kdls|dkd|dkdls|dist)-[Tbg][0-9.]+-s100", n)
               for n in names)
    # The design's table: the 4 settings of each method.
    mnist = {e.name.removeprefix("methods-mnist-").removesuffix("-s100"): e.overrides for e in tuning
             if e.name.startswith("methods-mnist-")}
    assert [mnist[f"kd-T{t}"]["temperature"] for t in (2, 4, 8, 20)] == [2, 4, 8, 20]
    assert all(mnist[f"kdls-T{t}"]["method.kd.logit_std"] is True for t in (1, 2, 4, 8))
    assert {(o["method.dkd.beta"], o["temperature"]) for k, o in mnist.items() if k.startswith("dkd-")} == {
        (b, 4) for b in (1, 2, 4, 8)}
    assert {(o["method.dkd.beta"], o["temperature"], o["method.dkd.logit_std"]) for k, o in mnist.items()
            if k.startswith("dkdls-")} == {(b, 2, True) for b in (1, 2, 4, 8)}
    assert {(o["method.dist.beta"], o["method.dist.gamma"]) for k, o in mnist.items() if k.startswith("dist-")} == {
        (g, g) for g in (0.5, 1, 2, 4)}
    # MNIST is params.yaml's pair; the CIFAR pair is the CIFAR study's hetero family with its teacher,
    # so DVC's run-cache restores that teacher and its soft labels.
    assert not any(k.startswith(("teacher.", "student.", "data.")) for o in mnist.values() for k in o)
    study_hetero = next(e for e in study_runs(REPO, {"hetero": {"temperature": 4, "alpha": 0.9}}, {})
                        if e.kind == "hetero" and e.seed == 0)
    assert study_hetero.overrides["teacher.seed"] == 0  # the default the methods study keeps
    teacher = {k: v for k, v in study_hetero.overrides.items()
               if k.startswith(("teacher.", "data.")) and k != "teacher.seed"}
    for pair, epochs in (("hetero-e10", 10), ("hetero-e30", 30)):
        for e in (e for e in tuning if e.name.startswith(f"methods-{pair}-")):
            assert {k: v for k, v in e.overrides.items() if k.startswith(("teacher.", "data."))} == teacher
            assert (e.overrides["student.arch"], e.overrides["student.epochs"]) == ("resnet8", epochs)
    # Every run's params pass the strict schema, and no other method's section is set.
    for e in tuning:
        params = Params.model_validate(unflatten(e.params(REPO)))
        assert params.method.ignored() == [] and params.method.name == e.overrides["method.name"]


def test_phase_two_runs_the_other_seeds_at_the_chosen_settings():
    tuning = plan(REPO, ["methods"])["methods"]
    chosen = choose_methods([(e, {STUDENT: {"val_acc": 0.5}}) for e in tuning])  # ties: the first setting
    assert len(chosen) == 15 and all(re.search(r"-(T2|T1|b1|g0.5)$", s) for s in chosen.values())
    seeded = methods_seeds(REPO, chosen)
    names = [e.name for e in seeded]
    # No tuning run is an evaluation run (#33): phase 2 runs seeds 0-4 afresh, 60 + 75 student trainings.
    assert len(names) == len(set(names)) == 3 * 5 * 5 and not set(names) & {e.name for e in tuning}
    assert {e.seed for e in seeded} == {0, 1, 2, 3, 4} and {e.seed for e in tuning} == {100}
    assert "methods-hetero-e30-dist-g0.5-s3" in names
    by_name = {e.name: e for e in tuning}
    for e in seeded:
        twin = by_name[e.name.rsplit("-s", 1)[0] + "-s100"]
        assert e.overrides == {**twin.overrides, "seed": e.seed}
    # Pair-budget by pair-budget, then seed by seed: MNIST's results are complete first.
    assert [e.name.split("-")[1] for e in seeded[:25]] == ["mnist"] * 25
    assert [e.seed for e in seeded[:10]] == [0] * 5 + [1] * 5


def test_the_choice_is_by_validation_ties_go_to_the_first_and_a_method_waits_for_its_4_runs():
    tuning = plan(REPO, ["methods"])["methods"]
    best = {"kd": "T8", "kdls": "T1", "dkd": "b2", "dkdls": "b8", "dist": "g4"}

    def metrics(e):
        setting = e.name.rsplit("-", 2)[1]
        good = setting == best[tag(e)]
        # dkd: b2 and b4 tie; b2 comes first in the design's list. Test accuracy must not count.
        val = 0.95 if good or (tag(e) == "dkd" and setting == "b4") else 0.90
        return {STUDENT: {"val_acc": val}, EVALUATION: {"student": {"accuracy": 0.1 if good else 0.99}}}
    runs = [(e, metrics(e)) for e in tuning]
    chosen = choose_methods(runs)
    for pair in METHOD_PAIRS:
        for t, setting in best.items():
            assert chosen[f"tune-{pair}-{t}"] == f"methods-{pair}-{t}-{setting}"
    unfinished = [(e, None if e.name == "methods-hetero-e10-dist-g1-s100" else m) for e, m in runs]
    partial = choose_methods(unfinished)
    assert "tune-hetero-e10-dist" not in partial and len(partial) == 14
    assert not any(e.name.startswith("methods-hetero-e10-dist") for e in methods_seeds(REPO, partial))
    # The CIFAR study's choice, refactored onto the same rule, still picks as before.
    cifar = plan(REPO, ["cifar"])["cifar"]
    picked = choose([(e, {STUDENT: {"val_acc": 0.8}, metrics_file("baseline").as_posix(): {"val_acc": 0.7}})
                     for e in cifar])
    assert picked["self"] == {"temperature": 2, "alpha": 0.5} and picked["smooth"] == {
        "baseline.label_smoothing": 0.05}


def test_holm_against_a_hand_computed_example():
    # sorted: 0.005 x 4 = 0.02; 0.01 x 3 = 0.03; 0.03 x 2 = 0.06; 0.04 x 1 = 0.04 -> at least 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.6]) == [1.0, 1.0]  # capped at 1, and monotone
    assert holm([0.2]) == [0.2] and holm([]) == []
    assert all(math.isnan(p) for p in holm([0.01, math.nan]))


# ---- the report section -----------------------------------------------------------------

GAIN = {"kd": 0.01, "kdls": 0.0, "dkd": 0.03, "dkdls": 0.01, "dist": 0.011}   # over the true-label student
SMALL = [0.0, 0.001, -0.001, 0.0005, -0.0005]
NOISE = {"kd": SMALL, "kdls": SMALL[::-1], "dkd": SMALL[1:] + SMALL[:1], "dkdls": [0.02, -0.02, 0.01, -0.01, 0],
         "dist": [0.01, -0.01, 0.005, -0.005, 0]}
CHOSEN = {"kd": "T4", "kdls": "T2", "dkd": "b8", "dkdls": "b1", "dist": "g1"}


def fake_metrics(e) -> dict:
    setting = e.name.rsplit("-", 2)[1]
    base = 0.90 + e.seed % 5 / 100
    return {STUDENT: {"val_acc": 0.9 if setting == CHOSEN[tag(e)] else 0.8},
            EVALUATION: {"baseline": {"accuracy": base},
                         "student": {"accuracy": base + GAIN[tag(e)] + NOISE[tag(e)][e.seed % 5]}}}


def study(finish=lambda e: True) -> list:
    tuning = plan(REPO, ["methods"])["methods"]
    runs = [(e, fake_metrics(e) if finish(e) else None) for e in tuning]
    return runs + [(e, fake_metrics(e) if finish(e) else None) for e in methods_seeds(REPO, choose_methods(runs))]


def tables_are_square(text: str) -> None:
    for block in re.findall(r"((?:^\|.*\n)+)", text, flags=re.M):
        assert len({line.count("|") for line in block.splitlines()}) == 1, block


def test_the_section_with_every_run_finished(tmp_path):
    out = tmp_path / "poster.md"
    write_report(out, study(), header=["h"], temperatures=[20])
    text = out.read_text()
    tables_are_square(text)
    section = text.split("## Distillation methods on the pipeline's pairs")[1].split("\n## ")[0]
    assert "phase 1 (tuning, seed 100): 60 of 60 runs finished; phase 2 (seeds 0, 1, 2, 3, 4 at the chosen " \
           "settings): 75 of 75 runs finished" in section
    assert "not yet" not in section and "not decided" not in section
    mnist = section.split("### MNIST")[1].split("###")[0]
    assert "| dkd | beta=1: 80.00 | beta=2: 80.00 | beta=4: 80.00 | **beta=8: 90.00** |" in mnist
    # The true-label student: 90..94 %, mean 92.00, t(0.975, 4) x 1.58 / sqrt(5) = 1.96.
    assert "| true-label student |  | 92.00 [90.04, 93.96] |" in mnist
    dkd = next(line for line in mnist.splitlines() if line.startswith("| dkd | beta=8 |"))
    assert "**+2.00 [" in dkd and "<0.001 (<0.001)" in dkd
    kd = next(line for line in mnist.splitlines() if line.startswith("| kd | T=4 |"))
    assert kd.count("|  |") == 1 and "**+1.00 [" in kd  # no comparison with itself; beats the true labels
    dist = next(line for line in mnist.splitlines() if line.startswith("| dist | beta=gamma=1 |"))
    lo, hi = map(float, re.search(r"\| \+0\.10 \[([-+0-9.]+), ([-+0-9.]+)\] \|", dist).groups())
    assert lo < 0 < hi and "**+0.10" not in dist  # noise: neither beats
    ranking = section.split("### The papers' CIFAR-100 ranking")[1]
    lines = [line for line in ranking.splitlines() if line.startswith("- ")]
    assert len(lines) == 3
    assert all("**holds in part**: dkd beats kd; dist and kd + ls do not; kd beats kd + ls." in line for line in lines)
    # dist's gain over the true labels has p 0.036 alone, 0.179 after Holm's correction: it does not count.
    assert "| **+1.10 [" not in dist and "| +1.10 [+0.12, +2.08] | 0.036 (0.179) |" in dist
    assert all(line.endswith("Beating the true-label student: kd and dkd.") for line in lines)
    # The rows of the Experiments table keep the method's keys beside the profile's.
    assert re.search(r"^\| methods-hetero-e30-dist-g1-s3 \| 3 \| the CIFAR-10 CPU profile, teacher\.arch=vgg8 "
                     r"teacher\.epochs=80 student\.arch=resnet8 student\.epochs=30 temperature=4 "
                     r"method\.name=dist method\.dist\.beta=1 method\.dist\.gamma=1 seed=3 \|$", text, flags=re.M)


def test_the_holm_adjustment_is_over_the_9_comparisons_of_a_pair_budget():
    from kd_study.report_methods import pair_results
    r = pair_results(study(), "mnist")
    family = [*r["vs_kd"].values(), *r["vs_base"].values()]
    assert len(family) == 9
    assert [g["holm"] for g in family] == pytest.approx(holm([g["p"] for g in family]))
    assert all(g["holm"] >= g["p"] for g in family)


def test_unfinished_runs_are_named_not_shown_as_results(tmp_path):
    # 12 tuning runs: all of MNIST's kd, kdls and dkd settings; nothing else.
    first = {f"methods-mnist-{t}-" for t in ("kd", "kdls", "dkd")}
    runs = study(lambda e: e.seed in (0, 100) and any(e.name.startswith(p) for p in first))
    text = "\n".join(methods_section(runs))
    tables_are_square(text + "\n")
    assert "phase 1 (tuning, seed 100): 12 of 60 runs finished; phase 2 (seeds 0, 1, 2, 3, 4 at the chosen " \
           "settings): 3 of 75 runs finished" in text
    assert text.count("Results: not yet") == 3 and "true-label student |" not in text
    assert "Results: not yet. Phase 1: 12 of 20 tuning runs finished; no setting chosen yet for dkd + ls, dist: " \
           "a method chooses once its 4 tuning runs have finished; seeds finished at the chosen setting: kd 1 of 5, " \
           "kd + ls 1 of 5, dkd 1 of 5." in text
    assert text.count(": not decided yet: its runs are not all finished") == 3
    assert "beta=1: not run" in text and "Machine time: none logged yet" in text

    # MNIST complete but one seed: its results appear, the CIFAR pair-budgets wait.
    runs = study(lambda e: e.name.startswith("methods-mnist-") and e.name != "methods-mnist-dist-g1-s4")
    text = "\n".join(methods_section(runs))
    assert "Results: not yet" in text.split("### MNIST")[1].split("###")[0]
    assert "dist 4 of 5" in text
    runs = study(lambda e: e.name.startswith("methods-mnist-"))
    text = "\n".join(methods_section(runs))
    assert "Results: not yet" not in text.split("### MNIST")[1].split("###")[0]
    assert text.count("Results: not yet") == 2 and text.count("not decided yet") == 2


def test_the_section_sums_the_studys_machine_time(tmp_path):
    log = tmp_path / "machine-time.csv"
    log.write_text("date,commit,part,experiments_run,seconds,cpu_capability,auto_precision,device\n"
                   "2026-12-02,aaaaaaa,methods mnist tuning,20,1800,AVX512,bf16,cpu\n"
                   "2026-12-02,aaaaaaa,methods mnist seeds,20,3600,AVX512,bf16,cpu\n"
                   "2026-12-02,aaaaaaa,cifar study,3,3600,AVX512,bf16,cpu\n"
                   "2026-12-01,bbbbbbb,methods mnist tuning,20,7200,AVX512,bf16,cpu\n")
    text = "\n".join(methods_section(study(), machine_log=log, commits={"a" * 40}))
    assert "1.50 h in all" in text
    assert "| methods mnist tuning | AVX512, bf16, cpu | 20 | 0.50 |" in text
    assert "| methods mnist seeds | AVX512, bf16, cpu | 20 | 1.00 |" in text and "cifar study" not in text


def test_the_driver_plans_the_part_and_reports_what_is_missing(fake, capsys):  # noqa: F811
    shutil.copytree(REPO / "profiles", fake / "profiles")  # the CIFAR pair's base
    assert run_poster(["--parts", "methods", "--report-only"]) == 0
    report = (fake / "reports" / "poster.md").read_text()
    assert "- methods mnist tuning: 0 of 20 experiments finished (report only)" in report
    assert "- methods hetero-e30 tuning: 0 of 20 experiments finished (report only)" in report
    assert "Seeds [0, 1, 2, 3, 4] (methods): every mean" in report
    assert "phase 1 (tuning, seed 100): 0 of 60 runs finished" in report
    assert "methods-hetero-e30-dist-g4-s100" in report.split("## Not run")[1]
    assert dvc_calls("exp", "run") == []
    assert "poster: not run yet: methods-" in capsys.readouterr().out
    # A time limit: nothing starts, and what is left is said.
    assert run_poster(["--parts", "methods", "--hours", "0"]) == 0
    assert dvc_calls("exp", "run") == []
    assert "time limit is reached: 20 experiments left" in capsys.readouterr().out
    assert yaml.safe_load((fake / "params.yaml").read_text())["method"]["name"] == "kd"  # params.yaml untouched


def test_a_diverged_tuning_run_ranks_last_and_the_report_says_so():
    from kd_study.experiments import FAILED

    def fail(e):
        return e.name == "methods-mnist-dkd-b8-s100"
    tuning = plan(REPO, ["methods"])["methods"]
    runs = [(e, {FAILED: "train_student: loss is nan at epoch 2, batch 188"} if fail(e) else fake_metrics(e))
            for e in tuning]
    chosen = choose_methods(runs)
    assert chosen["tune-mnist-dkd"] != "methods-mnist-dkd-b8"  # CHOSEN's b8 diverged: the best of the rest
    text = "\n".join(methods_section(runs + [(e, fake_metrics(e)) for e in methods_seeds(REPO, chosen)]))
    assert "beta=8: diverged" in text and "60 of 60 runs finished (1 diverged: a diverged setting ranks last)" in text
