"""Each stage depends on exactly the code it runs, and imports run one way.

dvc.yaml lists, per stage, its script and the src/kd files it imports
(transitively, also through the kd_runs harness that starts it). A module left
out would let `dvc repro` keep outputs the new code would change; a module too
many reruns the stage for nothing (changing ECE binning used to retrain the
teacher). kd_runs records and orchestrates runs and is nobody's dependency, so
kd, which computes the outputs, must never import it.
"""
import ast
from pathlib import Path

import pytest
import yaml

from conftest import REPO

SRC = REPO / "src"
PACKAGES = ("kd", "kd_pipeline", "kd_study")


def module_file(module: str) -> Path | None:
    path = SRC.joinpath(*module.split("."))
    for candidate in (path / "__init__.py", path.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def _type_checking_only(tree: ast.AST) -> set[int]:
    """Line numbers of imports inside `if TYPE_CHECKING:` (never run)."""
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING":
            lines |= {n.lineno for b in node.body for n in ast.walk(b) if hasattr(n, "lineno")}
    return lines


def imports(path: Path, *, runtime_only: bool = True) -> set[str]:
    """Our modules (kd..., kd_pipeline..., kd_study...) that `path` imports, anywhere in the file."""
    tree = ast.parse(path.read_text())
    skip = _type_checking_only(tree) if runtime_only else set()
    out = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from kd.models import mlp`: mlp may be a submodule or a name in kd.models.
            out |= {f"{node.module}.{a.name}" if module_file(f"{node.module}.{a.name}") else node.module
                    for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
    return {m for m in out if m.split(".")[0] in PACKAGES}


def code_closure(script: Path) -> set[str]:
    """The src/kd files that running `script` imports, as paths relative to the repo."""
    seen, todo = set(), list(imports(script))
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        parts = module.split(".")
        todo += [".".join(parts[:i]) for i in range(2, len(parts))]  # importing a.b.c runs a.b first
        if file := module_file(module):
            todo += imports(file)
    files = {module_file(m) for m in seen}
    return {str(f.relative_to(REPO)) for f in files if f and f.is_relative_to(SRC / "kd")}


def code_deps(stage: dict) -> set[str]:
    return {d for d in stage["deps"] if d.startswith(("src/", "stages/"))}


def script_of(stage: dict) -> str:
    return stage["cmd"].split()[-1]


STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_code_deps_are_exactly_its_import_closure(name):
    stage = STAGES[name]
    expected = {script_of(stage)} | code_closure(REPO / script_of(stage))
    actual = code_deps(stage)
    assert actual == expected, (f"dvc.yaml stage {name}: missing {sorted(expected - actual)}, "
                                f"not imported {sorted(actual - expected)}; deps should be {sorted(expected)}")


def test_kd_never_imports_kd_pipeline_or_kd_study():
    offenders = {str(f.relative_to(REPO)): sorted(m for m in imports(f, runtime_only=False)
                                                   if m.split(".")[0] != "kd")
                 for f in (SRC / "kd").rglob("*.py")}
    assert {f: m for f, m in offenders.items() if m} == {}


def test_the_closure_follows_the_harness_and_subpackages():
    closure = code_closure(REPO / "stages/train_teacher.py")
    assert {"src/kd/loop.py", "src/kd/params.py", "src/kd/models/__init__.py", "src/kd/models/mlp.py",
            "src/kd/models/resnet.py"} <= closure
    assert all(f.startswith("src/kd/") for f in closure)  # recording is nobody's dep


def test_training_does_not_depend_on_what_only_evaluation_uses():
    for name in ("train_teacher", "train_baseline", "train_student", "generate_soft_labels"):
        assert "src/kd/evaluate.py" not in code_closure(REPO / script_of(STAGES[name])), name
    assert "src/kd/evaluate.py" in code_closure(REPO / "stages/evaluate.py")
