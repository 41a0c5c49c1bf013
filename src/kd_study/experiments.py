"""The poster's experiments: each one params.yaml plus `-S` overrides, run as a named DVC experiment.

An experiment family is a short list of settings; each setting runs once per student
seed, as `<setting>-s<seed>`. Seeds vary the students only (`teacher.seed` stays), so
all seeds of a setting, and all settings with equal teacher params, share one teacher
through DVC's run-cache.
"""
from __future__ import annotations

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
CIFAR_PROFILE = "profiles/cifar10-cpu.yaml"
PARTS = ("mnist", "hinton", "cifar", "methods")

# ---- the CIFAR-10 study (issue #16): where does distillation pay on a CPU? -------------------
# The cheapest nets that keep each relation of the poster: vgg5 (99k params) is the smaller
# teacher, vgg8 (148k) the larger net, resnet8 (78k) the ResNet that VGG knowledge crosses to.
# Every teacher must reach its plateau within STUDY_TEACHER_EPOCHS: resnet8 did not (80 -> 160
# epochs added +0.98 points), so it is a student only.
CIFAR_FAMILIES = {                      # kind: (teacher arch, student arch)
    "reversed": ("vgg5", "vgg8"),       # a smaller, weaker VGG teaches a larger one (poster: VGG13 -> ResNet18)
    "self": ("vgg8", "vgg8"),
    "hetero": ("vgg8", "resnet8"),      # VGG -> ResNet, as the poster's pair crosses
}
STUDY_TEACHER_EPOCHS = 80               # what every study run's teacher trains
TEACHER_EPOCHS = (20, 40, 80, 160)      # each a doubling; the one after the study's checks its plateau
BUDGETS = (5, 10, 30)                   # student epochs: today's 5 up to 6x
TUNE_BUDGET = 10                        # T and alpha chosen here, on seed 0's validation accuracy
GRID = {"temperature": (2, 4, 8), "alpha": (0.5, 0.9)}
SMOOTHING = (0.05, 0.1, 0.2)            # epsilon of the label-smoothing control, chosen the same way
TUNED = ("reversed", "self")            # hetero borrows self's T and alpha: the same vgg8 teacher
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


def hinton(root: Path, profile: str = HINTON_PROFILE) -> list[Setting]:
    """MNIST with Hinton's teacher regularisation and a long schedule (the profile), at T=20."""
    return [Setting("hinton-T20", "hinton", {**profile_keys(root, profile), "temperature": 20})]


def family(base: dict, kind: str, budget: int, **more) -> dict[str, Any]:
    """A study run: `kind`'s nets, the plateau-checked teacher, `budget` student epochs."""
    teacher, student = CIFAR_FAMILIES[kind]
    return {**base, "teacher.arch": teacher, "teacher.epochs": STUDY_TEACHER_EPOCHS, "student.arch": student,
            "student.epochs": budget, **more}


def cifar_tuning(root: Path, profile: str = CIFAR_PROFILE) -> list[Setting]:
    """Phase 1: each teacher at every length of its ladder (train_teacher only), the T x alpha grid
    of the tuned families and the smoothing grid, all at one seed."""
    base = profile_keys(root, profile)
    out = [Setting(f"cifar-teacher-{arch}-e{e}", "teacher",
                   {**base, "teacher.arch": arch, "teacher.epochs": e}, ("train_teacher",))
           for arch in sorted({t for t, _ in CIFAR_FAMILIES.values()}) for e in TEACHER_EPOCHS]
    out += [Setting(f"cifar-{kind}-e{TUNE_BUDGET}-T{t:g}-a{a:g}", f"grid-{kind}",
                    family(base, kind, TUNE_BUDGET, temperature=t, alpha=a))
            for kind in TUNED for t in GRID["temperature"] for a in GRID["alpha"]]
    # Smoothing changes only the true-label student: the distilled one comes from the run-cache.
    out += [Setting(f"cifar-smooth{eps:g}-e{TUNE_BUDGET}", "grid-smooth",
                    family(base, "self", TUNE_BUDGET, **{"baseline.label_smoothing": eps}))
            for eps in SMOOTHING]
    return out


def cifar_study(root: Path, chosen: dict[str, dict], profile: str = CIFAR_PROFILE) -> list[Setting]:
    """Phase 2, once the grids chose (`chosen`: kind -> {"temperature", "alpha"}, and "smooth" ->
    {"baseline.label_smoothing"}): the tuned families at every budget, then the smoothing control
    and heterogeneous KD at the longest. A family whose grid is unfinished is left out."""
    base = profile_keys(root, profile)
    values = {**chosen, "hetero": chosen.get("self")}
    out = [Setting(f"cifar-{kind}-e{b}", kind, family(base, kind, b, **values[kind]))
           for b in BUDGETS for kind in TUNED if values.get(kind)]
    if values.get("self") and chosen.get("smooth"):
        out.append(Setting(f"cifar-smooth-e{LONGEST}", "smooth",
                           family(base, "self", LONGEST, **values["self"], **chosen["smooth"])))
    if values.get("hetero"):
        out.append(Setting(f"cifar-hetero-e{LONGEST}", "hetero", family(base, "hetero", LONGEST, **values["hetero"])))
    return out


def per_seed(part: str, settings: list[Setting], seeds) -> list[Experiment]:
    """Each setting once per seed; seed-major, so what finishes first is a complete seed."""
    return [Experiment(f"{s.name}-s{seed}", part, s.kind, seed, {**s.overrides, "seed": seed}, s.targets)
            for seed in seeds for s in settings]


def tuning_runs(root: Path, profile: str = CIFAR_PROFILE) -> list[Experiment]:
    """Phase 1 runs at seed 0 only (teachers do not depend on `seed` at all)."""
    return per_seed("cifar", cifar_tuning(root, profile), (0,))


def best(points: list[tuple[Experiment, dict | None]], role: str) -> Experiment | None:
    """The point whose `role` model has the highest validation accuracy (its metrics file), never
    test; None while a point is unfinished. Ties go to the first point."""
    path = metrics_file(role).as_posix()
    if points and all(m is not None and path in m for _, m in points):
        return max(points, key=lambda run: run[1][path]["val_acc"])[0]  # max keeps the first of equals
    return None


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
                "hinton": lambda: per_seed("hinton", hinton(root), seeds),
                "cifar": lambda: tuning_runs(root, profile),
                "methods": lambda: methods_tuning(root, profile)}
    return {part: families[part]() for part in parts}


def study_runs(root: Path, chosen: dict[str, dict], seeds=SEEDS, profile: str = CIFAR_PROFILE) -> list[Experiment]:
    return per_seed("cifar", cifar_study(root, chosen, profile), seeds)
