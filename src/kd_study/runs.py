"""The poster report's runs and what every section of it asks of them: which runs, their
scores, the mean ± std and the paired gain test, a markdown table. report, report_cifar and
report_plots all import this module and it imports none of them."""
from __future__ import annotations

import math
import statistics

from scipy import stats

from kd.paths import metrics_file
from kd_study.experiments import Experiment

# An experiment and its metrics files by path (kd.paths), None when it did not finish.
Run = tuple[Experiment, "dict | None"]
EVALUATION = metrics_file("evaluate").as_posix()

BEFORE_AND_AFTER_FIX = (("before", ()), ("after", ("corrected",)))  # evaluate.json keys of the bias fix


def finished(runs: list[Run]) -> list[Run]:
    return [(e, m) for e, m in runs if m is not None]


def of_part(runs: list[Run], part: str) -> list[Run]:
    return [(e, m) for e, m in runs if e.part == part]


def of_kind(runs: list[Run], kind: str) -> list[Run]:
    return [(e, m) for e, m in runs if e.kind == kind]


def at_temperature(runs: list[Run], t: float) -> list[Run]:
    return [(e, m) for e, m in runs if e.overrides.get("temperature") == t]


def scores(runs: list[Run], role: str, *key: str) -> list[float]:
    """evaluate.json's `role`.`key` of every finished run that has it, e.g. ("student", "accuracy")."""
    out = []
    for _, metrics in finished(runs):
        value = metrics.get(EVALUATION, {}).get(role)
        for k in key:
            value = value.get(k) if isinstance(value, dict) else None
        if value is not None:
            out.append(value)
    return out


def pct(values: list[float]) -> str:
    """mean ± std (sample std over seeds) in percent."""
    if not values:
        return "not run"
    m = 100 * statistics.fmean(values)
    if len(values) < 2:
        return f"{m:.2f} (n=1)"
    return f"{m:.2f} ± {100 * statistics.stdev(values):.2f}"


def gain_test(student: list[float], baseline: list[float]) -> dict:
    """Paired over seeds: is the KD gain larger than seed-to-seed noise?"""
    gains = [s - b for s, b in zip(student, baseline)]
    out = {"gains": gains, "n": len(gains), "mean": statistics.fmean(gains) if gains else math.nan,
           "std": statistics.stdev(gains) if len(gains) > 1 else math.nan, "p": math.nan,
           "ci": (math.nan, math.nan)}  # the 95% t-interval of the mean gain
    if len(gains) > 1:
        half = stats.t.ppf(0.975, len(gains) - 1) * out["std"] / math.sqrt(len(gains))
        out["ci"] = (out["mean"] - half, out["mean"] + half)
    if len(gains) > 1 and statistics.stdev(gains) > 0:
        out["p"] = float(stats.ttest_rel(student, baseline).pvalue)
    elif len(gains) > 1:
        out["p"] = 0.0 if out["mean"] else 1.0
    return out


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(r) + " |" for r in rows), ""]
