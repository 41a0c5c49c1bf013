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

from kd.dvc_yaml import parse_yaml

from kd_runs.run_info import flatten  # {'teacher': {'lr': 0.1}} -> {'teacher.lr': 0.1}

SEEDS = (0, 1, 2)
TEMPERATURES = (1, 2, 4, 8, 20, 50)
OMITTED_DIGIT = 3
CIFAR_PROFILE = "profiles/cifar10-cpu.yaml"
# (kind, teacher arch, student arch) at the CPU profile; the small VGG is the weaker net.
CIFAR_PAIRS = (
    ("reversed", "vgg8", "resnet20"),       # a small teacher, a larger student
    ("self-resnet20", "resnet20", "resnet20"),
    ("self-vgg8", "vgg8", "vgg8"),
    ("hetero", "resnet20", "vgg8"),         # normal KD across architectures
)
PARTS = ("mnist", "cifar")


class PosterError(RuntimeError):
    """Something the user can fix: a busy queue, a bad profile, a failed tool call."""


@dataclass(frozen=True)
class Setting:
    """One point of a family, run once per seed."""
    name: str                      # experiment names are "<name>-s<seed>"
    kind: str                      # what the report groups by: "sweep", "omit", a CIFAR pair
    overrides: dict[str, Any]      # dotted params key -> value


@dataclass(frozen=True)
class Experiment:
    name: str                      # the DVC experiment name
    part: str                      # "mnist" | "cifar": budgets and report sections
    kind: str
    seed: int
    overrides: dict[str, Any] = field(default_factory=dict)   # dotted key -> value

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


def cifar(root: Path, profile: str = CIFAR_PROFILE) -> list[Setting]:
    """The poster's CIFAR-10 pairs: reversed, self and heterogeneous KD, at `profile`."""
    keys = profile_overrides(_load(root / "params.yaml"), _load(root / profile), profile)
    return [Setting(f"cifar-{kind}", kind, {**keys, "teacher.arch": teacher, "student.arch": student})
            for kind, teacher, student in CIFAR_PAIRS]


def profile_overrides(base: dict, profile: dict, source: str = "the profile") -> dict[str, Any]:
    """The `-S` settings that turn params `base` into `profile` (a whole params file)."""
    b, p = flatten(base), flatten(profile)
    missing = sorted(set(b) - set(p))
    if missing:
        raise PosterError(f"{source} lacks keys that params.yaml has: {missing}")
    return {k: v for k, v in p.items() if b.get(k, object()) != v}


def per_seed(part: str, settings: list[Setting], seeds) -> list[Experiment]:
    return [Experiment(f"{s.name}-s{seed}", part, s.kind, seed, {**s.overrides, "seed": seed})
            for s in settings for seed in seeds]


def plan(root: Path, parts=PARTS, seeds=SEEDS, temperatures=TEMPERATURES,
           profile: str = CIFAR_PROFILE) -> dict[str, list[Experiment]]:
    """Every experiment of the poster, by part, in queue order."""
    families = {"mnist": lambda: mnist(temperatures), "cifar": lambda: cifar(root, profile)}
    return {part: per_seed(part, families[part](), seeds) for part in parts}
