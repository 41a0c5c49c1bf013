"""The poster report: our numbers (mean ± std over seeds) beside the poster's and Hinton's."""
from __future__ import annotations

import statistics
from pathlib import Path

from kd.paths import metrics_file
from kd_study import report_cifar, report_cost, report_gap, report_history, report_methods
from kd_study.experiments import FAILED, HINTON_FOLLOWUPS, METHOD_SEEDS, OMITTED_DIGIT, Experiment, val_of
from kd_study.report_plots import plots
from kd_study.runs import (BEFORE_AND_AFTER_FIX, Run, at_temperature, failed_runs, finished, gain_test, of_kind, of_part, pct,
                           scores, table)

# Published numbers, as the poster and the papers state them (test accuracy, %).
HINTON = {"teacher": "99.33 (67 errors)", "baseline": "98.54 (146 errors)", "student": "99.26 (74 errors)"}
# Hinton et al. 2015, sec. 3: the distilled net without 3s made 206 errors, 133 of them on
# the 1010 threes; with the 3s' bias raised by 3.5, 109 errors, 14 on threes.
HINTON_OMIT = {"before": "86.8 of 3s, 97.94 overall", "after": "98.6 of 3s, 98.91 overall"}
# ---- which runs -------------------------------------------------------------------------

def hardware(runs: list[Run]) -> str:
    """The precisions and CPU kinds the runs' models trained with, from their metrics files:
    results are comparable bit for bit only within one of them."""
    files = [metrics_file(role).as_posix() for role in ("teacher", "baseline", "student")]
    seen = {f"{m[f].get('precision', 'precision not recorded')} on {m[f].get('cpu_capability', 'CPU not recorded')}"
            for _, m in finished(runs) for f in files if f in m}
    return "; ".join(sorted(seen)) or "not recorded"


def kd_gain(runs: list[Run]) -> dict:
    return gain_test(scores(runs, "student", "accuracy"), scores(runs, "baseline", "accuracy"))


# ---- numbers as text --------------------------------------------------------------------

def verdict(g: dict) -> str:
    if not g["gains"]:
        return "not run"
    if len(g["gains"]) < 2:
        return "one seed: no test"
    sign = "gain" if g["mean"] > 0 else "loss"
    if g["p"] >= 0.05:
        return f"no (p={g['p']:.2f})"
    return f"yes, a {sign} (p<0.001)" if g["p"] < 0.001 else f"yes, a {sign} (p={g['p']:.3f})"


def fmt_gain(g: dict) -> str:
    if not g["gains"]:
        return "not run"
    s = f"{100 * g['mean']:+.2f}"
    return s + (f" ± {100 * g['std']:.2f}" if len(g["gains"]) > 1 else "")


def _extras(runs: list[Run], role: str) -> list[str]:
    """ECE, and fidelity to the teacher, for the table's last columns."""
    ece = pct(scores(runs, role, "ece"))
    if role == "teacher":
        return [ece, "", ""]
    return [ece, pct(scores(runs, role, "agreement")), _mean(scores(runs, role, "kl_from_teacher"), "{:.3f}")]


def _mean(values, fmt) -> str:
    if not values:
        return "not run"
    if len(values) == 1 and float(values[0]).is_integer():
        return f"{values[0]:.0f}"  # one error count
    s = fmt.format(statistics.fmean(values))
    return s + (" ± " + fmt.format(statistics.stdev(values)) if len(values) > 1 else "")


EXTRA_HEADER = ["ECE %", "top-1 agreement with teacher %", "KL(teacher‖model), nats"]


# ---- sections ---------------------------------------------------------------------------

def mnist_section(runs: list[Run], temperatures, main_t: float = 20) -> list[str]:
    sweep = of_kind(finished(of_part(runs, "mnist")), "sweep")
    main = at_temperature(sweep, main_t)
    g = kd_gain(main)
    lines = ["## MNIST: normal KD (Hinton et al. 2015)", "",
             f"Teacher 784-1200-1200-10, student 784-800-800-10; T={main_t:g}, alpha from params.yaml; "
             f"{len(main)} student seeds against one teacher (`teacher.seed`). Data: the byte-exact MNIST mirror.", ""]
    rows = []
    for role, label in (("teacher", "teacher"), ("baseline", "student, true labels"),
                        ("student", f"student, distilled (T={main_t:g})")):
        of_role = main[:1] if role == "teacher" else main  # one teacher for all seeds
        rows.append([label, pct(scores(of_role, role, "accuracy")), _mean(scores(of_role, role, "errors"), "{:.1f}"),
                     HINTON[role], *_extras(of_role, role)])
    lines += table(["model", "ours: test accuracy %", "test errors", "Hinton et al.", *EXTRA_HEADER], rows)
    lines += [f"KD gain (distilled − true labels, paired by seed): **{fmt_gain(g)} points**; "
              f"exceeds seed noise: {verdict(g)}. The poster: about 99% at T=20.", ""]
    # A figure only of finished runs (report_plots draws it then): never an earlier run's beside "not run".
    figure = ["![accuracy vs temperature](poster/temperature.png)", ""] if of_kind(finished(
        of_part(runs, "mnist")), "sweep") else []
    lines += ["### Temperature sweep", "", *figure]
    rows = []
    for t in temperatures:
        at_t = at_temperature(sweep, t)
        gt = kd_gain(at_t)
        rows.append([f"{t:g}", pct(scores(at_t, "student", "accuracy")), fmt_gain(gt), verdict(gt),
                     *_extras(at_t, "student")])
    lines += table(["T", "distilled student %", "gain over true labels", "exceeds seed noise", *EXTRA_HEADER], rows)
    if main:
        lines += [f"True-label student (no T): {pct(scores(main, 'baseline', 'accuracy'))}.", ""]
    return lines


def omit_section(runs: list[Run]) -> list[str]:
    omit = of_kind(of_part(runs, "mnist"), "omit")
    d = OMITTED_DIGIT
    lines = [f"## MNIST without {d}s in the student's transfer set", "",
             f"Both students never see a {d} in training (the teacher did). The bias correction adds one "
             f"scalar to the {d}-logit, fitted for accuracy on the validation split (never on test).", "",
             *(["![omit-3](poster/omit.png)", ""] if finished(omit) else [])]
    rows = []
    for role, label in (("baseline", "student, true labels"), ("student", "student, distilled")):
        for when, fix in BEFORE_AND_AFTER_FIX:
            rows.append([label, when, pct(scores(omit, role, *fix, "omitted_accuracy")),
                         pct(scores(omit, role, *fix, "accuracy")),
                         _mean(scores(omit, role, "corrected", "bias"), "{:.2f}") if when == "after" else "",
                         HINTON_OMIT[when] if role == "student" else ""])
    lines += table(["model", "bias fix", f"accuracy on {d}s %", "overall %", "fitted bias", "Hinton et al."], rows)
    return lines


def hinton_section(runs: list[Run]) -> list[str]:
    """MNIST at Hinton's level (docs/hinton-study.md): the teacher's length and the student's
    setting chosen on validation, then the final models on all 60k images."""
    hinton = of_part(runs, "hinton")
    lines = ["## MNIST at Hinton's level (`profiles/mnist-hinton.yaml`)", "",
             "The teacher regularised as Hinton et al.: dropout 0.5 on the hidden layers and 0.2 on the input, "
             "±2 px jitter, a max-norm constraint (radius 3.5); the student 800-800 without dropout at T=20. "
             "Chosen on the validation split: the teacher's length, then the student's alpha and length; the "
             "final models train on all 60k images. Design, written before the runs: "
             "[docs/hinton-study.md](../docs/hinton-study.md).", ""]
    rows = [[str(e.overrides["teacher.epochs"]), _val_pct(m, "teacher")]
            for e, m in of_kind(hinton, "hinton-teacher")]
    lines += ["Teacher's length (validation accuracy %, 55k training images):", ""]
    lines += table(["teacher epochs", "teacher val %"], rows)
    grid = of_kind(hinton, "hinton-grid")
    if grid:
        lines += [f"Student with the chosen {grid[0][0].overrides['teacher.epochs']}-epoch teacher, T=20 "
                  "(validation accuracy %):", ""]
        lines += table(["alpha", "student epochs", "distilled val %", "true-label val %"],
                       [[f"{e.overrides['alpha']:g}", str(e.overrides["student.epochs"]), _val_pct(m, "student"),
                         _val_pct(m, "baseline")] for e, m in grid])
    final = finished(of_kind(hinton, "hinton-final"))
    if not final:
        return lines + ["Final models: not run yet.", ""]
    e0 = final[0][0]
    lines += [f"Final models on all 60k images (teacher {e0.overrides['teacher.epochs']} epochs; student alpha "
              f"{e0.overrides['alpha']:g}, {e0.overrides['student.epochs']} epochs), {len(final)} student seeds "
              "against one teacher:", ""]
    rows = []
    for role, label in (("teacher", "teacher"), ("baseline", "student, true labels"),
                        ("student", "student, distilled (T=20)")):
        of_role = final[:1] if role == "teacher" else final
        per_seed = ", ".join(f"{x:g}" for x in scores(of_role, role, "errors")) if role != "teacher" else ""
        rows.append([label, _mean(scores(of_role, role, "errors"), "{:.1f}"), per_seed,
                     pct(scores(of_role, role, "accuracy")), HINTON[role]])
    lines += table(["model", "test errors", "per seed", "test accuracy %", "Hinton et al."], rows)
    errors = scores(final, "student", "errors")
    teacher = scores(final[:1], "teacher", "errors")
    if errors:
        lines += [f"Teacher: {teacher[0]:g} errors (Hinton: 67). Distilled students: mean "
                  f"{statistics.fmean(errors):.1f} errors (Hinton: 74); at or below 74: "
                  f"{sum(x <= 74 for x in errors)} of {len(errors)} seeds.", ""]
    return lines + hinton_followups(of_kind(hinton, "hinton-followup"), errors)


HINTON_FACTORS = {"jitter": "student on ±2 px jittered images, 4 soft-label views each",
                  "se180": "student 180 epochs (true-label student too)",
                  "fp32": "teacher trained and labelling in fp32"}


def hinton_followups(runs: list[Run], final: list[float]) -> list[str]:
    """The final recipe with one factor changed (docs/hinton-study.md, "If 74 is not reached"), each
    read by the design's rule against the final distilled students' test errors `final`."""
    if not runs:
        return []
    lines = ["Follow-ups, since the final students missed 74 errors: the final recipe with one factor "
             "changed, at the same student seeds (test errors). The design's reading: a factor accounts "
             "for part of the gap when its distilled mean is below the final's by more than both standard "
             "deviations.", ""]
    rows, results = [], {}
    for tag in HINTON_FOLLOWUPS:
        label = HINTON_FACTORS.get(tag, tag)
        of_tag = [(e, m) for e, m in runs if e.name.rsplit("-s", 1)[0] == f"hinton-followup-{tag}"]
        errors = scores(of_tag, "student", "errors")
        teacher = scores(of_tag, "teacher", "errors")[:1]  # one teacher per factor
        results[label] = (errors, scores(of_tag, "baseline", "errors"))
        rows.append([label, _mean(errors, "{:.1f}"),
                     ", ".join(f"{x:g}" for x in errors), _mean(scores(of_tag, "baseline", "errors"), "{:.1f}"),
                     f"{teacher[0]:g}" if teacher else "", followup_reading(errors, final, len(final))])
    summary = followup_summary(results, final)
    return lines + table(["changed", "distilled errors", "per seed", "true-label errors", "teacher errors",
                          "vs the final's distilled"], rows) + ([summary, ""] if summary else [])


def followup_summary(results: dict[str, tuple[list[float], list[float]]], final: list[float]) -> str | None:
    """What the gap to 74 is attributable to, once every factor has all its seeds: the factors
    the design's rule credits, whether a credited factor's own true-label student does as well
    (then the factor helps any student, not distillation), and what no factor tested explains."""
    seeds = len(final)
    if seeds < 2 or not results or any(len(errors) < seeds for errors, _ in results.values()):
        return None
    means = {label: statistics.fmean(errors) for label, (errors, _) in results.items()}
    credited = {}  # label -> change in mean errors, for the factors the design's rule credits
    for label, (errors, _) in results.items():
        change, margin = _change_and_margin(errors, final)
        if -change > margin:
            credited[label] = change
    said = ["Every follow-up has run."]
    if not credited:
        said.append("None of the factors tested accounts for any of the gap.")
    for label, change in credited.items():
        said.append(f"Accounts for part of the gap: {label} ({change:+.1f} errors).")
        base = results[label][1]
        if base and statistics.fmean(base) <= means[label]:
            said.append(f"Its true-label student makes {statistics.fmean(base):.1f} errors on the same recipe, "
                        "no more than the distilled one: the factor helps any student, not distillation.")
    means["the final recipe"] = statistics.fmean(final)
    best = min(means, key=means.get)
    if means[best] <= 74:
        said.append(f"74 is reached with {best}: {means[best]:.1f} errors.")
    else:
        said.append(f"Closest to 74: {best}, {means[best]:.1f} errors; the remaining "
                    f"{means[best] - 74:.1f} errors are not attributable to any factor tested here.")
    return " ".join(said)


def followup_reading(errors: list[float], final: list[float], seeds: int) -> str:
    """The design's rule, said with the numbers it compares; no verdict before every seed has run."""
    if not errors:
        return ""
    if len(errors) < seeds or len(final) < 2:
        return f"{len(errors)} of {seeds} seeds: no reading yet"
    change, margin = _change_and_margin(errors, final)
    verdict = "accounts for part of the gap" if -change > margin else "does not account for it"
    return f"{change:+.1f} (the larger std {margin:.1f}): {verdict}"


def _change_and_margin(errors: list[float], final: list[float]) -> tuple[float, float]:
    """The design's rule compares the change in mean errors with the larger of the two stds."""
    return (statistics.fmean(errors) - statistics.fmean(final),
            max(statistics.stdev(errors), statistics.stdev(final)))


def _val_pct(metrics: dict | None, role: str) -> str:
    value = val_of(metrics, role)
    return "not run" if value is None else f"{100 * value:.2f}"


def write_report(path: Path, runs: list[Run], *, header: list[str], temperatures, chosen=None,
                 commits: set[str] | None = None, method_seeds=METHOD_SEEDS) -> None:
    lines = ["# Knowledge distillation: the poster's experiments, rerun", "", *header, ""]
    parts = {e.part for e, _ in runs}
    for part in sorted(parts):
        lines += [f"Trained in ({part}): {hardware(of_part(runs, part))}.", ""]
    if "mnist" in parts:
        lines += mnist_section(runs, temperatures) + omit_section(runs)
    if "hinton" in parts:
        lines += hinton_section(runs)
    if "cifar" in parts:
        lines += report_cifar.cifar_section(runs, chosen or {})
        lines += report_gap.gap_section(path.with_suffix("")) + report_cost.cost_section(path.with_suffix(""))
    if "methods" in parts:
        lines += report_methods.methods_section(runs, method_seeds, path.with_suffix("") / "machine-time.csv",
                                                commits)
    missing = [e.name for e, m in runs if m is None]
    diverged = failed_runs(runs)
    if diverged:
        lines += ["## Diverged", "", "These runs failed because a training loss became NaN or inf, on the code and "
                  "params shown; a tuning grid counts such a point as its worst, and they are not rerun: " +
                  ", ".join(f"{e.name} ({m[FAILED]})" for e, m in diverged), ""]
    if missing:
        lines += ["## Not run", "", "These experiments have no result yet: not started yet, or failed or stopped "
                  "(`dvc queue logs <name>` shows why, in the clone that ran them): " + ", ".join(missing), ""]
    lines += report_cifar.machine_time(path.with_suffix("") / "machine-time.csv", commits)
    lines += report_history.design_changes_section(path)
    lines += earlier_reports(path)
    lines += ["## Experiments", "", "`dvc exp show` lists them (on the commit they ran from); the rows above "
              "average these:", ""]
    lines += table(["experiment", "seed", "`-S` overrides of params.yaml"],
                    [[e.name, str(e.seed), _overrides(e)] for e, _ in runs])
    path.parent.mkdir(parents=True, exist_ok=True)
    plots(runs, temperatures, path.parent / "poster")
    path.write_text("\n".join(lines))


def earlier_reports(path: Path) -> list[str]:
    """Links to the reports kept verbatim under <report>/earlier/<date-commit>/ when their runs
    stopped counting as current (code or params changed): a finished result is never dropped."""
    kept = sorted((path.with_suffix("") / "earlier").glob("*/poster.md"))
    if not kept:
        return []
    lines = ["## Earlier results", "", "Finished results of earlier code or designs, kept as they were "
             "reported; each copy says what changed since and why:", ""]
    return lines + [f"- [{p.parent.name}]({p.relative_to(path.parent).as_posix()})" for p in kept] + [""]


def _overrides(e: Experiment) -> str:
    """The overrides; for a profile's rows (the same for all of them) only the keys that differ."""
    profile = {"cifar": "the CIFAR-10 CPU profile", "hinton": "the Hinton profile"}.get(e.part)
    if e.part == "methods" and "data.dataset" in e.overrides:
        profile = "the CIFAR-10 CPU profile"
    if profile is None:
        return " ".join(f"{k}={v}" for k, v in e.overrides.items())
    keep = ("teacher.arch", "teacher.epochs", "student.arch", "student.epochs", "temperature", "alpha",
            "baseline.label_smoothing", *(k for k in e.overrides if k.startswith("method.")), "seed")
    shown = " ".join(f"{k}={e.overrides[k]}" for k in keep if k in e.overrides
                     and (not e.targets or k.startswith("teacher.")))
    return f"{profile}, {shown}" + (f", only {' '.join(e.targets)}" if e.targets else "")
