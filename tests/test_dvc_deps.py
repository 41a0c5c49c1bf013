"""dvc.yaml's code deps cover what each stage runs: a module a stage imports but
does not depend on would let `dvc repro` keep outputs the new code would change."""
import ast
from pathlib import Path

import pytest
import yaml

from conftest import REPO

SRC = REPO / "src"
# Recording only: they send params, metrics and models to MLflow and never change
# a stage's outputs, so they stay outside the deps (changing them retrains nothing).
RECORDING = {"kd_runs.tracking", "kd_runs.run_info", "kd_runs.registry"}


def _module_file(module: str) -> Path:
    path = SRC.joinpath(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def _imports(path: Path) -> set[str]:
    """Our modules (kd.*, kd_runs.*) that `path` imports, as top-level.module."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] if "." in node.module else [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        out |= {".".join(n.split(".")[:2]) for n in names if n.split(".")[0] in ("kd", "kd_runs")}
    return out


def _closure(script: Path) -> set[str]:
    seen, todo = set(), list(_imports(script))
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        file = _module_file(module)
        if file.name == "__init__.py":  # a subpackage: everything in it counts
            todo += [m for f in file.parent.rglob("*.py") for m in _imports(f)]
        elif file.exists():
            todo += _imports(file)
    return seen


def missing_deps(stage: dict) -> list[str]:
    """Modules the stage's script imports (transitively) that none of its deps covers."""
    script = REPO / stage["cmd"].split()[-1]
    deps = [REPO / d for d in stage["deps"]]
    missing = [] if script in deps else [str(script.relative_to(REPO))]
    for module in sorted(_closure(script) - RECORDING):
        file = _module_file(module)
        if not any(file == d or d in file.parents for d in deps):
            missing.append(module)
    return missing


STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("name", sorted(STAGES))
def test_every_module_a_stage_imports_is_a_dep(name):
    assert missing_deps(STAGES[name]) == []


def test_the_check_finds_a_module_left_out():
    # The deps train_teacher had before this check: kd.device (bf16 autocast) and
    # kd.resume, among others, were used but not listed.
    old = {"cmd": "python stages/train_teacher.py",
           "deps": ["stages/train_teacher.py", "src/kd/train.py", "src/kd/augment.py", "src/kd/losses.py",
                    "src/kd/models", "src/kd/stage.py", "src/kd/checkpoint.py"]}
    missing = missing_deps(old)
    assert {"kd.device", "kd.resume", "kd.soft_labels"} <= set(missing)
    assert "kd.models" not in missing and "kd_runs.tracking" not in missing
    assert missing_deps({**old, "deps": ["src/kd"]}) == ["stages/train_teacher.py"]


def test_every_stage_says_what_it_does():
    assert [name for name, stage in STAGES.items() if not stage.get("desc")] == []


def test_the_artifacts_are_stage_outputs():
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())
    outs = {o if isinstance(o, str) else next(iter(o)) for s in spec["stages"].values() for o in s.get("outs", [])}
    assert {a["path"] for a in spec["artifacts"].values()} <= outs
    assert {a["type"] for a in spec["artifacts"].values()} == {"model"}


def test_the_poster_counts_no_stage_output_as_pipeline_code():
    from kd_runs.poster import pipeline_code

    code = pipeline_code(REPO)
    assert "metrics/evaluate.json" not in code  # a dep of export_onnx, but a result
    assert {"dvc.yaml", "src/kd", "stages/export_onnx.py"} <= set(code)
