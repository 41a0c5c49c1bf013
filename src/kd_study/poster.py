"""Rerun the poster's experiments as DVC experiments and write reports/poster.md.

    make poster                                  # everything: MNIST, Hinton's profile, the CIFAR-10 and methods studies
    make poster ARGS="--parts mnist"             # one part (mnist, hinton, cifar, methods)
    make poster ARGS="--seeds 0 1 2 3"           # more seeds
    make poster ARGS="--parts methods --hours 2" # the methods study, 2 hours at a time

`make poster` runs `PYTHONPATH=src python -m kd_study.poster $(ARGS)` from the project root.

Experiments already run with the same params and pipeline code are reused, so a
second run with nothing changed queues nothing and only rewrites the report, and a
study cut short (the CIFAR-10 one takes hours) goes on where it stopped. The CIFAR-10
study runs in two phases: teachers and the validation grids at seed 0, then the seeded
runs with the T, alpha and smoothing the grids chose. The methods study (docs/methods-study.md)
does the same per pair-budget: each method's 4 settings at seed 0, then the chosen one at the
other seeds. A failed experiment is listed under "Not run" and the command exits 1.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import os
import shlex
import sys
import time
from pathlib import Path

from kd_study import dvc_exps, experiments, record, report_history
from kd_study.experiments import CIFAR_PROFILE, METHOD_SEEDS, PARTS, SEEDS, TEMPERATURES, PosterError
from kd_study.report import write_report

# The issues' budgets on a 2-core machine; the CIFAR study's 6 hours may span several invocations.
# The methods study's 11 hours: 120 student trainings, 40 of them 30 CIFAR epochs (about 10 min each).
BUDGET_MIN = {"mnist": 45, "hinton": 45, "cifar": 360, "methods": 660}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(prog="python -m kd_study.poster", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    ap.add_argument("--seeds", nargs="+", type=int, default=None,
                    help=f"student seeds (default: {' '.join(map(str, SEEDS))}; the methods study "
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
    temps = [int(t) if float(t).is_integer() else t for t in args.temperatures]
    seeds = list(SEEDS) if args.seeds is None else args.seeds
    method_seeds = list(METHOD_SEEDS) if args.seeds is None else args.seeds
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
            budget, part = BUDGET_MIN[part], f"{part} {step}".strip()
            reused = dvc_exps.current(root, exps, shown + recorded)
            todo = [e for e in exps if e.name not in reused]
            print(f"poster: {part}: {len(exps)} experiments, {len(reused)} up to date, {len(todo)} to run", flush=True)
            everything.extend(exps)
            record.save(record_file, root, dvc_exps.pipeline_code(root), list(reused.values()))
            if args.report_only:
                lines.append(f"- {part}: {len(reused)} of {len(exps)} experiments finished (report only)")
                return reused
            part_started = time.perf_counter()
            dvc_exps.run(root, todo, shown, deadline)
            seconds = time.perf_counter() - part_started
            if todo:
                shown = dvc_exps.show(root)
            ran = dvc_exps.current(root, todo, shown)
            record.save(record_file, root, dvc_exps.pipeline_code(root), list(ran.values()))
            lines.append(f"- {part}: {len(exps)} experiments, {len(ran)} run now and {len(reused)} reused; "
                         f"wall time {_hm(seconds)} (budget {budget} min)")
            print(f"poster: {part}: {len(ran)}/{len(todo)} ran in {_hm(seconds)}", flush=True)
            if ran:
                log_machine_time(root / Path(args.out).with_suffix("") / "machine-time.csv", part, len(ran), seconds)
            return {**reused, **ran}

        chosen = {}
        for part, exps in experiments.plan(root, args.parts, seeds, temps, args.profile).items():
            if part == "cifar":
                done = phase("cifar", exps, "tuning")  # teachers and grids, at seed 0
                chosen = experiments.choose([(e, done[e.name].metrics if e.name in done else None) for e in exps])
                phase("cifar", experiments.study_runs(root, chosen, seeds, args.profile), "study")
            elif part == "methods":
                # Pair-budget by pair-budget (MNIST first: cheap), each in the CIFAR study's two phases.
                for pair in experiments.METHOD_PAIRS:
                    tuning = experiments.of_pair(exps, pair)
                    done = phase("methods", tuning, f"{pair} tuning")  # 5 methods x 4 settings, the tuning seed
                    picked = experiments.choose_methods(
                        [(e, done[e.name].metrics if e.name in done else None) for e in tuning])
                    phase("methods", experiments.methods_seeds(root, picked, method_seeds, args.profile, (pair,)),
                          f"{pair} seeds")
            else:
                phase(part, exps)
        found = dvc_exps.current(root, everything, shown + recorded)
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
              f"Experiments ran on commit {_baselines(found)}. Seeds {_seeds(args.parts, seeds, method_seeds)}: "
              "every mean ± std is over the "
              "student seeds (sample std); one teacher per setting (`teacher.seed: 0`). \"Exceeds seed noise\": "
              "a paired t-test over seeds of distilled vs true-label student, p < 0.05."]
    runs = [(e, found[e.name].metrics if e.name in found else None) for e in everything]
    write_report(root / args.out, runs, header=header, temperatures=temps, chosen=chosen,
                 commits={run.baseline for run in found.values()}, method_seeds=method_seeds)
    print(f"poster: wrote {args.out} ({len(found)}/{len(runs)} experiments)")
    if len(found) < len(runs):
        print(f"poster: not run: {', '.join(e.name for e, m in runs if m is None)} "
              "(see `dvc queue logs <name>`)", file=sys.stderr)
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


def _seeds(parts, seeds: list[int], method_seeds: list[int]) -> str:
    if "methods" not in parts:
        return f"{seeds}"
    if set(parts) == {"methods"}:
        return f"{method_seeds}"
    return f"{seeds} (the methods study: {method_seeds})"


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
