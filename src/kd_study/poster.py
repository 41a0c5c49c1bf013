"""Rerun the poster's experiments as DVC experiments and write reports/poster.md.

    make poster                                  # everything: MNIST, Hinton's profile, the CIFAR-10 and methods studies
    make poster ARGS="--parts mnist"             # one part (mnist, hinton, cifar, methods)
    make poster ARGS="--seeds 0 1 2 3"           # more seeds
    make poster ARGS="--parts methods --hours 2" # the methods study, 2 hours at a time

`make poster` runs `PYTHONPATH=src python -m kd_study.poster $(ARGS)` from the project root.

Experiments already run with the same params and pipeline code are reused, so a
second run with nothing changed queues nothing and only rewrites the report, and a
study cut short (the CIFAR-10 one takes hours) goes on where it stopped. The CIFAR-10
study (docs/cifar-study.md) runs in phases: teachers, baselines and the validation grids at
the tuning seed, reversed KD's grid once its weaker teacher is chosen, then the seeded runs with
what the grids chose. The Hinton study (docs/hinton-study.md): the teacher's length, then the
student's setting, then the final models on all 60k images, and if they miss 74 test errors,
the follow-ups that change one factor each. The methods study
(docs/methods-study.md) per pair-budget: each method's 4 settings at the tuning seed, then the
chosen one at the evaluation seeds. A failed experiment is listed under "Not run" and the command exits 1;
one that --hours kept from starting, or that --report-only did not run, is listed there too, but the
command exits 0.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime
import os
import shlex
import sys
import time
from pathlib import Path

from kd_study import dvc_exps, experiments, record, report_history
from kd_study.experiments import CIFAR_PROFILE, CIFAR_SEEDS, METHOD_SEEDS, PARTS, SEEDS, TEMPERATURES, PosterError
from kd_study.report import write_report
from kd_study.runs import scores

# The issues' budgets on a 2-core machine; the CIFAR study's 6 hours may span several invocations.
# The methods study's 11 hours: 120 student trainings, 40 of them 30 CIFAR epochs (about 10 min each).
BUDGET_MIN = {"mnist": 45, "hinton": 45, "cifar": 360, "methods": 660}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(prog="python -m kd_study.poster", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS),
                    help="the parts to run (default: all); the report still holds every part with a finished "
                         "experiment, the parts not named as their defaults plan them")
    ap.add_argument("--seeds", nargs="+", type=int, default=None,
                    help=f"student seeds of the parts named (default: {' '.join(map(str, SEEDS))}; the CIFAR "
                         f"study {' '.join(map(str, CIFAR_SEEDS))}; the methods study "
                         f"{' '.join(map(str, METHOD_SEEDS))})")
    ap.add_argument("--temperatures", nargs="+", type=float, default=list(TEMPERATURES))
    ap.add_argument("--profile", default=CIFAR_PROFILE, help="params file of the CIFAR-10 part")
    ap.add_argument("--out", default="reports/poster.md")
    ap.add_argument("--report-only", action="store_true",
                    help="queue nothing: report the experiments that are already up to date")
    ap.add_argument("--hours", type=float, default=None,
                    help="start no experiment after this many hours (one runs at a time); the next "
                         "invocation goes on from there")
    ap.add_argument("--note", action="append", default=[], help="a line for the report's header")
    args = ap.parse_args(argv)
    if args.hours is not None and not args.hours >= 0:  # also NaN
        ap.error(f"--hours must be 0 or more, got {args.hours:g}")
    if args.seeds is not None and len(set(args.seeds)) < 2:
        print("poster: warning: with one seed there is no std and no noise test", file=sys.stderr)
    root = Path.cwd()
    if not (root / "dvc.yaml").is_file():
        print("poster: run from the project root (where dvc.yaml is)", file=sys.stderr)
        return 2
    # --seeds, --temperatures and --profile are options of the parts named; the others are only
    # reported, as `make poster` with no options plans them, so a part run alone keeps the rest.
    asked = {part: part in args.parts for part in PARTS}
    default_seeds = {"mnist": SEEDS, "hinton": SEEDS, "cifar": CIFAR_SEEDS, "methods": METHOD_SEEDS}
    seeds = {p: list(args.seeds if args.seeds is not None and asked[p] else default_seeds[p]) for p in PARTS}
    temps = ([int(t) if float(t).is_integer() else t for t in args.temperatures] if asked["mnist"]
             else list(TEMPERATURES))
    profile = {p: args.profile if asked[p] else CIFAR_PROFILE for p in PARTS}
    started = time.perf_counter()
    deadline = None if args.hours is None else time.time() + 3600 * args.hours
    lines, everything = [], []
    # Finished experiments outlive this clone in a committed file beside the report (kd_study.record).
    record_file = root / Path(args.out).with_suffix("") / "runs.jsonl"
    try:
        recorded = record.load(record_file)
        report_history.check(root / args.out)  # a bad design-changes entry stops us before any run
        shown = dvc_exps.show(root)

        def phase(part: str, exps: list[experiments.Experiment], step: str = "") -> dict[str, dvc_exps.Shown]:
            """Run what is not up to date yet; the finished ones, by name."""
            nonlocal shown
            named = asked[part]
            report_only = args.report_only or not named
            budget, part = BUDGET_MIN[part], f"{part} {step}".strip()
            reused = dvc_exps.current(root, exps, shown + recorded)
            # A run that diverged on this code and params is a result (the worst point of its grid): not
            # rerun, and recorded, since DVC's failed runs and their logs stay with the clone.
            keep_diverged(exps, dvc_exps.diverged(root, [e for e in exps if e.name not in reused], shown))
            todo = [e for e in exps if e.name not in reused and e.name not in failures]
            if named or reused:
                print(f"poster: {part}: {len(exps)} experiments, {len(reused)} up to date, "
                      + (f"{len(todo)} to run" if named else "not named in --parts: report only"), flush=True)
            everything.extend(exps)
            record.save(record_file, root, dvc_exps.pipeline_code(root), list(reused.values()))
            if report_only:
                if reused or named:
                    lines.append(f"- {part}: {len(reused)} of {len(exps)} experiments finished (report only)")
                return reused
            part_started = time.perf_counter()
            left.update(dvc_exps.run(root, todo, shown, deadline))
            seconds = time.perf_counter() - part_started
            if todo:
                shown = dvc_exps.show(root)
            ran = dvc_exps.current(root, todo, shown)
            keep_diverged(todo, dvc_exps.diverged(root, [e for e in todo if e.name not in ran], shown))
            record.save(record_file, root, dvc_exps.pipeline_code(root), list(ran.values()))
            lines.append(f"- {part}: {len(exps)} experiments, {len(ran)} run now and {len(reused)} reused; "
                         f"wall time {_hm(seconds)} (budget {budget} min)")
            print(f"poster: {part}: {len(ran)}/{len(todo)} ran in {_hm(seconds)}", flush=True)
            if ran:
                log_machine_time(root / Path(args.out).with_suffix("") / "machine-time.csv", part, len(ran), seconds)
            return {**reused, **ran}

        chosen, failures, left = {}, {}, set()

        def keep_diverged(exps: list[experiments.Experiment], how: dict[str, str]) -> None:
            """Record each of `exps` that diverged (`how`: name -> how) with its failure as its metrics."""
            failures.update(how)
            runs = dvc_exps.current(root, [e for e in exps if e.name in how], shown, state="failed")
            record.save(record_file, root, dvc_exps.pipeline_code(root),
                        [dataclasses.replace(run, metrics={experiments.FAILED: how[name]}) for name, run in runs.items()])

        def with_metrics(exps, done):
            """(experiment, its metrics), or FAILED with how it diverged, or None while not run."""
            return [(e, done[e.name].metrics if e.name in done else
                     {experiments.FAILED: failures[e.name]} if e.name in failures else None) for e in exps]

        for part in [*args.parts, *(p for p in PARTS if not asked[p])]:  # the parts named run first
            if not asked[part] and not _plannable(root, part, profile[part]):
                continue  # its profile is not in this project: none of its experiments can have run
            exps = experiments.plan(root, [part], seeds[part], temps, profile[part])[part]
            if part == "cifar":  # docs/cifar-study.md
                done = phase("cifar", exps, "tuning")  # teachers, baselines and grids, at the tuning seed
                teachers = experiments.choose_teachers(with_metrics(exps, done))
                more = experiments.reversed_tuning_runs(root, teachers, profile[part])
                done = {**done, **(phase("cifar", more, "reversed tuning") if more else {})}
                chosen = experiments.choose(with_metrics(exps + more, done))
                phase("cifar", experiments.study_runs(root, chosen, teachers, seeds[part], profile[part]), "study")
            elif part == "hinton":  # docs/hinton-study.md
                done = phase("hinton", exps, "teacher")
                epochs = experiments.choose_hinton_teacher(with_metrics(exps, done))
                grid = [] if epochs is None else experiments.per_seed(
                    "hinton", experiments.hinton_students(root, epochs), (experiments.HINTON_TUNE_SEED,))
                done = phase("hinton", grid, "student") if grid else {}
                picked = experiments.choose_hinton_student(with_metrics(grid, done))
                if picked is not None:
                    final = experiments.per_seed("hinton", experiments.hinton_final(root, picked), seeds[part])
                    done = phase("hinton", final, "final")
                    errors = scores(with_metrics(final, done), "student", "errors")
                    if experiments.hinton_missed(errors, seeds[part]):
                        phase("hinton", [e for s in experiments.hinton_followups(root, picked)  # factor by factor
                                         for e in experiments.per_seed("hinton", [s], seeds[part])], "follow-up")
            elif part == "methods":
                # Pair-budget by pair-budget (MNIST first: cheap), each in the CIFAR study's two phases.
                for pair in experiments.METHOD_PAIRS:
                    tuning = experiments.of_pair(exps, pair)
                    done = phase("methods", tuning, f"{pair} tuning")  # 5 methods x 4 settings, the tuning seed
                    picked = experiments.choose_methods(with_metrics(tuning, done))
                    phase("methods", experiments.methods_seeds(root, picked, seeds[part], profile[part], (pair,)),
                          f"{pair} seeds")
            else:
                phase(part, exps)
        found = dvc_exps.current(root, everything, shown + recorded)
        reported = [p for p in PARTS if asked[p] or any(e.part == p and e.name in found for e in everything)]
        everything = [e for e in everything if e.part in reported]
        commit = dvc_exps.git(root, "rev-parse", "--short", "HEAD").stdout.strip()
        # The report's own files do not make the code dirty: a rerun rewrites them.
        out, top = (root / args.out).resolve(), root.resolve()
        report_files = ([f":(exclude){p}" for p in (out.relative_to(top).with_suffix(""), out.relative_to(top))]
                        if out.is_relative_to(top) else [])
        changed = dvc_exps.git(root, "status", "--porcelain", "--untracked-files=no", "--", ".", *report_files).stdout
    except PosterError as e:
        print(f"poster: error: {e}", file=sys.stderr)
        return 2
    dirty = " (with uncommitted changes)" if changed else ""
    command = "PYTHONPATH=src " + shlex.join(["python", "-m", "kd_study.poster", *argv])
    header = [f"Generated by `{command}` "
              f"(what `make poster` runs) on {datetime.date.today().isoformat()}, commit {commit}{dirty}, "
              f"on this machine ({_machine()}). " + ("Report only, no experiment run by this invocation:"
                                                     if args.report_only else
                                                     f"Total wall time **{_hm(time.perf_counter() - started)}**:"),
              "", *lines, *args.note, "",
              f"Experiments ran on commit {_baselines(found)}. Seeds "
              f"{_seeds(reported, seeds)}: every mean ± std is over the student "
              "seeds (sample std); one teacher per setting (`teacher.seed: 0`), except in the CIFAR study, where "
              "student seed k learns from teacher seed k mod 2. Tuning runs use seed 100, never an evaluation "
              "seed. \"Exceeds seed noise\": a paired t-test over seeds of distilled vs true-label student, "
              "p < 0.05."]
    runs = with_metrics(everything, found)
    write_report(root / args.out, runs, header=header, temperatures=temps, chosen=chosen,
                 commits={run.baseline for run in found.values()}, method_seeds=seeds["methods"])
    missing = [e.name for e, m in runs if m is None and asked[e.part]]
    diverged = sum(experiments.failed(m) for _, m in runs)
    print(f"poster: wrote {args.out} ({sum(m is not None for _, m in runs) - diverged}/{len(runs)} experiments"
          + (f", {diverged} diverged" if diverged else "") + ")")
    # Experiments that --hours kept from starting, or that --report-only was not asked to run, are
    # the next run's work; one whose run failed on this code and params is a failure either way.
    if args.report_only:
        left.update(name for name in missing if name not in
                    dvc_exps.current(root, [e for e in everything if e.name in missing], shown, state="failed"))
    later = [name for name in missing if name in left]
    if later:
        print(f"poster: {'not run yet' if args.report_only else 'left for the next run'}: {', '.join(later)}",
              flush=True)
    failed = [name for name in missing if name not in left]
    if failed:
        print(f"poster: not run: {', '.join(failed)} (see `dvc queue logs <name>`)", file=sys.stderr)
        return 1
    return 0


def log_machine_time(path: Path, part: str, experiments_run: int, seconds: float) -> None:
    """One row per invocation that ran something: a study spread over several sessions (and CPUs)
    still reports its machine time per part and the CPU each share ran on."""
    import torch

    from kd.device import cpu_capability, pick_device, resolve_precision

    new = not path.is_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", newline="") as f:
        out = csv.writer(f)
        if new:
            out.writerow(["date", "commit", "part", "experiments_run", "seconds", "cpu_capability", "auto_precision",
                          "device"])
        device = pick_device()
        out.writerow([datetime.date.today().isoformat(),
                      dvc_exps.git(path.parent, "rev-parse", "--short", "HEAD").stdout.strip(), part,
                      experiments_run, round(seconds), cpu_capability(), resolve_precision("auto", device),
                      torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"])


def _seeds(parts, seeds: dict[str, list[int]]) -> str:
    """The evaluation seeds of each part, parts with the same seeds together."""
    groups: dict[tuple, list[str]] = {}
    for part in parts:
        groups.setdefault(tuple(seeds[part]), []).append(part)
    return "; ".join(f"{list(s)} ({', '.join(ps)})" for s, ps in groups.items())


def _plannable(root: Path, part: str, profile: str) -> bool:
    """Whether this project holds the params file `part` is planned from."""
    needs = {"hinton": experiments.HINTON_PROFILE, "cifar": profile, "methods": profile}.get(part)
    return needs is None or (root / needs).is_file()


def _baselines(found: dict[str, dvc_exps.Shown]) -> str:
    return ", ".join(sorted({run.baseline[:7] for run in found.values()})) or "none"


def _hm(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    return f"{m} min {s:02d} s" if m else f"{s} s"


def _machine() -> str:
    import torch
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} CPU cores, {gpu}, torch {torch.__version__}"


if __name__ == "__main__":
    sys.exit(main())
