"""The poster's experiments: each one params.yaml plus `-S` overrides, run as a named DVC experiment.

An experiment family is a short list of settings; each setting runs once per student
seed, as `<setting>-s<seed>`. Seeds vary the students only (`teacher.seed` stays), so
all seeds of a setting, and all settings with equal teacher params, share one teacher
through DVC's run-cache.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kd.params import flatten  # {'teacher': {'lr': 0.1}} -> {'teacher.lr': 0.1}
from kd.paths import metrics_file
from kd.profiles import load_profile
from kd.yaml_reader import parse_yaml

SEEDS = (0, 1, 2)
TEMPERATURES = (1, 2, 4, 8, 20, 50)
OMITTED_DIGIT = 3
HINTON_PROFILE = "profiles/mnist-hinton.yaml"
HINTON_TEACHER_EPOCHS = (150, 300, 600)           # docs/hinton-study.md
HINTON_STUDENT_GRID = ((0.5, 20), (0.5, 60), (0.9, 20), (0.9, 60))   # (alpha, student epochs)
HINTON_TUNE_SEED = 100
HINTON_TARGET_ERRORS = 74                        # the distilled student's test errors (Hinton et al.)
# If the final models miss it, one factor at a time on the final recipe (docs/hinton-study.md):
HINTON_FOLLOWUPS = {"jitter": {"student.jitter": 2, "soft_labels.views": 4},   # jittered transfer set
                    "se180": {"student.epochs": 180},                          # 3x the chosen length
                    "fp32": {"teacher.precision": "fp32"}}                      # teacher and soft labels
CIFAR_PROFILE = "profiles/cifar10-cpu.yaml"
PARTS = ("mnist", "hinton", "cifar", "methods")

# ---- the CIFAR-10 study, third design (issue #33, docs/cifar-study.md) ------------------------
# The cheapest nets that keep each relation of the poster: vgg5 (99k params) the weaker teacher,
# vgg8 (148k) the larger net, resnet8 (78k) the ResNet that VGG knowledge crosses to.
CIFAR_FAMILIES = {                      # kind: (teacher arch, student arch)
    "reversed": ("vgg5", "vgg8"),       # a weaker, smaller VGG teaches a larger one (poster: VGG13 -> ResNet18)
    "self": ("vgg8", "vgg8"),
    "hetero": ("vgg8", "resnet8"),      # VGG -> ResNet, as the poster's pair crosses
}
STUDY_TEACHER_EPOCHS = 80               # the vgg8 teacher (plateau-checked in design 2: 160 epochs added +0.04)
WEAK_TEACHER_EPOCHS = (3, 5, 10, 20, 40, 80)   # vgg5 candidates for reversed KD's weaker teacher
WEAKER_BY = 0.005                       # the reversed teacher's validation accuracy is this far below the student's
BUDGETS = (5, 10, 30)                   # student epochs
TUNE_BUDGET = 10                        # T and alpha chosen here, at the tuning seed
CIFAR_TUNE_SEED = 100                   # never an evaluation seed
CIFAR_SEEDS = tuple(range(10))          # 80% power for a 0.5-point gain (docs/cifar-study.md)
TEACHER_SEEDS = 2                       # student seed k learns from teacher seed k % 2
GRID = {"temperature": (2, 4, 8), "alpha": (0.5, 0.9)}
SMOOTHING = (0.05, 0.1, 0.2)            # epsilon of the label-smoothing control, chosen the same way
TUNED = ("reversed", "self", "hetero")
LONGEST = max(BUDGETS)

# ---- the methods study (issue #32, docs/methods-study.md): which distillation method, for which pair? --
# Pair-budgets: the MNIST default pair at params.yaml's student epochs, and the CIFAR study's
# VGG -> ResNet pair (its `hetero` family, the study's teacher) at 10 and 30 student epochs.
METHOD_PAIRS = {"mnist": None, "hetero-e10": 10, "hetero-e30": 30}   # name -> CIFAR student epochs
METHOD_SEEDS = (0, 1, 2, 3, 4)
TUNE_SEED = 100                         # phase 1 runs here, apart from the evaluation seeds (#33)


@dataclass(frozen=True)
class Method:
    """One method of the study and its 4 tuning settings, in the design's order (ties: the first)."""
    tag: str                                           # in experiment names: no "-"
    label: str                                         # in the report
    settings: tuple[tuple[str, dict[str, Any]], ...]   # (name part, overrides)


METHODS = (
    Method("kd", "kd", tuple((f"T{t:g}", {"method.name": "kd", "temperature": t, "alpha": 0.9})
                             for t in (2, 4, 8, 20))),
    Method("kdls", "kd + ls", tuple((f"T{t:g}", {"method.name": "kd", "method.kd.logit_std": True,
                                                 "temperature": t, "alpha": 0.9}) for t in (1, 2, 4, 8))),
    Method("dkd", "dkd", tuple((f"b{b:g}", {"method.name": "dkd", "temperature": 4, "method.dkd.alpha": 1.0,
                                            "method.dkd.beta": b, "method.dkd.warmup": 0.0833})
                               for b in (1, 2, 4, 8))),
    Method("dkdls", "dkd + ls", tuple((f"b{b:g}", {"method.name": "dkd", "method.dkd.logit_std": True,
                                                   "temperature": 2, "method.dkd.beta": b}) for b in (1, 2, 4, 8))),
    Method("dist", "dist", tuple((f"g{g:g}", {"method.name": "dist", "temperature": 4, "method.dist.beta": g,
                                              "method.dist.gamma": g}) for g in (0.5, 1, 2, 4))),
)


class PosterError(RuntimeError):
    """Something the user can fix: a busy queue, a bad profile, a failed tool call."""


# The metrics that stand for a run that failed on this code and these params (it diverged, say:
# `dvc queue logs <name>` says why). A tuning choice counts it as the worst point, not as missing.
FAILED = "failed"


def failed(metrics: dict | None) -> bool:
    return bool(metrics) and FAILED in metrics


@dataclass(frozen=True)
class Setting:
    """One point of a family, run once per seed."""
    name: str                      # experiment names are "<name>-s<seed>"
    kind: str                      # what the report groups by: "sweep", "omit", a CIFAR family, ...
    overrides: dict[str, Any]      # dotted params key -> value
    targets: tuple[str, ...] = ()  # stages to run (default: the whole pipeline)


@dataclass(frozen=True)
class Experiment:
    name: str                      # the DVC experiment name
    part: str                      # "mnist" | "cifar": budgets and report sections
    kind: str
    seed: int
    overrides: dict[str, Any] = field(default_factory=dict)   # dotted key -> value
    targets: tuple[str, ...] = ()  # `dvc exp run` targets; the teacher-only runs name train_teacher

    def set_args(self) -> list[str]:
        return [arg for key, value in self.overrides.items() for arg in ("-S", f"{key}={_yaml_value(value)}")]

    def params(self, root: Path) -> dict[str, Any]:
        """params.yaml, flattened, as this experiment is queued with."""
        return {**flatten(_load(root / "params.yaml")), **self.overrides}


def _yaml_value(value) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("\n...")


def _load(path: Path) -> dict:
    return parse_yaml(path.read_text(encoding="utf-8"))  # as DVC parses it (YAML 1.2)


# ---- the families --------------------------------------------------------------------------

def mnist(temperatures=TEMPERATURES) -> list[Setting]:
    """Hinton et al. 2015 on MNIST: the temperature sweep, and a transfer set without one digit."""
    return [*(Setting(f"mnist-T{t:g}", "sweep", {"temperature": t}) for t in temperatures),
            Setting(f"mnist-omit{OMITTED_DIGIT}", "omit", {"omit_classes": [OMITTED_DIGIT]})]


def profile_overrides(base: dict, profile: dict, source: str = "the profile") -> dict[str, Any]:
    """The `-S` settings that turn params `base` into `profile` (whole params, as kd.profiles.load_profile gives)."""
    b, p = flatten(base), flatten(profile)
    missing = sorted(set(b) - set(p))
    if missing:
        raise PosterError(f"{source} lacks keys that params.yaml has: {missing}")
    return {k: v for k, v in p.items() if b.get(k, object()) != v}


def profile_keys(root: Path, profile: str) -> dict[str, Any]:
    """The overrides that turn this project's params.yaml into `profile` (the defaults + its changes)."""
    return profile_overrides(_load(root / "params.yaml"), load_profile(profile, root), profile)


def hinton_tuning(root: Path, profile: str = HINTON_PROFILE) -> list[Setting]:
    """MNIST at Hinton's level, phase 1 (docs/hinton-study.md): the teacher's length, chosen on
    validation (train_teacher only)."""
    base = profile_keys(root, profile)
    return [Setting(f"hinton-teacher-e{e}", "hinton-teacher", {**base, "teacher.epochs": e}, ("train_teacher",))
            for e in HINTON_TEACHER_EPOCHS]


def choose_hinton_teacher(tuning: list[tuple[Experiment, dict | None]]) -> int | None:
    """The teacher length with the best validation accuracy (ties: the shortest); None until all ran."""
    points = [(e, m) for e, m in tuning if e.kind == "hinton-teacher"]
    winner = best(points, "teacher")
    return None if winner is None else winner.overrides["teacher.epochs"]


def hinton_students(root: Path, teacher_epochs: int, profile: str = HINTON_PROFILE) -> list[Setting]:
    """Phase 1b: the student's alpha and length with the chosen teacher, at T = 20 (the paper's)."""
    base = {**profile_keys(root, profile), "teacher.epochs": teacher_epochs, "temperature": 20}
    return [Setting(f"hinton-e{teacher_epochs}-a{a:g}-se{n}", "hinton-grid",
                    {**base, "alpha": a, "student.epochs": n}) for a, n in HINTON_STUDENT_GRID]


def choose_hinton_student(grid: list[tuple[Experiment, dict | None]]) -> dict[str, Any] | None:
    """The student setting with the best validation accuracy (ties: the first); None until all ran."""
    winner = best([(e, m) for e, m in grid if e.kind == "hinton-grid"], "student")
    return None if winner is None else {k: winner.overrides[k] for k in ("teacher.epochs", "alpha", "student.epochs")}


def hinton_final(root: Path, chosen: dict[str, Any], profile: str = HINTON_PROFILE) -> list[Setting]:
    """Phase 2: the chosen teacher and student retrained on all 60k images (no validation split)."""
    e, a, n = chosen["teacher.epochs"], chosen["alpha"], chosen["student.epochs"]
    return [Setting(f"hinton-final-e{e}-a{a:g}-se{n}", "hinton-final",
                    {**profile_keys(root, profile), **chosen, "temperature": 20, "data.val_size": 0})]


def hinton_missed(final_errors: list[float], seeds) -> bool | None:
    """Whether the final distilled students' mean test errors miss HINTON_TARGET_ERRORS; None until
    every seed has its errors."""
    if not final_errors or len(final_errors) < len(seeds):
        return None
    return sum(final_errors) / len(final_errors) > HINTON_TARGET_ERRORS


def hinton_followups(root: Path, chosen: dict[str, Any], profile: str = HINTON_PROFILE) -> list[Setting]:
    """Phase 3, only if the final models miss 74 errors: the final recipe with one factor changed,
    cheapest first (docs/hinton-study.md, "If 74 is not reached")."""
    (final,) = hinton_final(root, chosen, profile)
    return [Setting(f"hinton-followup-{tag}", "hinton-followup", {**final.overrides, **changes})
            for tag, changes in HINTON_FOLLOWUPS.items()]


def family(base: dict, kind: str, budget: int, teacher_epochs: int = STUDY_TEACHER_EPOCHS, **more) -> dict[str, Any]:
    """A study run: `kind`'s nets, its teacher's length, `budget` student epochs."""
    teacher, student = CIFAR_FAMILIES[kind]
    return {**base, "teacher.arch": teacher, "teacher.epochs": teacher_epochs, "student.arch": student,
            "student.epochs": budget, **more}


def cifar_tuning(root: Path, profile: str = CIFAR_PROFILE) -> list[Setting]:
    """Phase 1, what needs no other result: the vgg5 candidates and the vgg8 teacher (train_teacher
    only, teacher seed 0), the true-label vgg8 student at every budget (train_baseline only), the
    T x alpha grids of self and hetero and the smoothing grid. Reversed KD's grid waits for its
    teacher (`reversed_grid`)."""
    base = profile_keys(root, profile)
    out = [Setting(f"cifar-teacher-vgg5-e{e}", "teacher", {**base, "teacher.arch": "vgg5", "teacher.epochs": e},
                   ("train_teacher",)) for e in WEAK_TEACHER_EPOCHS]
    out.append(Setting(f"cifar-teacher-vgg8-e{STUDY_TEACHER_EPOCHS}", "teacher",
                       {**base, "teacher.arch": "vgg8", "teacher.epochs": STUDY_TEACHER_EPOCHS}, ("train_teacher",)))
    out += [Setting(f"cifar-base-vgg8-e{b}", "base", family(base, "self", b), ("train_baseline",)) for b in BUDGETS]
    out += grid(base, "self") + grid(base, "hetero")
    # Smoothing changes only the true-label student: the distilled one comes from the run-cache.
    out += [Setting(f"cifar-smooth{eps:g}-e{TUNE_BUDGET}", "grid-smooth",
                    family(base, "self", TUNE_BUDGET, **{"baseline.label_smoothing": eps}))
            for eps in SMOOTHING]
    return out


def grid(base: dict, kind: str, teacher_epochs: int = STUDY_TEACHER_EPOCHS) -> list[Setting]:
    return [Setting(f"cifar-{kind}-e{TUNE_BUDGET}-T{t:g}-a{a:g}", f"grid-{kind}",
                    family(base, kind, TUNE_BUDGET, teacher_epochs, temperature=t, alpha=a))
            for t in GRID["temperature"] for a in GRID["alpha"]]


def val_of(metrics: dict | None, role: str) -> float | None:
    """A model's validation accuracy (its metrics file): what tuning may look at, unlike test."""
    return ((metrics or {}).get(metrics_file(role).as_posix()) or {}).get("val_acc")


def choose_teachers(tuning: list[tuple[Experiment, dict | None]]) -> dict[int, int | None]:
    """Reversed KD's teacher per budget: the longest-trained vgg5 candidate whose validation
    accuracy is at least WEAKER_BY below the true-label vgg8 student's at that budget (None: no
    candidate qualifies). A budget is left out while a candidate or its student is unfinished."""
    runs = {e.name.rsplit("-s", 1)[0]: m for e, m in tuning}
    teacher = {e: val_of(runs.get(f"cifar-teacher-vgg5-e{e}"), "teacher") for e in WEAK_TEACHER_EPOCHS}
    if any(v is None for v in teacher.values()):
        return {}
    out = {}
    for b in BUDGETS:
        student = val_of(runs.get(f"cifar-base-vgg8-e{b}"), "baseline")
        if student is not None:
            weaker = [e for e in WEAK_TEACHER_EPOCHS if teacher[e] <= student - WEAKER_BY]
            out[b] = max(weaker) if weaker else None
    return out


def reversed_grid(root: Path, teachers: dict[int, int | None], profile: str = CIFAR_PROFILE) -> list[Setting]:
    """Phase 1b: reversed KD's T x alpha grid, with the teacher chosen for the tuning budget."""
    if teachers.get(TUNE_BUDGET) is None:
        return []
    return grid(profile_keys(root, profile), "reversed", teachers[TUNE_BUDGET])


def cifar_study(root: Path, chosen: dict[str, dict], teachers: dict[int, int | None],
                profile: str = CIFAR_PROFILE) -> list[Setting]:
    """Phase 2, once the grids chose (`chosen`: kind -> {"temperature", "alpha"}, and "smooth" ->
    {"baseline.label_smoothing"}): every family at every budget (reversed with its weaker teacher
    of that budget, where one qualified), then the smoothing control at the longest. A family
    whose grid is unfinished is left out. The teacher seed rides on the student seed (`per_seed`)."""
    base = profile_keys(root, profile)
    out = []
    for b in BUDGETS:
        for kind in TUNED:
            if kind in chosen and (kind != "reversed" or teachers.get(b) is not None):
                epochs = teachers[b] if kind == "reversed" else STUDY_TEACHER_EPOCHS
                out.append(Setting(f"cifar-{kind}-e{b}", kind, family(base, kind, b, epochs, **chosen[kind])))
    if "self" in chosen and "smooth" in chosen:
        out.append(Setting(f"cifar-smooth-e{LONGEST}", "smooth",
                           family(base, "self", LONGEST, **chosen["self"], **chosen["smooth"])))
    return out


def per_seed(part: str, settings: list[Setting], seeds) -> list[Experiment]:
    """Each setting once per seed; seed-major, so what finishes first is a complete seed."""
    return [Experiment(f"{s.name}-s{seed}", part, s.kind, seed, {**s.overrides, "seed": seed}, s.targets)
            for seed in seeds for s in settings]


def tuning_runs(root: Path, profile: str = CIFAR_PROFILE) -> list[Experiment]:
    """Phase 1 runs at the tuning seed only (teachers do not depend on `seed` at all)."""
    return per_seed("cifar", cifar_tuning(root, profile), (CIFAR_TUNE_SEED,))


def reversed_tuning_runs(root: Path, teachers: dict[int, int | None], profile: str = CIFAR_PROFILE) -> list[Experiment]:
    return per_seed("cifar", reversed_grid(root, teachers, profile), (CIFAR_TUNE_SEED,))


def best(points: list[tuple[Experiment, dict | None]], role: str) -> Experiment | None:
    """The point whose `role` model has the highest validation accuracy (its metrics file), never
    test; None while a point is unfinished. A failed point (it diverged, say) ranks last; if all
    failed there is no choice. Ties go to the first point."""
    path = metrics_file(role).as_posix()
    if not points or not all(m is not None and (path in m or failed(m)) for _, m in points):
        return None
    ran = [(e, m) for e, m in points if not failed(m)]
    return max(ran, key=lambda run: run[1][path]["val_acc"])[0] if ran else None  # max keeps the first of equals


def choose(tuning: list[tuple[Experiment, dict | None]]) -> dict[str, dict]:
    """The grids' winners by validation accuracy, never test: kind -> the overrides it fixes.
    `tuning`: the phase-1 experiments and their metrics files (None while unfinished). A grid
    with an unfinished point chooses nothing yet; ties go to the first point of the grid."""
    out = {}
    for kind, role, keys in [*((k, "student", ("temperature", "alpha")) for k in TUNED),
                             ("smooth", "baseline", ("baseline.label_smoothing",))]:
        winner = best([(e, m) for e, m in tuning if e.kind == f"grid-{kind}"], role)
        if winner is not None:
            out[kind] = {k: winner.overrides[k] for k in keys}
    return out


# ---- the methods study's two phases ---------------------------------------------------------

def tune_kind(pair: str, method: Method) -> str:
    return f"tune-{pair}-{method.tag}"


def seeds_kind(pair: str, method: Method) -> str:
    return f"{pair}-{method.tag}"


def method_base(root: Path, pair: str, profile: str = CIFAR_PROFILE) -> dict[str, Any]:
    """The overrides of a pair-budget: none for MNIST (params.yaml), else the CIFAR profile's
    VGG -> ResNet family with the study's teacher, so the run-cache restores teacher and soft labels."""
    epochs = METHOD_PAIRS[pair]
    return {} if epochs is None else family(profile_keys(root, profile), "hetero", epochs)


def methods_tuning(root: Path, profile: str = CIFAR_PROFILE, pairs=tuple(METHOD_PAIRS)) -> list[Experiment]:
    """Phase 1: every method's 4 settings at the tuning seed, pair-budget by pair-budget (MNIST, the
    cheap one, first), e.g. methods-mnist-dkd-b4-s100."""
    settings = [Setting(f"methods-{pair}-{m.tag}-{name}", tune_kind(pair, m), {**base, **overrides})
                for pair in pairs for base in [method_base(root, pair, profile)]
                for m in METHODS for name, overrides in m.settings]
    return per_seed("methods", settings, (TUNE_SEED,))


def choose_methods(tuning: list[tuple[Experiment, dict | None]]) -> dict[str, str]:
    """Phase 1's winners by the distilled student's validation accuracy: tuning kind -> the chosen
    setting's name (its experiments' name without "-s<seed>"). A method whose 4 runs are not all
    finished chooses nothing yet."""
    out = {}
    for kind in dict.fromkeys(e.kind for e, _ in tuning):
        winner = best([(e, m) for e, m in tuning if e.kind == kind], "student")
        if winner is not None:
            out[kind] = winner.name.rsplit("-s", 1)[0]
    return out


def methods_seeds(root: Path, chosen: dict[str, str], seeds=METHOD_SEEDS, profile: str = CIFAR_PROFILE,
                  pairs=tuple(METHOD_PAIRS)) -> list[Experiment]:
    """Phase 2: each chosen setting at every evaluation seed (none of them the tuning seed: a
    tuning run is never also an evaluation run). Pair-budget by pair-budget, then seed by seed,
    so what finishes first is a complete pair-budget. A method not chosen yet is left out."""
    out = []
    for pair in pairs:
        base = method_base(root, pair, profile)
        for seed in seeds:
            for m in METHODS:
                name = chosen.get(tune_kind(pair, m))
                overrides = next((o for n, o in m.settings if f"methods-{pair}-{m.tag}-{n}" == name), None)
                if overrides is not None:
                    out.append(Experiment(f"{name}-s{seed}", "methods", seeds_kind(pair, m), seed,
                                          {**base, **overrides, "seed": seed}))
    return out


def of_pair(exps: list[Experiment], pair: str) -> list[Experiment]:
    return [e for e in exps if e.part == "methods" and e.name.startswith(f"methods-{pair}-")]


def plan(root: Path, parts=PARTS, seeds=SEEDS, temperatures=TEMPERATURES,
         profile: str = CIFAR_PROFILE) -> dict[str, list[Experiment]]:
    """The experiments that need no results of others, by part, in queue order: MNIST, the
    Hinton profile, the CIFAR study's tuning phase (its seeded runs: `study_runs`) and the
    methods study's (its seeded runs: `methods_seeds`)."""
    families = {"mnist": lambda: per_seed("mnist", mnist(temperatures), seeds),
                "hinton": lambda: per_seed("hinton", hinton_tuning(root), (HINTON_TUNE_SEED,)),
                "cifar": lambda: tuning_runs(root, profile),
                "methods": lambda: methods_tuning(root, profile)}
    return {part: families[part]() for part in parts}


def study_runs(root: Path, chosen: dict[str, dict], teachers: dict[int, int | None], seeds=CIFAR_SEEDS,
               profile: str = CIFAR_PROFILE) -> list[Experiment]:
    """Phase 2 at every seed; student seed k learns from the teacher of `teacher.seed` k % 2.
    The seeds of one teacher seed run together (0, 2, 4, ..., then 1, 3, ...): DVC's run-cache
    stays with its clone, so an invocation on a fresh clone trains each teacher it needs, and
    this way it needs one teacher seed's teachers, not both."""
    seeds = sorted(seeds, key=lambda seed: (seed % TEACHER_SEEDS, seed))
    return [dataclasses.replace(e, overrides={**e.overrides, "teacher.seed": e.seed % TEACHER_SEEDS})
            for e in per_seed("cifar", cifar_study(root, chosen, teachers, profile), seeds)]
