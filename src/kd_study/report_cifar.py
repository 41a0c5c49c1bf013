"""The CIFAR-10 study's part of reports/poster.md (issue #16): teachers and their plateau, the
validation grids, KD gain against the student's budget with 95% confidence intervals, the
label-smoothing control, and one verdict per claim of the poster."""
from __future__ import annotations

from pathlib import Path

from kd_study.experiments import (BUDGETS, CIFAR_FAMILIES, GRID, LONGEST, SMOOTHING, STUDY_TEACHER_EPOCHS,
                                  TEACHER_EPOCHS, TUNE_BUDGET, TUNED)
from kd_study.runs import (Run, by_seed, finished, machine_totals, of_kind, of_part, paired, pct, scores, table,
                           val_acc)

PLATEAU_POINTS = 0.3  # doubling a teacher's epochs adds less than this (validation accuracy, points)
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
    return [f"{100 * g['mean']:+.2f} ± {100 * g['std']:.2f}", f"[{100 * lo:+.2f}, {100 * hi:+.2f}]",
            "<0.001" if g["p"] < 0.001 else f"{g['p']:.3f}"]


def verdict(g: dict) -> str:
    if g["n"] < 2:
        return "not resolved (fewer than 2 seeds run)"
    lo, hi = g["ci"]
    if lo > 0:
        return "confirmed"
    if hi < 0:
        return "refuted (the effect is negative)"
    return "not resolved at this scale (the 95% interval holds 0)"


def setting(runs: list[Run], name: str) -> list[Run]:
    return [(e, m) for e, m in runs if e.name.rsplit("-s", 1)[0] == name]


def _cell(value: float | None) -> str:
    return "not run" if value is None else f"{100 * value:.2f}"


# ---- sections ---------------------------------------------------------------------------

def teachers(runs: list[Run]) -> list[str]:
    check = 2 * STUDY_TEACHER_EPOCHS
    lines = ["### Teachers, trained once and shared", "",
             f"Each study teacher trains {STUDY_TEACHER_EPOCHS} epochs; the same net at {check} epochs checks "
             f"its plateau (doubling the epochs should add less than {PLATEAU_POINTS} points of validation "
             "accuracy). Test accuracy is that of the study's runs.", ""]
    rows = []
    for arch in sorted({t for t, _ in CIFAR_FAMILIES.values()}):
        val = {e: next((val_acc(m, "teacher") for _, m in finished(setting(runs, f"cifar-teacher-{arch}-e{e}"))),
                       None) for e in TEACHER_EPOCHS}
        users = [(x, m) for x, m in finished(runs) if not x.targets and x.overrides.get("teacher.arch") == arch
                 and x.overrides.get("teacher.epochs") == STUDY_TEACHER_EPOCHS]
        test = scores(users[:1], "teacher", "accuracy")
        short, long_ = val.get(STUDY_TEACHER_EPOCHS), val.get(check)
        if short is None or long_ is None:
            plateau = "not run"
        else:
            gain = 100 * (long_ - short)
            plateau = f"{gain:+.2f} points: " + ("plateau" if gain < PLATEAU_POINTS else "not yet at its plateau")
        rows.append([arch, *(_cell(val[e]) for e in TEACHER_EPOCHS), _cell(test[0] if test else None), plateau])
    lines += table(["teacher", *(f"val % at {e} epochs" for e in TEACHER_EPOCHS),
                     f"test % at {STUDY_TEACHER_EPOCHS}", f"{STUDY_TEACHER_EPOCHS} -> {check} epochs adds"], rows)
    return lines


def grids(runs: list[Run], chosen: dict) -> list[str]:
    lines = [f"### T and alpha, chosen on the validation split (seed 0, student {TUNE_BUDGET} epochs)", "",
             "Distilled students' validation accuracy %; the best (bold) is used for every seed and budget. "
             "Heterogeneous KD uses self-KD's values (the same vgg8 teacher).", ""]
    for kind in TUNED:
        rows = []
        for t in GRID["temperature"]:
            row = [f"T={t:g}"]
            for a in GRID["alpha"]:
                point = finished(setting(runs, f"cifar-{kind}-e{TUNE_BUDGET}-T{t:g}-a{a:g}"))
                cell = _cell(val_acc(point[0][1], "student") if point else None)
                pick = chosen.get(kind) == {"temperature": t, "alpha": a}
                row.append(f"**{cell}**" if pick else cell)
            rows.append(row)
        base = [val_acc(m, "baseline") for _, m in finished(of_kind(runs, f"grid-{kind}"))]
        lines += [f"{LABEL[kind]} (true-label student: {_cell(base[0] if base else None)}):", ""]
        lines += table(["", *(f"alpha={a:g}" for a in GRID["alpha"])], rows)
    rows = []
    for eps in SMOOTHING:
        point = finished(setting(runs, f"cifar-smooth{eps:g}-e{TUNE_BUDGET}"))
        cell = _cell(val_acc(point[0][1], "baseline") if point else None)
        rows.append([f"{eps:g}", f"**{cell}**" if chosen.get("smooth") == {"baseline.label_smoothing": eps}
                     else cell])
    lines += ["Label smoothing of the true-label vgg8 student:", ""]
    lines += table(["epsilon", "validation %"], rows)
    return lines


def gain_rows(runs: list[Run]) -> dict[tuple[str, int], dict]:
    """(kind, budget) -> the distilled-minus-true-label gain over seeds, with both sides."""
    out = {}
    for kind in CIFAR_FAMILIES:
        for b in BUDGETS:
            rs = setting(runs, f"cifar-{kind}-e{b}")
            if rs:
                student, base = by_seed(rs, "student"), by_seed(rs, "baseline")
                out[kind, b] = {"student": student, "baseline": base, "gain": paired(student, base)}
    return out


def budgettable(runs: list[Run]) -> list[str]:
    lines = ["### KD gain against the student's budget", "",
             "Test accuracy %, mean ± std over seeds; gain = distilled − true-label student of the same seed "
             "(same init, batch order and augmentation), with its 95% t-interval and the paired t-test.", ""]
    if gain_rows(runs):  # budget_plot draws it then
        lines += ["![KD gain vs budget](poster/cifar-budget.png)", ""]
    rows = []
    for (kind, b), r in gain_rows(runs).items():
        rows.append([LABEL[kind], str(b), str(r["gain"]["n"]), pct(list(r["baseline"].values())),
                     pct(list(r["student"].values())), *fmt_paired(r["gain"])])
    lines += table(["experiment", "student epochs", "seeds", "true labels %", "distilled %", "gain, points",
                     "95% CI", "p"], rows)
    return lines


def smoothing(runs: list[Run]) -> dict[str, dict]:
    ls = by_seed(setting(runs, f"cifar-smooth-e{LONGEST}"), "baseline")
    out = {"ls": ls, "plain": by_seed(setting(runs, f"cifar-self-e{LONGEST}"), "baseline")}
    for kind in TUNED:
        out[kind] = paired(by_seed(setting(runs, f"cifar-{kind}-e{LONGEST}"), "student"), ls)
    out["ls-gain"] = paired(ls, out["plain"])
    return out


def smoothingtable(runs: list[Run], chosen: dict) -> list[str]:
    eps = (chosen.get("smooth") or {}).get("baseline.label_smoothing")
    s = smoothing(runs)
    lines = [f"### The label-smoothing control ({LONGEST} epochs)", "",
             f"The vgg8 student on true labels with uniform label smoothing (epsilon "
             f"{'not chosen yet' if eps is None else f'{eps:g}'}, chosen on validation), against the same "
             "student distilled, paired by seed.", ""]
    rows = [["true labels + smoothing", pct(list(s["ls"].values())), *fmt_paired(s["ls-gain"]),
             "vs plain true labels"]]
    for kind in TUNED:
        rows.append([f"distilled, {LABEL[kind]}", "", *fmt_paired(s[kind]), "vs smoothing"])
    lines += table(["student", "test %", "difference, points", "95% CI", "p", "compared with"], rows)
    return lines


def claims(runs: list[Run]) -> list[str]:
    g = gain_rows(runs)
    s = smoothing(runs)

    def detail(what: dict) -> str:
        nums = fmt_paired(what)
        return (f"{nums[0]} points over {what['n']} seeds, 95% CI {nums[1]}, p {nums[2]}"
                if what["n"] > 1 else nums[0])

    def line(key: str, what: dict, text: str) -> str:
        return f"- **{CLAIMS[key]}**: {verdict(what)}. {text}: {detail(what)}."

    empty = paired({}, {})
    longest = {k: (g.get((k, LONGEST)) or {"gain": empty})["gain"] for k in CIFAR_FAMILIES}
    lines = ["### The poster's claims at this scale", ""]
    lines.append(line("reversed", longest["reversed"], f"{LABEL['reversed']}, {LONGEST} epochs"))
    lines.append(line("self", longest["self"], f"{LABEL['self']}, {LONGEST} epochs"))
    lines.append(line("hetero", longest["hetero"], f"{LABEL['hetero']}, {LONGEST} epochs"))
    lines.append(f"- **{CLAIMS['smooth']}**: " + "; ".join(
        f"{LABEL[k]}: {verdict(s[k])}, distilled minus smoothed student {detail(s[k])}" for k in TUNED) + ".")
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
             "split; every accuracy below is on the test set.", ""]
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
