"""KD gain against the teacher-student accuracy gap over every recorded CIFAR distillation run,
of the current design and of every kept earlier one (issue #33, item 3): does architecture
(self-KD vs heterogeneous KD) matter once the gap is accounted for?

The runs come from the records (runs.jsonl beside the report, and earlier/*/runs.jsonl), not
from the plan, so runs that no design lists any more still count, each labelled by its design."""
from __future__ import annotations

import json
import re
import statistics
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import stats

from kd_study.runs import EVALUATION, table

# Only the seeded study runs: teacher-only, grid (-T..-a..) and smoothing runs do not match.
NAME = re.compile(r"cifar-(reversed|self|hetero)-e(\d+)-s(\d+)")
FAMILIES = ("reversed", "self", "hetero")       # colours C0, C1, C2, as the budget plot
CURRENT = "current"
MARKERS = ("o", "s", "^", "D", "v", "P")


@dataclass(frozen=True)
class Point:
    name: str
    family: str
    budget: int
    seed: int
    design: str        # "current", or the kept folder under earlier/
    gap: float         # teacher − true-label student test accuracy, points
    gain: float        # distilled − true-label student test accuracy, points
    params: dict
    metrics: dict


def _records(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def points(folder: Path) -> list[Point]:
    """The finished distillation runs of `folder`/runs.jsonl and `folder`/earlier/*/runs.jsonl. A
    current record that a kept copy holds too (same name and commit) is that design's run, counted
    once, under the kept copy's label."""
    labelled: dict[tuple[str, str], tuple[str, dict]] = {}
    for kept in sorted((folder / "earlier").glob("*/runs.jsonl")):
        for r in _records(kept):
            labelled.setdefault((r["name"], r.get("rev", "")), (kept.parent.name, r))
    for r in _records(folder / "runs.jsonl"):
        labelled.setdefault((r["name"], r.get("rev", "")), (CURRENT, r))
    out = []
    for (name, _), (design, r) in sorted(labelled.items()):
        match = NAME.fullmatch(name)
        ev = (r.get("metrics") or {}).get(EVALUATION) or {}
        acc = {role: (ev.get(role) or {}).get("accuracy") for role in ("teacher", "baseline", "student")}
        if not match or None in acc.values():
            continue
        out.append(Point(name, match[1], int(match[2]), int(match[3]), design,
                         100 * (acc["teacher"] - acc["baseline"]), 100 * (acc["student"] - acc["baseline"]),
                         r.get("params") or {}, r.get("metrics") or {}))
    return out


def fit(pts: list[Point]) -> dict:
    """OLS gain = a + b·gap + c·[hetero] (+ d·[reversed]), self-KD the reference; each
    coefficient with its 95% t-interval from the OLS covariance. {"error": why} when it cannot be fitted."""
    if len(pts) < 4:
        return {"error": f"{len(pts)} points: too few to fit (at least 4)"}
    gaps = np.array([p.gap for p in pts])
    if np.var(gaps) == 0:
        return {"error": "every point has the same gap: its effect cannot be separated"}
    names, cols = ["a (intercept)", "b (per point of gap)"], [np.ones(len(pts)), gaps]
    for fam in ("hetero", "reversed"):
        col = np.array([float(p.family == fam) for p in pts])
        # Only a family that is there, beside self-KD, has a coefficient the data can estimate.
        if 0 < col.sum() < len(pts) and any(p.family == "self" for p in pts):
            names.append({"hetero": "c ([hetero])", "reversed": "d ([reversed])"}[fam]), cols.append(col)
    x, y = np.column_stack(cols), np.array([p.gain for p in pts])
    dof = len(pts) - x.shape[1]
    if dof < 1 or np.linalg.matrix_rank(x) < x.shape[1]:
        return {"error": f"{len(pts)} points cannot fit {x.shape[1]} coefficients"}
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    resid = y - x @ coef
    sigma2 = float(resid @ resid) / dof
    se = np.sqrt(np.diag(sigma2 * np.linalg.inv(x.T @ x)))
    half = stats.t.ppf(0.975, dof) * se
    return {"n": len(pts), "dof": dof,
            "coef": {n: (float(c), float(c - h), float(c + h)) for n, c, h in zip(names, coef, half)}}


def architecture_sentence(result: dict) -> str:
    if "error" in result:
        return f"No fit: {result['error']}."
    c = result["coef"].get("c ([hetero])")
    if c is None:
        return "Architecture cannot be told apart here: the runs lack self-KD or heterogeneous KD."
    est, lo, hi = c
    interval = f"{est:+.2f} points, 95% interval [{lo:+.2f}, {hi:+.2f}]"
    if lo > 0 or hi < 0:
        return (f"Architecture matters once the gap is accounted for: at the same gap, heterogeneous KD "
                f"gains {interval} relative to self-KD (c's 95% interval excludes 0).")
    return (f"Architecture (heterogeneous vs self-KD) is not distinguishable from the gap effect at this "
            f"scale: c = {interval}, which holds 0.")


def gap_section(folder: Path) -> list[str]:
    """Markdown lines: the figure, the per-setting table, the fit and its sentence."""
    pts = points(folder)
    lines = ["### KD gain against the teacher-student gap", ""]
    if not pts:
        return lines + ["No recorded CIFAR distillation run yet.", ""]
    result = fit(pts)
    lines += [f"Every recorded CIFAR distillation run ({len(pts)}, of this design and the kept earlier ones): "
              "gap = teacher − true-label student test accuracy, gain = distilled − true-label student, both in "
              "points, from each run's evaluate.json. Filled markers: the current design; hollow: earlier ones.", "",
              f"![KD gain vs gap]({folder.name}/cifar-gap.png)", ""]
    groups: dict[tuple[str, int, str], list[Point]] = {}
    for p in pts:
        groups.setdefault((p.family, p.budget, p.design), []).append(p)
    lines += table(["family", "student epochs", "design", "n", "mean gap, points", "mean gain, points"],
                   [[f, str(b), d, str(len(g)), f"{statistics.fmean(p.gap for p in g):+.2f}",
                     f"{statistics.fmean(p.gain for p in g):+.2f}"]
                    for (f, b, d), g in sorted(groups.items(), key=lambda kv: (FAMILIES.index(kv[0][0]),) + kv[0][1:])])
    if "error" not in result:
        lines += [f"Least squares over the {result['n']} runs, gain = a + b·gap + c·[hetero] (+ d·[reversed]), "
                  f"self-KD the reference ({result['dof']} degrees of freedom):", ""]
        lines += table(["coefficient", "estimate", "95% interval"],
                       [[n, f"{e:+.3f}", f"[{lo:+.3f}, {hi:+.3f}]"] for n, (e, lo, hi) in result["coef"].items()])
        lines += ["Runs of one setting share a teacher, and self-KD and reversed KD share their true-label "
                  "students, so the points are not independent: these intervals are narrower than the data "
                  "warrant.", ""]
    return lines + [architecture_sentence(result), ""]


def gap_plot(folder: Path, out_dir: Path) -> None:
    """out_dir/cifar-gap.png; nothing without points."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    pts = points(folder)
    if not pts:
        return
    budgets = sorted({p.budget for p in pts})
    marker = {b: MARKERS[i % len(MARKERS)] for i, b in enumerate(budgets)}
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for p in pts:
        colour = f"C{FAMILIES.index(p.family)}"
        ax.scatter([p.gap], [p.gain], marker=marker[p.budget], s=36, edgecolors=colour,
                   facecolors=colour if p.design == CURRENT else "none", linewidths=1.2)
    ax.axhline(0, color="black", lw=0.8)
    handles = [Line2D([], [], color=f"C{i}", marker="o", ls="", label=f) for i, f in enumerate(FAMILIES)
               if any(p.family == f for p in pts)]
    handles += [Line2D([], [], color="grey", marker=marker[b], ls="", label=f"{b} student epochs") for b in budgets]
    if any(p.design != CURRENT for p in pts):
        handles.append(Line2D([], [], color="grey", marker="o", mfc="none", ls="", label="earlier design"))
    ax.legend(handles=handles, fontsize=8)
    ax.set(xlabel="teacher − true-label student, test accuracy points",
           ylabel="KD gain, test accuracy points")
    ax.set_title("distilled − true-label student, one point per run", fontsize=9)
    fig.tight_layout(), fig.savefig(out_dir / "cifar-gap.png", dpi=120), plt.close(fig)
