"""What a distilled CIFAR model costs, all of it (issue #33, item 5): the teacher's training and
inference counted with the student's, in machine seconds of each stage (metrics/timing/<stage>.json),
against the true-label student a user would otherwise train, and the gain bought with the difference.

The teacher is trained once and shared by every seed and budget (DVC's run-cache restores its
timing file with it), but a user who wants one distilled model pays for all of it."""
from __future__ import annotations

import statistics
from pathlib import Path

from kd.paths import metrics_file
from kd_study.report_gap import FAMILIES, Point, points
from kd_study.runs import table

STAGES = ("train_teacher", "generate_soft_labels", "train_baseline", "train_student")


def seconds(p: Point, stage: str) -> float | None:
    return (p.metrics.get(f"metrics/timing/{stage}.json") or {}).get("seconds")


def _median(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _s(value: float | None) -> str:
    return "not recorded" if value is None else f"{value:,.0f}"


def hardware(pts: list[Point]) -> str:
    """The CPU kinds and precisions of the runs' models (each model's metrics file): seconds compare
    only within one of them."""
    seen = {f"{m.get('precision', 'precision not recorded')} on {m.get('cpu_capability', 'CPU not recorded')}"
            for p in pts for role in ("teacher", "baseline", "student")
            if (m := p.metrics.get(metrics_file(role).as_posix()))}
    return "; ".join(sorted(seen)) or "not recorded"


def cost_section(folder: Path) -> list[str]:
    pts = points(folder)
    lines = ["### What each gain costs, the teacher included", ""]
    if not pts:
        return lines + ["No recorded CIFAR distillation run yet.", ""]
    groups: dict[tuple[str, int, str], list[Point]] = {}
    for p in pts:
        groups.setdefault((p.family, p.budget, p.design), []).append(p)
    rows, live = [], False
    for (family, budget, design), g in sorted(groups.items(),
                                              key=lambda kv: (FAMILIES.index(kv[0][0]),) + kv[0][1:]):
        med = {stage: _median([seconds(p, stage) for p in g]) for stage in STAGES}
        is_live = any(p.params.get("soft_labels.mode") == "live" for p in g)
        live |= is_live
        parts = [med["train_teacher"], med["generate_soft_labels"], med["train_student"]]
        distilled = None if None in parts else sum(parts)
        plain = med["train_baseline"]
        extra = None if distilled is None or plain is None else distilled - plain
        gain = statistics.fmean(p.gain for p in g)
        per_hour = f"{gain / (extra / 3600):+.2f}" if extra else "n/a"
        labels = _s(med["generate_soft_labels"]) + (" (live: in the student's)" if is_live else "")
        rows.append([family, str(budget), design, str(len(g)), _s(med["train_teacher"]), labels,
                     _s(med["train_student"]), _s(med["train_baseline"]), _s(distilled), _s(plain), _s(extra),
                     f"{gain:+.2f}", per_hour])
    lines += [f"Median machine seconds of each stage over a setting's runs ({hardware(pts)}); a user pays "
              "teacher + soft labels + distilled student for the distilled model, the true-label student "
              "alone otherwise. Gain: mean distilled − true-label test accuracy, points.", ""]
    lines += table(["family", "student epochs", "design", "n", "teacher training s", "soft labels s",
                    "distilled student s", "true-label student s", "distilled model, all s",
                    "true-label model s", "extra s", "gain, points", "points per extra machine-hour"], rows)
    if live:
        lines += ["Live soft labels (`soft_labels.mode: live`): the teacher labels each augmented batch "
                  "during the student's training, so its forward passes are in the distilled student's "
                  "seconds; generate_soft_labels then only records that.", ""]
    return lines
