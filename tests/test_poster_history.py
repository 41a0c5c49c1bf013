"""Issue #33's report parts, on fake records: every kept design linked and its verdicts shown
(design changes), KD gain against the teacher-student gap with its least-squares fit, the budget
table that counts the teacher, and experiments of some stages keeping only their own metrics."""
import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest

from conftest import REPO
from kd_study import report_cost, report_gap, report_history
from kd_study.dvc_exps import Shown, ran_only, stage_metrics
from kd_study.experiments import Experiment, PosterError
from kd_study.report import earlier_reports, write_report
from kd_study.runs import scores

KEPT_FIRST = REPO / "reports/poster/earlier/2026-12-01-45a56e0"
KEPT_SECOND = REPO / "reports/poster/earlier/2026-12-01-0f28fa3"


def _blob(path: Path) -> str:
    """git's blob id of a file (what `git hash-object` prints), without git."""
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


# ---- 1. the first CIFAR design, kept -----------------------------------------------------

def test_the_first_cifar_design_is_kept_byte_for_byte_and_linked():
    # The blobs of `git ls-tree 45a56e0 reports/poster.md reports/poster/`.
    assert _blob(KEPT_FIRST / "poster.md") == "3583a469b4b00cef711d206943d20938983f8b35"
    assert _blob(KEPT_FIRST / "cifar-budget.png") == "951aa44edb8aca166543e7700da667cea75b7828"
    assert _blob(KEPT_FIRST / "machine-time.csv") == "f82b23afffb9b586220f396c80f9acc496f192ed"
    assert (KEPT_FIRST / "README.md").read_text().count("\n") == 1
    links = "\n".join(earlier_reports(REPO / "reports/poster.md"))
    assert "(poster/earlier/2026-12-01-45a56e0/poster.md)" in links
    assert "(poster/earlier/2026-12-01-0f28fa3/poster.md)" in links


# ---- 2. design changes --------------------------------------------------------------------

def test_the_committed_design_changes_render_each_designs_own_verdicts():
    entries = report_history.load(REPO / "reports/poster/design-changes.yaml")
    assert [(e["date"], e["study"]) for e in entries] == [("2026-12-01", "cifar"), ("2026-12-06", "methods"),
                                                           ("2026-12-06", "cifar"), ("2026-12-06", "hinton"),
                                                           ("2026-12-06", "methods"), ("2026-12-08", "cifar"),
                                                           ("2026-12-08", "cifar")]
    report_history.check(REPO / "reports/poster.md")  # every kept copy is explained
    text = "\n".join(report_history.design_changes_section(REPO / "reports/poster.md"))
    assert "the rule was introduced after those results were seen" in text
    assert "planned, not yet run" in text
    # Design 1's verdict, as its own report printed it, and design 2's gain table.
    assert re.search(r"^- \*\*Reversed KD.*: refuted .*resnet8 -> vgg8, 30 epochs: -0\.53", text, flags=re.M)
    assert "| reversed KD, vgg5 -> vgg8 | 30 | 3 | 84.53 ± 0.19 | 84.06 ± 0.39 | -0.47 ± 0.32 |" in text
    assert "(poster/earlier/2026-12-01-45a56e0/poster.md)" in text
    assert "(poster/earlier/2026-12-01-45a56e0/cifar-budget.png)" in text
    for block in re.findall(r"((?:^\|.*\n)+)", text + "\n", flags=re.M):
        assert len({line.count("|") for line in block.splitlines()}) == 1, block


def _changes(tmp_path: Path, body: str, kept=("2026-12-01-abc1234",)) -> Path:
    report = tmp_path / "reports" / "poster.md"
    for k in kept:
        (report.with_suffix("") / "earlier" / k).mkdir(parents=True)
        (report.with_suffix("") / "earlier" / k / "poster.md").write_text(
            "# old\n\n### The poster's claims at this scale\n\n- **Claim**: refuted.\n\n## Machine time\n")
    (report.with_suffix("") / "design-changes.yaml").write_text(body)
    return report


GOOD = """\
- date: "2026-12-01"
  study: cifar
  title: one change
  status: run
  commits: [abc1234]
  change: pairs
  why: a rule
  found: refuted
  kept: 2026-12-01-abc1234
"""


def test_a_kept_report_without_a_gain_table_gives_its_verdicts_alone(tmp_path):
    report = _changes(tmp_path, GOOD)
    text = "\n".join(report_history.design_changes_section(report))
    assert "- **Claim**: refuted." in text and "Its gain against" not in text


@pytest.mark.parametrize("body, says", [
    (GOOD.replace("  why: a rule\n", ""), r"entry 1 \(one change\): missing why"),
    (GOOD.replace('"2026-12-01"', "yesterday"), r"entry 1 \(one change\): date 'yesterday'"),
    (GOOD.replace("study: cifar", "study: imagenet"), "study 'imagenet'"),
    (GOOD.replace("[abc1234]", "abc1234"), "commits should be a list"),
    (GOOD.replace("kept: 2026-12-01-abc1234", "kept: nowhere"), "kept: no .*nowhere"),
    (GOOD + "  colour: red\n", "unknown keys colour"),
    (GOOD + "- just text\n", "entry 2: not a mapping"),
    ("date: [unclosed\n", "not valid YAML"),
    ("a: 1\n", "should be a list"),
])
def test_a_bad_design_changes_file_names_the_file_and_the_entry(tmp_path, body, says):
    report = _changes(tmp_path, body)
    with pytest.raises(PosterError, match=says) as e:
        report_history.check(report)
    assert "design-changes.yaml" in str(e.value)


def test_every_kept_copy_needs_an_entry(tmp_path):
    report = _changes(tmp_path, GOOD, kept=("2026-12-01-abc1234", "2026-12-02-def5678"))
    with pytest.raises(PosterError, match="no entry names the kept copies 2026-12-02-def5678"):
        report_history.check(report)
    (report.with_suffix("") / "design-changes.yaml").unlink()
    with pytest.raises(PosterError, match="design-changes.yaml: missing"):
        report_history.check(report)
    assert report_history.design_changes_section(report) == []  # write_report alone stays lenient
    report_history.check(tmp_path / "fresh" / "poster.md")  # no history, no file: nothing to disclose


# ---- 3. the gap ---------------------------------------------------------------------------

def record(name, teacher, baseline, student, *, rev="r", timing=None, mode="live", cpu="AVX512"):
    metrics = {"metrics/evaluate.json": {"teacher": {"accuracy": teacher}, "baseline": {"accuracy": baseline},
                                         "student": {"accuracy": student}},
               "metrics/teacher.json": {"cpu_capability": cpu, "precision": "bf16"}}
    for stage, s in (timing or {}).items():
        metrics[f"metrics/timing/{stage}.json"] = {"seconds": s}
    return {"name": name, "params": {"soft_labels.mode": mode}, "metrics": metrics, "code": "c", "rev": rev,
            "baseline": "b"}


def write(path: Path, records) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def linear_runs(hetero_extra: float, noise=(0.0, 0.02, -0.02)):
    """gain = 0.1 + 0.3·gap (+ hetero_extra for hetero), in points; gaps spread by budget."""
    out = []
    for family, gap0 in (("self", 5.0), ("reversed", 1.0), ("hetero", 4.0)):
        for budget, shift in ((5, 2.0), (10, 0.0), (30, -2.0)):
            for seed, e in enumerate(noise):
                gap = gap0 + shift + seed / 10
                gain = 0.1 + 0.3 * gap + (hetero_extra if family == "hetero" else 0) + e
                base = 0.80
                out.append(record(f"cifar-{family}-e{budget}-s{seed}", base + gap / 100, base, base + gain / 100,
                                  rev=f"{family}{budget}{seed}"))
    return out


def test_the_gap_points_skip_teachers_grids_and_smoothing_and_label_each_design(tmp_path):
    folder = tmp_path / "poster"
    kept = [record("cifar-self-e30-s0", 0.85, 0.84, 0.845, rev="old"),
            record("cifar-teacher-vgg8-e80-s0", 0.99, 0.98, 0.99, rev="t"),     # MNIST leftovers of a teacher-only run
            record("cifar-self-e10-T2-a0.5-s0", 0.85, 0.80, 0.82, rev="g"),
            record("cifar-smooth-e30-s0", 0.85, 0.84, 0.85, rev="s")]
    write(folder / "earlier" / "2026-12-01-0f28fa3" / "runs.jsonl", kept)
    # The current record holds the kept run too (same name and commit) and a new one.
    write(folder / "runs.jsonl", [kept[0], record("cifar-reversed-e5-s0", 0.80, 0.82, 0.83, rev="new")])
    pts = report_gap.points(folder)
    assert [(p.name, p.design, p.family, p.budget, p.seed) for p in pts] == [
        ("cifar-reversed-e5-s0", "current", "reversed", 5, 0),
        ("cifar-self-e30-s0", "2026-12-01-0f28fa3", "self", 30, 0)]
    assert pts[0].gap == pytest.approx(-2.0) and pts[0].gain == pytest.approx(1.0)


def test_the_fit_separates_architecture_from_the_gap(tmp_path):
    folder = tmp_path / "with"
    write(folder / "runs.jsonl", linear_runs(hetero_extra=1.0))
    result = report_gap.fit(report_gap.points(folder))
    coef = result["coef"]
    assert result["n"] == 27 and result["dof"] == 23
    assert coef["b (per point of gap)"][0] == pytest.approx(0.3, abs=0.01)
    assert coef["c ([hetero])"][0] == pytest.approx(1.0, abs=0.05)
    assert coef["d ([reversed])"][1] < 0 < coef["d ([reversed])"][2]
    assert report_gap.architecture_sentence(result).startswith("Architecture matters once the gap")
    folder = tmp_path / "without"
    write(folder / "runs.jsonl", linear_runs(hetero_extra=0.0))
    sentence = report_gap.architecture_sentence(report_gap.fit(report_gap.points(folder)))
    assert "not distinguishable from the gap effect at this scale" in sentence


def test_the_fit_matches_a_textbook_ols():
    import numpy as np
    from scipy import stats
    rng = np.random.default_rng(0)
    pts = [report_gap.Point(f"n{i}", fam, 10, i, "current", gap, 0.2 + 0.25 * gap + 0.5 * (fam == "hetero")
                            + rng.normal(0, 0.1), {}, {})
           for i, (fam, gap) in enumerate(zip(["self", "hetero"] * 6, np.linspace(0, 6, 12)))]
    x = np.column_stack([np.ones(12), [p.gap for p in pts], [p.family == "hetero" for p in pts]]).astype(float)
    y = np.array([p.gain for p in pts])
    beta = np.linalg.solve(x.T @ x, x.T @ y)
    s2 = ((y - x @ beta) ** 2).sum() / 9
    half = stats.t.ppf(0.975, 9) * np.sqrt(np.diag(s2 * np.linalg.inv(x.T @ x)))
    got = report_gap.fit(pts)["coef"]
    assert list(got) == ["a (intercept)", "b (per point of gap)", "c ([hetero])"]  # no reversed runs: no d
    for (est, lo, hi), b, h in zip(got.values(), beta, half):
        assert est == pytest.approx(b) and lo == pytest.approx(b - h) and hi == pytest.approx(b + h)


def test_too_few_points_or_one_gap_are_said_not_fitted(tmp_path):
    few = [report_gap.Point("x", "self", 5, s, "current", s, s, {}, {}) for s in range(3)]
    assert "too few" in report_gap.architecture_sentence(report_gap.fit(few))
    flat = [report_gap.Point("x", f, 5, s, "current", 2.0, s, {}, {}) for s in range(3) for f in ("self", "hetero")]
    assert "same gap" in report_gap.architecture_sentence(report_gap.fit(flat))
    assert "No recorded CIFAR" in "\n".join(report_gap.gap_section(tmp_path / "empty"))


def test_the_gap_section_and_figure(tmp_path):
    folder = tmp_path / "poster"
    write(folder / "earlier" / "2026-12-01-0f28fa3" / "runs.jsonl", linear_runs(0.0)[:9])
    write(folder / "runs.jsonl", linear_runs(0.0)[9:])
    lines = report_gap.gap_section(folder)
    text = "\n".join(lines)
    assert "![KD gain vs gap](poster/cifar-gap.png)" in text
    assert "| self | 5 | 2026-12-01-0f28fa3 | 3 | +7.10 | +2.23 |" in text
    assert "| hetero | 30 | current | 3 | +2.10 | +0.73 |" in text
    report_gap.gap_plot(folder, folder)
    assert (folder / "cifar-gap.png").stat().st_size > 1000


# ---- 4. what a gain costs ----------------------------------------------------------------------

def test_the_budget_table_counts_the_teacher(tmp_path):
    folder = tmp_path / "poster"
    timing = {"train_teacher": 900.0, "generate_soft_labels": 0.4, "train_baseline": 300.0}
    write(folder / "runs.jsonl",
          [record(f"cifar-self-e30-s{s}", 0.86, 0.84, 0.846, rev=str(s),
                  timing={**timing, "train_student": 400.0 + 10 * s}) for s in range(3)]
          + [record("cifar-hetero-e30-s0", 0.86, 0.81, 0.83, mode="cached", cpu="AVX2",
                    timing={"train_teacher": 900.0, "generate_soft_labels": 60.0, "train_baseline": 450.0,
                            "train_student": 500.0})])
    text = "\n".join(report_cost.cost_section(folder))
    # self: 900 + 0.4 + median 410 = 1310.4 against 300; extra 1010.4 s for +0.60 points: 2.14 per hour.
    assert "| self | 30 | current | 3 | 900 | 0 (live: in the student's) | 410 | 300 | 1,310 | 300 | 1,010 | +0.60 | +2.14 |" in text
    assert "| hetero | 30 | current | 1 | 900 | 60 | 500 | 450 | 1,460 | 450 | 1,010 | +2.00 | +7.13 |" in text
    assert "bf16 on AVX2; bf16 on AVX512" in text and "Live soft labels" in text
    assert "No recorded CIFAR" in "\n".join(report_cost.cost_section(tmp_path / "none"))


def test_write_report_puts_the_new_sections_in(tmp_path):
    out = tmp_path / "reports" / "poster.md"
    write(out.with_suffix("") / "runs.jsonl", linear_runs(0.0))
    shutil.copytree(KEPT_FIRST, out.with_suffix("") / "earlier" / KEPT_FIRST.name)
    (out.with_suffix("") / "design-changes.yaml").write_text(GOOD.replace("2026-12-01-abc1234", KEPT_FIRST.name))
    runs = [(Experiment("cifar-self-e30-s0", "cifar", "self", 0, {"seed": 0}),
             {"metrics/evaluate.json": {"teacher": {"accuracy": 0.85}, "baseline": {"accuracy": 0.84},
                                        "student": {"accuracy": 0.845}}})]
    write_report(out, runs, header=["h"], temperatures=[20], chosen={})
    text = out.read_text()
    order = [text.index(h) for h in ("### KD gain against the teacher-student gap",
                                     "### What each gain costs", "## Design changes", "## Earlier results",
                                     "## Experiments")]
    assert order == sorted(order)
    assert (out.parent / "poster" / "cifar-gap.png").is_file()


# ---- 5. experiments of some stages --------------------------------------------------------

def test_a_teacher_only_experiment_keeps_only_its_stages_metrics():
    assert stage_metrics(REPO, ("train_teacher",)) == {
        "metrics/teacher.json", "metrics/timing/train_teacher.json", "metrics/timing/prepare.json",
        "metrics/timing/check_params.json"}
    workspace = {f: {"x": 1} for f in ("metrics/teacher.json", "metrics/timing/train_teacher.json",
                                       "metrics/evaluate.json", "metrics/baseline.json")}
    run = Shown("cifar-teacher-vgg8-e80-s0", "success", "b", "r", {}, workspace)
    assert set(ran_only(REPO, run, ("train_teacher",)).metrics) == {"metrics/teacher.json",
                                                                     "metrics/timing/train_teacher.json"}
    assert ran_only(REPO, run, ()) is run
    # An old record still carrying the workspace's evaluate.json: the report does not read it.
    teacher = Experiment("cifar-teacher-vgg8-e80-s0", "cifar", "teacher", 0, {}, ("train_teacher",))
    full = Experiment("cifar-self-e30-s0", "cifar", "self", 0, {})
    ev = {"metrics/evaluate.json": {"teacher": {"accuracy": 0.99}}}
    assert scores([(teacher, ev), (full, {"metrics/evaluate.json": {"teacher": {"accuracy": 0.85}}})],
                  "teacher", "accuracy") == [0.85]
