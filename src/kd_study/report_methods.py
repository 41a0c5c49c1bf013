"""The methods study's part of reports/poster.md (issue #32, docs/methods-study.md): which
distillation method, for which pair? Per pair-budget: the tuning runs on validation, then per
method the test accuracy over seeds, its paired gains over `kd` and over the true-label student
with Holm's correction over the pair-budget's 9 comparisons, and whether the papers' CIFAR-100
ranking holds there, decided by the design's rule. Nothing is shown as a result before every
run it needs has finished: until then the section says what is missing."""
from __future__ import annotations

import math
from pathlib import Path

from kd_study.experiments import (CIFAR_FAMILIES, METHOD_PAIRS, METHOD_SEEDS, METHODS, STUDY_TEACHER_EPOCHS,
                                  TUNE_SEED, choose_methods, tune_kind)
from kd_study.runs import Run, by_seed, failed_runs, finished, holm, machine_totals, mean_ci, paired, table, val_cell

LEVEL = 0.05                                      # "beats": Holm-adjusted p below this, interval excluding 0
KD = METHODS[0]
assert KD.tag == "kd"
PAPERS = ("dkd", "dist", "kdls")                  # what the papers put 2-4 points above kd on CIFAR-100
BY_TAG = {m.tag: m for m in METHODS}
SETTING_LABEL = {"T": "T={}", "b": "beta={}", "g": "beta=gamma={}"}  # the first letter of a setting's name


def pair_label(pair: str) -> str:
    epochs = METHOD_PAIRS[pair]
    if epochs is None:
        return "MNIST, mlp1200 -> mlp800, params.yaml's student epochs"
    teacher, student = CIFAR_FAMILIES["hetero"]
    return f"CIFAR-10, {teacher} -> {student}, {epochs} student epochs"


def setting_label(name: str) -> str:
    """"methods-mnist-dkd-b4" -> "beta=4"."""
    last = name.rsplit("-", 1)[1]
    return SETTING_LABEL[last[0]].format(last[1:])


def _methods(runs: list[Run]) -> list[Run]:
    return [(e, m) for e, m in runs if e.part == "methods"]


def _at(runs: list[Run], setting: str, seeds) -> list[Run]:
    """The runs of one setting (tuning run and seeded ones alike) at `seeds`."""
    return [(e, m) for e, m in runs if e.name.rsplit("-s", 1)[0] == setting and e.seed in seeds]


def pair_results(runs: list[Run], pair: str, seeds=METHOD_SEEDS) -> dict:
    """One pair-budget: the chosen settings, per method the seeds' test accuracies, and, once every
    method has every seed, the 9 comparisons with Holm-adjusted p ("complete")."""
    runs = _methods(runs)
    chosen = choose_methods([(e, m) for e, m in runs if e.kind.startswith(f"tune-{pair}-")])
    out = {"chosen": {}, "student": {}, "baseline": {}, "complete": False, "vs_kd": {}, "vs_base": {}}
    for m in METHODS:
        setting = chosen.get(tune_kind(pair, m))
        if setting is None:
            continue
        out["chosen"][m.tag] = setting
        rs = _at(runs, setting, seeds)
        out["student"][m.tag], out["baseline"][m.tag] = by_seed(rs, "student"), by_seed(rs, "baseline")
    want = set(seeds)
    out["complete"] = len(out["chosen"]) == len(METHODS) and all(
        set(out[role][m.tag]) == want for m in METHODS for role in ("student", "baseline"))
    if not out["complete"]:
        return out
    kd = out["student"][KD.tag]
    vs_kd = {m.tag: paired(out["student"][m.tag], kd) for m in METHODS if m is not KD}
    vs_base = {m.tag: paired(out["student"][m.tag], out["baseline"][m.tag]) for m in METHODS}
    family = [*vs_kd.values(), *vs_base.values()]
    for g, p in zip(family, holm([g["p"] for g in family])):
        g["holm"] = p
    out["vs_kd"], out["vs_base"] = vs_kd, vs_base
    # The true-label student of each seed (the same in every experiment of the pair-budget: the
    # run-cache restores it; train_baseline does not depend on the method).
    out["true_labels"] = {s: out["baseline"][KD.tag][s] for s in sorted(want)}
    return out


def beats(g: dict) -> int:
    """The design's rule on a - b: 1 when a beats b (Holm-adjusted p < 0.05 and the 95% interval
    above 0), -1 when b beats a, 0 when neither."""
    lo, hi = g["ci"]
    if not g.get("holm", math.nan) < LEVEL:
        return 0
    return 1 if lo > 0 else -1 if hi < 0 else 0


# ---- numbers as text --------------------------------------------------------------------

def _mean_ci(values: list[float]) -> str:
    m, lo, hi = mean_ci(values)
    return f"{100 * m:.2f} [{100 * lo:.2f}, {100 * hi:.2f}]"


def _gain(g: dict) -> list[str]:
    """[gain with 95% interval, p (Holm-adjusted p)] in points."""
    lo, hi = g["ci"]
    bold = "**" if beats(g) else ""
    return [f"{bold}{100 * g['mean']:+.2f} [{100 * lo:+.2f}, {100 * hi:+.2f}]{bold}",
            f"{_p(g['p'])} ({_p(g['holm'])})"]


def _p(p: float) -> str:
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _names(tags: list[str]) -> str:
    labels = [BY_TAG[t].label for t in tags]
    return labels[0] if len(labels) == 1 else ", ".join(labels[:-1]) + " and " + labels[-1]


def ranking(r: dict) -> str:
    """Whether the papers' CIFAR-100 ranking (dkd, dist and kd + ls above kd) holds on one
    pair-budget, and which methods beat the true-label student, by the design's rule."""
    if not r["complete"]:
        return "not decided yet: its runs are not all finished (see above)."
    above = [t for t in PAPERS if beats(r["vs_kd"][t]) == 1]
    rest = [t for t in PAPERS if t not in above]
    below = [t for t in BY_TAG if t != KD.tag and beats(r["vs_kd"][t]) == -1]
    if not rest:
        text = f"**holds**: {_names(above)} each beat kd"
    elif above:
        text = (f"**holds in part**: {_names(above)} beat{'s' if len(above) == 1 else ''} kd; {_names(rest)} "
                f"do{'es' if len(rest) == 1 else ''} not")
    else:
        text = f"**does not hold**: none of {_names(list(PAPERS))} beats kd"
    if below:
        text += f"; kd beats {_names(below)}"
    over_base = [m.tag for m in METHODS if beats(r["vs_base"][m.tag]) == 1]
    under_base = [m.tag for m in METHODS if beats(r["vs_base"][m.tag]) == -1]
    text += (f". Beating the true-label student: {_names(over_base)}" if over_base
             else ". No method beats the true-label student")
    if under_base:
        text += f"; the true-label student beats {_names(under_base)}"
    return text + "."


# ---- sections ---------------------------------------------------------------------------

def tuning_table(runs: list[Run], pair: str, chosen: dict[str, str]) -> list[str]:
    rows = []
    for m in METHODS:
        cells = []
        for name, _ in m.settings:
            setting = f"methods-{pair}-{m.tag}-{name}"
            cell = f"{setting_label(setting)}: " + val_cell(_at(runs, setting, (TUNE_SEED,)), "student")
            cells.append(f"**{cell}**" if chosen.get(m.tag) == setting else cell)
        rows.append([m.label, *cells])
    return table(["method", *(f"setting {i + 1}" for i in range(4))], rows)


def results_table(r: dict) -> list[str]:
    truth = list(r["true_labels"].values())
    rows = [["true-label student", "", _mean_ci(truth), "", "", "", ""]]
    for m in METHODS:
        vs_kd = ["", ""] if m is KD else _gain(r["vs_kd"][m.tag])
        rows.append([m.label, setting_label(r["chosen"][m.tag]), _mean_ci(list(r["student"][m.tag].values())),
                     *vs_kd, *_gain(r["vs_base"][m.tag])])
    return table(["student", "chosen setting", "test % [95% CI]", "− kd, points [95% CI]", "p (Holm)",
                  "− true labels, points [95% CI]", "p (Holm)"], rows)


def missing(runs: list[Run], pair: str, r: dict, seeds) -> str:
    """What one pair-budget still lacks, in words."""
    runs = _methods(runs)
    tuning = [(e, m) for e, m in runs if e.kind.startswith(f"tune-{pair}-")]
    parts = [f"phase 1: {len(finished(tuning)) + len(failed_runs(tuning))} of {len(METHODS) * 4} tuning runs "
             "finished" + (f" ({len(failed_runs(tuning))} diverged)" if failed_runs(tuning) else "")]
    waiting = [m.label for m in METHODS if m.tag not in r["chosen"]]
    if waiting:
        parts.append(f"no setting chosen yet for {', '.join(waiting)}: a method chooses once its 4 tuning runs "
                     "have finished")
    have = [f"{m.label} {len(set(r['student'][m.tag]) & set(r['baseline'][m.tag]))} of {len(seeds)}"
            for m in METHODS if m.tag in r["chosen"]]
    if have:
        parts.append("seeds finished at the chosen setting: " + ", ".join(have))
    return "; ".join(parts)


def machine_time(path: Path | None, commits: set[str] | None) -> list[str]:
    total, _ = machine_totals(path, commits) if path is not None else ({}, 0.0)
    rows = [[part, cpu, f"{n:.0f}", f"{sec / 3600:.2f}"] for (part, cpu), (sec, n) in total.items()
            if part.startswith("methods")]
    if not rows:
        return ["Machine time: none logged yet for this study's runs.", ""]
    hours = sum(float(r[3]) for r in rows)
    return [f"Machine time of the invocations that ran this study's experiments (on the commits they ran "
            f"on; [poster/machine-time.csv](poster/machine-time.csv)), {hours:.2f} h in all:", "",
            *table(["part", "CPU, precision, device", "experiments run", "hours"], rows)]


def methods_section(runs: list[Run], seeds=METHOD_SEEDS, machine_log: Path | None = None,
                    commits: set[str] | None = None) -> list[str]:
    runs = _methods(runs)
    seeds = tuple(seeds)
    tuning = [(e, m) for e, m in runs if e.kind.startswith("tune-")]
    seeded = [(e, m) for e, m in runs if not e.kind.startswith("tune-")]
    n_tuning = len(METHOD_PAIRS) * len(METHODS) * 4
    n_seeded = len(METHOD_PAIRS) * len(METHODS) * len(seeds)
    results = {pair: pair_results(runs, pair, seeds) for pair in METHOD_PAIRS}
    done = all(r["complete"] for r in results.values())
    lines = ["## Distillation methods on the pipeline's pairs (issue #32)", "",
             "Does `dkd`, `dist` or logit standardisation (ls: `kd` + ls, `dkd` + ls) beat Hinton's `kd`, or the "
             "true-label student, by more than seed noise? The design, written before the runs: "
             "[docs/methods-study.md](../docs/methods-study.md). Pairs: MNIST's default pair, and CIFAR-10's "
             f"vgg8 -> resnet8 (`profiles/cifar10-cpu.yaml`, the CIFAR-10 study's {STUDY_TEACHER_EPOCHS}-epoch "
             "teacher) at 10 and 30 student epochs. Each method's 4 settings run at the tuning seed "
             f"{TUNE_SEED} and the best by the distilled student's validation accuracy is chosen (ties: the first); "
             f"it then runs at seeds {', '.join(map(str, seeds))} (no tuning run is reused as an evaluation run), "
             "beside the true-label student of the same seeds. Test accuracy is the mean with its 95% t-interval; gains are paired by seed, with their 95% "
             "t-interval, the paired t-test's p and, in brackets, Holm's adjustment over the 9 comparisons of a "
             "pair-budget (4 methods against kd, 5 against the true-label student). A method **beats** another "
             f"when the Holm-adjusted p < {LEVEL:g} and the interval excludes 0 (bold).", ""]
    ended = len(finished(tuning)) + len(failed_runs(tuning))
    diverged = f" ({len(failed_runs(tuning))} diverged: a diverged setting ranks last)" if failed_runs(tuning) else ""
    status = (f"**Status: phase 1 (tuning, seed {TUNE_SEED}): {ended} of {n_tuning} runs "
              f"finished{diverged}; phase 2 (seeds {', '.join(map(str, seeds))} at the chosen settings): "
              f"{len(finished(seeded))} of {n_seeded} runs finished.**")
    lines += [status + ("" if done else " Results are shown only for a pair-budget whose runs have all "
                                        "finished; the others say what is missing."), ""]
    for pair, r in results.items():
        lines += [f"### {pair_label(pair)}", "",
                  f"Tuning: the distilled student's validation accuracy % at seed {TUNE_SEED} (bold: chosen).", ""]
        lines += tuning_table(runs, pair, r["chosen"])
        if r["complete"]:
            lines += [f"Test accuracy over seeds {', '.join(map(str, seeds))}:", ""] + results_table(r)
        else:
            lack = missing(runs, pair, r, seeds)
            lines += [f"Results: not yet. {lack[0].upper()}{lack[1:]}.", ""]
    lines += ["### The papers' CIFAR-100 ranking on these pairs", "",
              "DKD, DIST and KD + ls each 2-4 points above KD for ResNet32x4 -> ResNet8x4 (Zhao et al. 2022, Huang "
              "et al. 2022, Sun et al. 2024). By the rule above, on each pair-budget the ranking:", ""]
    lines += [f"- {pair_label(pair)}: {ranking(r)}" for pair, r in results.items()]
    lines += [""] + machine_time(machine_log, commits)
    return lines
