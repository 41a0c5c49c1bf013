"""The poster report's runs and what every section of it asks of them: which runs, their
scores, the mean ± std and the paired gain test, Holm's correction, the machine-time log, a
markdown table. report, report_cifar, report_methods and report_plots all import this module
and it imports none of them."""
from __future__ import annotations

import csv
import math
import statistics

from scipy import stats

from kd.paths import metrics_file
from kd_study.experiments import Experiment, failed, val_of

# An experiment and its metrics files by path (kd.paths), None when it did not finish.
Run = tuple[Experiment, "dict | None"]
EVALUATION = metrics_file("evaluate").as_posix()

BEFORE_AND_AFTER_FIX = (("before", ()), ("after", ("corrected",)))  # evaluate.json keys of the bias fix


def finished(runs: list[Run]) -> list[Run]:
    return [(e, m) for e, m in runs if m is not None and not failed(m)]


def failed_runs(runs: list[Run]) -> list[Run]:
    """Runs that failed on this code and params (kd_study.experiments.FAILED)."""
    return [(e, m) for e, m in runs if failed(m)]


def of_part(runs: list[Run], part: str) -> list[Run]:
    return [(e, m) for e, m in runs if e.part == part]


def of_kind(runs: list[Run], kind: str) -> list[Run]:
    return [(e, m) for e, m in runs if e.kind == kind]


def at_temperature(runs: list[Run], t: float) -> list[Run]:
    return [(e, m) for e, m in runs if e.overrides.get("temperature") == t]


def evaluated(e: Experiment) -> bool:
    """Whether the experiment ran `evaluate`: a teacher-only one (targets train_teacher) did not,
    and an evaluate.json in an old record of it is the workspace's, not its own."""
    return not e.targets or bool({"evaluate", "export_onnx"} & set(e.targets))


def scores(runs: list[Run], role: str, *key: str) -> list[float]:
    """evaluate.json's `role`.`key` of every finished run that has it, e.g. ("student", "accuracy")."""
    out = []
    for e, metrics in finished(runs):
        if not evaluated(e):
            continue
        value = metrics.get(EVALUATION, {}).get(role)
        for k in key:
            value = value.get(k) if isinstance(value, dict) else None
        if value is not None:
            out.append(value)
    return out


def val_cell(runs: list[Run], role: str) -> str:
    """A tuning point's validation accuracy % (its first finished run), or why there is none."""
    if failed_runs(runs):
        return "diverged"
    point = finished(runs)
    value = val_of(point[0][1], role) if point else None
    return "not run" if value is None else f"{100 * value:.2f}"


def by_seed(runs: list[Run], role: str) -> dict[int, float]:
    """Seed -> test accuracy of `role`, over the finished runs."""
    return {e.seed: acc[0] for e, m in finished(runs) if (acc := scores([(e, m)], role, "accuracy"))}


def paired(a: dict[int, float], b: dict[int, float]) -> dict:
    """a - b over the seeds both have (gain_test: mean, std, 95% t-interval, paired t-test)."""
    seeds = sorted(set(a) & set(b))
    return gain_test([a[s] for s in seeds], [b[s] for s in seeds])


def mean_ci(values: list[float]) -> tuple[float, float, float]:
    """The mean and its 95% t-interval (nan without 2 values)."""
    if not values:
        return math.nan, math.nan, math.nan
    m = statistics.fmean(values)
    if len(values) < 2:
        return m, math.nan, math.nan
    half = stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return m, m - half, m + half


def holm(ps: list[float]) -> list[float]:
    """Holm's step-down adjustment (family-wise error rate) of the p-values of one family of
    tests, in their order: the i-th smallest times (m - i + 1), at most 1, never below the
    adjusted p of a smaller one. All nan if any is nan (the family is not complete)."""
    if any(math.isnan(p) for p in ps):
        return [math.nan] * len(ps)
    out, running = [math.nan] * len(ps), 0.0
    for rank, i in enumerate(sorted(range(len(ps)), key=lambda i: ps[i])):
        running = max(running, min(1.0, (len(ps) - rank) * ps[i]))
        out[i] = running
    return out


def machine_totals(path, commits: set[str] | None = None) -> tuple[dict[tuple[str, str], list[float]], float]:
    """reports/poster/machine-time.csv summed: (part, "CPU capability, precision, device") ->
    [seconds, experiments run], and the seconds of invocations on other commits than `commits`
    (those the reported runs ran on; None: count every row)."""
    if not path.is_file():
        return {}, 0.0
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    short = None if commits is None else {c[:7] for c in commits}
    total: dict[tuple[str, str], list[float]] = {}
    stale = 0.0
    for r in rows:
        if short is not None and r["commit"][:7] not in short:
            stale += float(r["seconds"])
            continue
        key = (r["part"], f"{r['cpu_capability']}, {r['auto_precision']}, {r['device']}")
        total.setdefault(key, [0, 0])
        total[key][0] += float(r["seconds"])
        total[key][1] += int(r["experiments_run"])
    return total, stale


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
