"""One list of paths: what the stages write (kd.paths) is what dvc.yaml declares."""
import pytest

from conftest import REPO
from kd import paths
from kd.yaml_reader import parse_yaml

DVC = parse_yaml((REPO / "dvc.yaml").read_text())
ROLES = ("teacher", "baseline", "student")


def declared_outputs() -> set[str]:
    out = set()
    for stage in DVC["stages"].values():
        for kind in ("outs", "metrics", "plots"):
            for entry in stage.get(kind, []):
                out.add(entry if isinstance(entry, str) else next(iter(entry)))
    return out


def library_outputs() -> set:
    """Every file or folder kd.paths names for a stage to write."""
    out = {paths.RAW, paths.PREPARED, paths.SOFT_LABELS, paths.onnx_file("student"),
           paths.onnx_file("student", ".int8"), *(paths.model_file(r) for r in ROLES)}
    out |= {paths.metrics_file(n) for n in (*ROLES, "evaluate", "model_cost", "latency", "export", "export_latency")}
    out |= {paths.timing_file(s) for s in DVC["stages"]}
    out |= {paths.plot_file(kind, role) for kind in paths.PLOT_KINDS for role in ROLES}
    out.add(paths.PARAMS_OK)
    return {p.as_posix() for p in out}


def test_every_declared_output_is_a_kd_paths_path():
    assert declared_outputs() - library_outputs() == set()


def test_every_kd_paths_path_is_declared():
    assert library_outputs() - declared_outputs() == set()


def test_plot_kinds_are_checked():
    with pytest.raises(ValueError, match="plot kind"):
        paths.plot_file("curve", "teacher")
