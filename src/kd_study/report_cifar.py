"""The CIFAR-10 study's part of reports/poster.md, third design (issue #33, docs/cifar-study.md):
the teachers and reversed KD's weaker teacher per budget, the validation grids, KD gain against the
student's budget with the gap beside it, 95% intervals, Holm's correction over the study's
claims and each teacher's own mean, the label-smoothing control, and one verdict per claim."""
from __future__ import annotations

import math
import statistics
from pathlib import Path

from scipy import stats

from kd_study.experiments import (BUDGETS, CIFAR_FAMILIES, CIFAR_SEEDS, CIFAR_TUNE_SEED, GRID, LONGEST, SMOOTHING,
                                  STUDY_TEACHER_EPOCHS, TEACHER_SEEDS, TUNE_BUDGET, TUNED, WEAK_TEACHER_EPOCHS,
                                  WEAKER_BY, choose_teachers, failed, val_of)
from kd_study.runs import (Run, by_seed, finished, holm, machine_totals, of_kind, of_part, paired, pct, scores,
                           table, val_cell)

LEVEL = 0.05
NAMES = {"reversed": "reversed KD", "self": "self-KD", "hetero": "heterogeneous KD"}
LABEL = {kind: f"{NAMES[kind]}, {t} -> {s}" for kind, (t, s) in CIFAR_FAMILIES.items()}
CLAIMS = {
    "reversed": "Reversed KD: a weaker, smaller teacher improves a larger student "
                "(poster: VGG13 88.23% -> ResNet18 90.23% -> 91.26%)",
    "self": "Self-KD: a net distilled from itself beats its true-label training (poster: +1.0 / +2.98)",
    "hetero": "Knowledge crosses architectures, VGG -> ResNet",
    "smooth": "The teacher's soft labels are what helps, beyond label-smoothing-like regularisation "
              "(poster's discussion; Yuan et al. 2020 argue KD is largely smoothing)",
}


def fmt_paired(g: dict) -> list[str]:
    """[gain, 95% CI, p] in points."""
    if not g["n"]:
        return ["not run", "", ""]
    if g["n"] < 2:
        return [f"{100 * g['mean']:+.2f} (n=1)", "", ""]
    lo, hi = g["ci"]
    return [f"{100 * g['mean']:+.2f} ± {100 * g['std']:.2f}", f"[{100 * lo:+.2f}, {100 * hi:+.2f}]", _p(g["p"])]


def _p(p: float) -> str:
    return "" if math.isnan(p) else "<0.001" if p < 0.001 else f"{p:.3f}"


def verdict(g: dict) -> str:
    """docs/cifar-study.md's rule: Holm-adjusted p < 0.05, the sign, and the same sign with each teacher."""
    if g.get("diverged"):  # that seed's pair never comes (docs/cifar-study.md)
        return f"not resolved: {', '.join(g['diverged'])} diverged"
    if g["n"] < 2:
        return "not resolved (fewer than 2 seeds run)"
    p, teachers = g.get("holm", math.nan), g.get("teachers", {})
    if math.isnan(p):
        return "not resolved yet (the study's comparisons are not all run, so Holm's correction is pending)"
    # the rule is for the design's seeds and teachers: an interim p decides nothing, and a
    # teacher whose runs are missing has no sign to agree or disagree with
    if g["n"] < len(CIFAR_SEEDS) or len(teachers) < TEACHER_SEEDS:
        return (f"not resolved yet ({g['n']} of {len(CIFAR_SEEDS)} seeds run, with {len(teachers)} of "
                f"{TEACHER_SEEDS} teachers; the rule applies once all are in)")
    if not g.get("holm_final", True):  # Holm's p moves with the other comparisons' p until they are all in
        return "not resolved yet (its seeds are in; Holm's correction waits for the study's other comparisons)"
    if p >= LEVEL:
        return f"not resolved at this scale (Holm-adjusted p {_p(p)})"
    sign = 1 if g["mean"] > 0 else -1
    if any(sign * m <= 0 for m in teachers.values()):
        return "not resolved: significant overall, but not the same sign with every teacher"
    return "confirmed" if sign > 0 else "refuted (the effect is negative)"


def setting(runs: list[Run], name: str) -> list[Run]:
    return [(e, m) for e, m in runs if e.name.rsplit("-s", 1)[0] == name]


def _cell(value: float | None) -> str:
    return "not run" if value is None else f"{100 * value:.2f}"


def _val(runs: list[Run], name: str, role: str) -> float | None:
    point = finished(setting(runs, name))
    return val_of(point[0][1], role) if point else None


# ---- sections ---------------------------------------------------------------------------

def teachers(runs: list[Run]) -> list[str]:
    chosen = choose_teachers(runs)
    lines = ["### Teachers, and reversed KD's weaker teacher per budget", "",
             f"Validation accuracy %, teacher seed 0. vgg8 trains {STUDY_TEACHER_EPOCHS} epochs (self and hetero; "
             "design 2 checked its plateau: 160 epochs added +0.04 points). Reversed KD's vgg5 is trained for as "
             "many epochs as keep it at least "
             f"{100 * WEAKER_BY:g} points below the true-label vgg8 student of each budget (seed {CIFAR_TUNE_SEED}), "
             "so that a weaker model teaches a stronger one.", ""]
    vgg5 = {e: _val(runs, f"cifar-teacher-vgg5-e{e}", "teacher") for e in WEAK_TEACHER_EPOCHS}
    vgg8 = _val(runs, f"cifar-teacher-vgg8-e{STUDY_TEACHER_EPOCHS}", "teacher")
    lines += table([*(f"vgg5, {e} epochs" for e in WEAK_TEACHER_EPOCHS), f"vgg8, {STUDY_TEACHER_EPOCHS} epochs"],
                   [[*(_cell(vgg5[e]) for e in WEAK_TEACHER_EPOCHS), _cell(vgg8)]])
    rows = []
    for b in BUDGETS:
        student = _val(runs, f"cifar-base-vgg8-e{b}", "baseline")
        if b not in chosen:
            pick = "waiting for its runs"
        elif chosen[b] is None:
            pick = "none is weaker: reversed KD not testable at this budget"
        else:
            pick = f"vgg5, {chosen[b]} epochs: {_cell(vgg5[chosen[b]])} ({100 * (vgg5[chosen[b]] - student):+.2f})"
        rows.append([str(b), _cell(student), pick])
    lines += table(["student epochs", "true-label vgg8 student, val %", "reversed KD's teacher, val % (− student)"],
                   rows)
    return lines


def grids(runs: list[Run], chosen: dict) -> list[str]:
    lines = [f"### T and alpha, chosen on the validation split (seed {CIFAR_TUNE_SEED}, student {TUNE_BUDGET} "
             "epochs)", "",
             "Distilled students' validation accuracy %; the best (bold) is used for every seed and budget of "
             f"its family. Seed {CIFAR_TUNE_SEED} is never an evaluation seed. Reversed KD tunes with its "
             f"{TUNE_BUDGET}-epoch teacher.", ""]
    for kind in TUNED:
        rows = []
        for t in GRID["temperature"]:
            row = [f"T={t:g}"]
            for a in GRID["alpha"]:
                cell = val_cell(setting(runs, f"cifar-{kind}-e{TUNE_BUDGET}-T{t:g}-a{a:g}"), "student")
                pick = chosen.get(kind) == {"temperature": t, "alpha": a}
                row.append(f"**{cell}**" if pick else cell)
            rows.append(row)
        base = [val_of(m, "baseline") for _, m in finished(of_kind(runs, f"grid-{kind}"))]
        lines += [f"{LABEL[kind]} (true-label student: {_cell(base[0] if base else None)}):", ""]
        lines += table(["", *(f"alpha={a:g}" for a in GRID["alpha"])], rows)
    rows = []
    for eps in SMOOTHING:
        cell = val_cell(setting(runs, f"cifar-smooth{eps:g}-e{TUNE_BUDGET}"), "baseline")
        rows.append([f"{eps:g}", f"**{cell}**" if chosen.get("smooth") == {"baseline.label_smoothing": eps}
                     else cell])
    lines += ["Label smoothing of the true-label vgg8 student:", ""]
    lines += table(["epsilon", "validation %"], rows)
    return lines


def _teacher_means(rs: list[Run], student: dict[int, float], base: dict[int, float]) -> dict[int, float]:
    """Each teacher seed's mean gain over the student seeds it taught."""
    out: dict[int, list[float]] = {}
    for e, _ in finished(rs):
        if e.seed in student and e.seed in base:
            out.setdefault(e.overrides.get("teacher.seed", 0), []).append(student[e.seed] - base[e.seed])
    return {t: statistics.fmean(g) for t, g in sorted(out.items())}


def random_teacher_ci(teachers: dict[int, float]) -> tuple[float, float]:
    """The mean of the teachers' means with a t-interval over teachers (the teacher as a random
    effect; 1 degree of freedom with 2 teachers, hence wide)."""
    means = list(teachers.values())
    if len(means) < 2:
        return math.nan, math.nan
    m, half = statistics.fmean(means), stats.t.ppf(0.975, len(means) - 1) * statistics.stdev(means) / math.sqrt(
        len(means))
    return m - half, m + half


def _gap(rs: list[Run]) -> float | None:
    """Teacher minus true-label student test accuracy, mean over the runs."""
    gaps = [t - b for t, b in zip(scores(rs, "teacher", "accuracy"), scores(rs, "baseline", "accuracy"))]
    return statistics.fmean(gaps) if gaps else None


def _diverged(rs: list[Run]) -> list[str]:
    return sorted(e.name for e, m in rs if failed(m))


def _settled(g: dict) -> bool:
    """Every seed of the comparison is in: paired, or lost to a diverged run (never rerun). Seeds,
    not runs: the smoothing comparison's student and smoothed run of one seed may both diverge."""
    return g["n"] + len({name.rsplit("-s", 1)[1] for name in g["diverged"]}) >= len(CIFAR_SEEDS)


def comparisons(runs: list[Run]) -> dict[tuple[str, int], dict]:
    """Every comparison of the study: (kind, budget) -> its paired gain with the gap, each teacher's
    mean and Holm's adjustment over all of them (nan until every one has 2 seeds or more); the
    smoothing control's as ("smooth-<kind>", LONGEST): distilled minus smoothed student."""
    out = {}
    for b in BUDGETS:
        for kind in CIFAR_FAMILIES:
            rs = setting(runs, f"cifar-{kind}-e{b}")
            if rs:
                student, base = by_seed(rs, "student"), by_seed(rs, "baseline")
                out[kind, b] = {"student": student, "baseline": base, "gap": _gap(rs),
                                "teacher_epochs": rs[0][0].overrides.get("teacher.epochs"),
                                "gain": {**paired(student, base), "teachers": _teacher_means(rs, student, base),
                                         "diverged": _diverged(rs)}}
    ls_runs = setting(runs, f"cifar-smooth-e{LONGEST}")
    ls = by_seed(ls_runs, "baseline")
    for kind in ("self", "reversed"):
        rs = setting(runs, f"cifar-{kind}-e{LONGEST}")
        student = by_seed(rs, "student")
        out[f"smooth-{kind}", LONGEST] = {"student": student, "baseline": ls, "gap": None,
                                          "gain": {**paired(student, ls), "teachers": _teacher_means(rs, student, ls),
                                                   "diverged": _diverged(rs + ls_runs)}}
    gains = [c["gain"] for c in out.values()]
    adjusted = holm([g["p"] for g in gains]) if gains else []
    final = all(_settled(g) for g in gains)
    for g, h in zip(gains, adjusted):
        g["holm"], g["holm_final"] = h, final
        g["random_ci"] = random_teacher_ci(g["teachers"])
    return out


def gain_rows(runs: list[Run]) -> dict[tuple[str, int], dict]:
    """(kind, budget) -> the distilled-minus-true-label gain over seeds, with both sides."""
    return {k: v for k, v in comparisons(runs).items() if k[0] in CIFAR_FAMILIES}


def _ci(ci: tuple[float, float]) -> str:
    return "" if any(math.isnan(x) for x in ci) else f"[{100 * ci[0]:+.2f}, {100 * ci[1]:+.2f}]"


def _by_teacher(teachers: dict[int, float]) -> str:
    return ", ".join(f"t{t}: {100 * m:+.2f}" for t, m in teachers.items())


def budgettable(runs: list[Run]) -> list[str]:
    lines = ["### KD gain against the student's budget", "",
             "Test accuracy %, mean ± std over seeds; gain = distilled − true-label student of the same seed "
             "(same init, batch order and augmentation), with its 95% t-interval, the paired t-test's p and "
             "Holm's adjustment over the study's 11 comparisons (this table's 9 and the smoothing control's 2). "
             f"Student seed k learns from teacher seed k mod {TEACHER_SEEDS}: each teacher's own mean gain is "
             "shown, and the interval that treats the teacher as a random effect (over the teachers' means; "
             "wide with 2 teachers, shown, not used for the verdict). Gap: teacher − true-label student test "
             "accuracy, points (negative: the teacher is the weaker model).", ""]
    rows = gain_rows(runs)
    # a diverged seed is never rerun (docs/cifar-study.md), so it does not keep its cell waiting
    if not all(_settled(r["gain"]) for r in rows.values()):
        lines += [f"Interim: not every cell has its {len(CIFAR_SEEDS)} seeds yet, so p and Holm's p below are "
                  "interim figures; no verdict is drawn from them.", ""]
    diverged = sorted({name for r in rows.values() for name in r["gain"]["diverged"]})
    if diverged:
        lines += [f"Diverged, not rerun: {', '.join(diverged)}. A cell with one of them is over the seeds that "
                  "finished and has no verdict.", ""]
    if rows:  # budget_plot draws it then
        lines += ["![KD gain vs budget](poster/cifar-budget.png)", ""]
    out = []
    for (kind, b), r in rows.items():
        g = r["gain"]
        teacher = f"{CIFAR_FAMILIES[kind][0]} e{r['teacher_epochs']}"
        out.append([LABEL[kind], str(b), teacher, str(g["n"]),
                    "" if r["gap"] is None else f"{100 * r['gap']:+.2f}", pct(list(r["baseline"].values())),
                    pct(list(r["student"].values())), *fmt_paired(g), _p(g["holm"]), _by_teacher(g["teachers"]),
                    _ci(g["random_ci"])])
    lines += table(["experiment", "student epochs", "teacher", "seeds", "gap", "true labels %", "distilled %",
                    "gain, points", "95% CI", "p", "p (Holm)", "gain by teacher", "95% CI, teacher random"], out)
    return lines


def smoothingtable(runs: list[Run], chosen: dict) -> list[str]:
    eps = (chosen.get("smooth") or {}).get("baseline.label_smoothing")
    c = comparisons(runs)
    ls = by_seed(setting(runs, f"cifar-smooth-e{LONGEST}"), "baseline")
    plain = by_seed(setting(runs, f"cifar-self-e{LONGEST}"), "baseline")
    lines = [f"### The label-smoothing control ({LONGEST} epochs)", "",
             f"The vgg8 student on true labels with uniform label smoothing (epsilon "
             f"{'not chosen yet' if eps is None else f'{eps:g}'}, chosen on validation), against the same "
             "student distilled, paired by seed.", ""]
    rows = [["true labels + smoothing", pct(list(ls.values())), *fmt_paired(paired(ls, plain)), "",
             "vs plain true labels"]]
    for kind in ("self", "reversed"):
        g = c[f"smooth-{kind}", LONGEST]["gain"]
        rows.append([f"distilled, {LABEL[kind]}", "", *fmt_paired(g), _p(g["holm"]), "vs smoothing"])
    lines += table(["student", "test %", "difference, points", "95% CI", "p", "p (Holm)", "compared with"], rows)
    return lines


def claims(runs: list[Run]) -> list[str]:
    c = comparisons(runs)

    def detail(what: dict) -> str:
        nums = fmt_paired(what)
        holm_p = _p(what["holm"]) or "pending"
        return (f"{nums[0]} points over {what['n']} runs, 95% CI {nums[1]}, p {nums[2]} (Holm {holm_p}); "
                f"by teacher {_by_teacher(what['teachers'])}" if what["n"] > 1 else nums[0])

    lines = ["### The poster's claims at this scale", "",
             "Per family and budget, by the rule written before the runs (docs/cifar-study.md): confirmed or "
             f"refuted when Holm's p < {LEVEL:g} and every teacher's mean gain has the same sign.", ""]
    for kind in CIFAR_FAMILIES:
        parts = []
        for b in BUDGETS:
            r = c.get((kind, b))
            if r is None:
                parts.append(f"{b} epochs: not run")
                continue
            gap = "" if r["gap"] is None else f", gap {100 * r['gap']:+.2f}"
            parts.append(f"{b} epochs{gap}: {verdict(r['gain'])}, {detail(r['gain'])}")
        lines.append(f"- **{CLAIMS[kind]}** ({LABEL[kind]}): " + "; ".join(parts) + ".")
    lines.append(f"- **{CLAIMS['smooth']}**: " + "; ".join(
        f"{LABEL[k]}, {LONGEST} epochs: {verdict(c[f'smooth-{k}', LONGEST]['gain'])}, distilled minus smoothed "
        f"student {detail(c[f'smooth-{k}', LONGEST]['gain'])}" for k in ("self", "reversed")) + ".")
    return lines + [""]


def machine_time(path: Path, commits: set[str] | None = None) -> list[str]:
    """reports/poster/machine-time.csv: every invocation that ran experiments, with its CPU. With
    `commits` (those the reported runs ran on), only those invocations count: the others ran code
    that has changed since, whose runs the report no longer shows."""
    if not path.is_file():
        return []
    total, stale = machine_totals(path, commits)
    rel = f"{path.parent.name}/{path.name}"
    lines = ["## Machine time", "",
             # Relative to the report beside the folder, so the link works in any clone.
             f"Wall time of the invocations that ran the experiments of this report ([{rel}]({rel}) lists "
             "each), by part and by the CPU they ran on (torch capability, what `precision: auto` chose there):",
             ""]
    lines += table(["part", "CPU, precision, device", "experiments run", "hours"],
                    [[part, cpu, f"{n:.0f}", f"{sec / 3600:.2f}"] for (part, cpu), (sec, n) in total.items()])
    cifar = sum(sec for (part, _), (sec, _) in total.items() if part.startswith("cifar"))
    if cifar:
        lines += [f"The CIFAR-10 study in all: {cifar / 3600:.2f} h.", ""]
    if stale:
        # Off every reported run's commit: code changed since, or a part this report leaves out.
        lines += [f"Not counted: {stale / 3600:.2f} h of invocations on earlier code or of parts this "
                  "report leaves out: no experiment shown here ran on their commits.", ""]
    return lines


def cifar_section(runs: list[Run], chosen: dict) -> list[str]:
    cifar = of_part(runs, "cifar")
    lines = ["## CIFAR-10 at CPU scale: where does distillation pay?", "",
             "Data: the CIFAR-10 mirror, JPEG quality 75. Nets: vgg5 (99k params), vgg8 (148k) and resnet8 "
             "(78k), the cheapest that keep the poster's relations: a smaller net teaching a larger one, a net "
             "teaching itself, and knowledge crossing VGG -> ResNet (`profiles/cifar10-cpu.yaml`, "
             "`kd_study/experiments.py`). The teacher labels exactly the augmented view the student sees "
             "(`soft_labels.mode: live`). T, alpha and the smoothing epsilon were chosen on the validation "
             "split; every accuracy below is on the test set. The design, written before the runs: "
             "[docs/cifar-study.md](../docs/cifar-study.md); the earlier designs' results: "
             "\"Design changes\" below.", ""]
    lines += teachers(cifar) + grids(cifar, chosen) + budgettable(cifar) + smoothingtable(cifar, chosen)
    lines += claims(cifar)
    return lines


def budget_plot(runs: list[Run], out_dir: Path) -> None:
    import matplotlib.pyplot as plt

    rows = gain_rows(of_part(runs, "cifar"))
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for i, kind in enumerate(CIFAR_FAMILIES):
        pts = [(b, r["gain"]) for (k, b), r in rows.items() if k == kind and r["gain"]["n"]]
        if not pts:
            continue
        xs = [b for b, _ in pts]
        ys = [100 * g["mean"] for _, g in pts]
        ax.plot(xs, ys, marker="o", color=f"C{i}", label=LABEL[kind])
        band = [(b, g) for b, g in pts if g["n"] > 1]
        if band:
            ax.fill_between([b for b, _ in band], [100 * g["ci"][0] for _, g in band],
                            [100 * g["ci"][1] for _, g in band], color=f"C{i}", alpha=0.2)
            if len(band) == 1:
                b, g = band[0]
                ax.errorbar([b], [100 * g["mean"]], yerr=[[100 * (g["mean"] - g["ci"][0])],
                                                          [100 * (g["ci"][1] - g["mean"])]],
                            color=f"C{i}", capsize=3)
    ax.axhline(0, color="black", lw=0.8)
    ax.set(xlabel="student epochs", ylabel="KD gain, test accuracy points", xticks=list(BUDGETS))
    ax.set_title("distilled − true-label student, mean and 95% CI over seeds", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout(), fig.savefig(out_dir / "cifar-budget.png", dpi=120), plt.close(fig)
