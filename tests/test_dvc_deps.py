"""Each stage depends on exactly the code it runs, and imports run one way.

dvc.yaml lists, per stage, its script and the src/kd files it imports
(transitively, also through the kd_pipeline harness that starts it). A module left
out would let `dvc repro` keep outputs the new code would change; a module too
many reruns the stage for nothing (changing ECE binning used to retrain the
teacher). What of the harness decides outputs (params, processes, seed, device)
is kd.stage_setup, in every stage's deps; the rest of kd_pipeline records runs
and is nobody's dependency. kd_study runs the poster study on top of kd.

Imports run one way: kd, which computes the outputs, imports neither of the
others; kd_pipeline and kd_study each import kd and not each other; and no
modules import each other in a circle.
"""
import ast
from pathlib import Path

import pytest
import yaml

from conftest import REPO

SRC = REPO / "src"
PACKAGES = ("kd", "kd_pipeline", "kd_study")
# Which packages each package may import (itself aside).
MAY_IMPORT = {"kd": set(), "kd_pipeline": {"kd"}, "kd_study": {"kd"}, "stages": {"kd", "kd_pipeline"}}


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


def module_closure(script: Path) -> set[str]:
    """Every module of ours that running `script` imports."""
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
    return seen


def code_closure(script: Path) -> set[str]:
    """The src/kd files that running `script` imports, as paths relative to the repo."""
    files = {module_file(m) for m in module_closure(script)}
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


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def our_modules() -> dict[str, Path]:
    return {module_name(f): f for package in PACKAGES for f in sorted((SRC / package).rglob("*.py"))}


@pytest.mark.parametrize("package", sorted(MAY_IMPORT))
def test_packages_import_one_way(package):
    files = (REPO / package).glob("*.py") if package == "stages" else (SRC / package).rglob("*.py")
    offenders = {str(f.relative_to(REPO)): sorted(m for m in imports(f, runtime_only=False)
                                                   if m.split(".")[0] not in MAY_IMPORT[package] | {package})
                 for f in files}
    assert {f: m for f, m in offenders.items() if m} == {}, f"{package} may import only {MAY_IMPORT[package]}"


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module, or of one that imports itself (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v), on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph.get(v, ()):
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> the modules of ours it imports, also inside functions (they run when called).
    A package importing its own submodules to fill a registry (kd.models) is no cycle: they
    import the package, which is already running."""
    return {name: {m for m in imports(path) if not m.startswith(name + ".")} for name, path in our_modules().items()}


def test_no_import_cycles():
    assert import_cycles(import_graph()) == []


def test_the_cycle_check_sees_function_level_imports(tmp_path):
    deferred = tmp_path / "deferred.py"
    deferred.write_text("def later():\n    from kd.params import flatten\n")
    assert imports(deferred) == {"kd.params"}  # runs when called: still an edge
    graph = import_graph()
    assert import_cycles({**graph, "kd.paths": graph["kd.paths"] | {"kd.params"}})  # kd.params imports kd.paths
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"d"}}) == [["a", "b", "c"], ["d"]]


# Calls that decide what a stage computes: seeding, the device and precision, torchrun,
# reading params.yaml. The harness leaves them to kd.stage_setup (a dep of every stage).
SHAPES_OUTPUTS = {"manual_seed", "manual_seed_all", "seed", "seed_everything", "use_deterministic_algorithms",
                  "_set_deterministic_algorithms", "pick_device", "set_device", "resolve_precision", "native_bf16",
                  "autocast", "set_default_dtype", "set_float32_matmul_precision", "load_params",
                  "relaunch_under_torchrun", "init_process_group", "distributed.init", "execv"}


def calls(path: Path) -> set[str]:
    """What `path` calls: `f` for f(...), `a.f` and `f` for a.f(...)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Name):
                out.add(f.id)
            elif isinstance(f, ast.Attribute):
                out.add(f.attr)
                if isinstance(f.value, ast.Name):
                    out.add(f"{f.value.id}.{f.attr}")
    return out


@pytest.mark.parametrize("name", sorted(STAGES))
def test_the_harness_a_stage_runs_decides_none_of_its_outputs(name):
    harness = {m for m in module_closure(REPO / script_of(STAGES[name])) if not m.startswith("kd.") and m != "kd"}
    assert harness, "every stage starts through kd_pipeline.stage"
    found = {m: sorted(calls(module_file(m)) & SHAPES_OUTPUTS) for m in harness if module_file(m)}
    assert {m: c for m, c in found.items() if c} == {}, "move it into kd (kd.stage_setup), a dep of every stage"
    assert "src/kd/stage_setup.py" in code_deps(STAGES[name])


def test_the_closure_follows_the_harness_and_subpackages():
    closure = code_closure(REPO / "stages/train_teacher.py")
    assert {"src/kd/loop.py", "src/kd/params.py", "src/kd/models/__init__.py", "src/kd/models/mlp.py",
            "src/kd/models/resnet.py"} <= closure
    assert "src/kd/stage_setup.py" in closure  # the harness's seeding, device, torchrun
    assert all(f.startswith("src/kd/") for f in closure)  # recording is nobody's dep


def test_training_does_not_depend_on_what_only_evaluation_uses():
    for name in ("train_teacher", "train_baseline", "train_student", "generate_soft_labels"):
        assert "src/kd/evaluate.py" not in code_closure(REPO / script_of(STAGES[name])), name
    assert "src/kd/evaluate.py" in code_closure(REPO / "stages/evaluate.py")
