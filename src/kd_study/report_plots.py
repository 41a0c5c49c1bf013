"""The poster report's figures: accuracy vs temperature, the omitted digit, CIFAR-10 KD gain vs budget."""
from __future__ import annotations

import statistics
from pathlib import Path

from kd_study.experiments import OMITTED_DIGIT
from kd_study.report_cifar import budget_plot
from kd_study.report_gap import gap_plot
from kd_study.runs import BEFORE_AND_AFTER_FIX, Run, at_temperature, finished, of_kind, of_part, scores


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0


def plots(runs: list[Run], temperatures, out_dir: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def save(fig, name):
        fig.tight_layout(), fig.savefig(out_dir / name, dpi=120), plt.close(fig)

    out_dir.mkdir(parents=True, exist_ok=True)
    sweep = of_kind(finished(of_part(runs, "mnist")), "sweep")
    if sweep:
        fig, ax = plt.subplots(figsize=(6, 4))
        ts, means, stds = [], [], []
        for t in temperatures:
            acc = [100 * a for a in scores(at_temperature(sweep, t), "student", "accuracy")]
            if acc:
                ts.append(t), means.append(_mean_std(acc)[0]), stds.append(_mean_std(acc)[1])
        ax.errorbar(ts, means, yerr=stds, marker="o", capsize=3, label="distilled student")
        base = [100 * a for a in scores(sweep, "baseline", "accuracy")]
        if base:
            ax.axhline(statistics.fmean(base), color="grey", ls="--", label="student, true labels")
        ax.set(xscale="log", xlabel="temperature T", ylabel="MNIST test accuracy %", xticks=ts)
        ax.set_xticklabels([f"{t:g}" for t in ts])
        ax.legend()
        save(fig, "temperature.png")
    omit = of_kind(finished(runs), "omit")
    if omit:
        fig, ax = plt.subplots(figsize=(6, 4))
        labels, vals, errs = [], [], []
        for role in ("baseline", "student"):
            for when, fix in BEFORE_AND_AFTER_FIX:
                acc = [100 * a for a in scores(omit, role, *fix, "omitted_accuracy")]
                labels.append(f"{'distilled' if role == 'student' else 'true labels'}\n{when} fix")
                m, sd = _mean_std(acc) if acc else (0, 0)
                vals.append(m), errs.append(sd)
        ax.bar(labels, vals, yerr=errs, capsize=3, color=["grey", "grey", "C0", "C0"])
        ax.set(ylabel=f"test accuracy on {OMITTED_DIGIT}s %", ylim=(0, 100))
        save(fig, "omit.png")
    budget_plot(runs, out_dir)
    if any(e.part == "cifar" for e, _ in runs):
        gap_plot(out_dir, out_dir)  # the records beside the report, of every design
