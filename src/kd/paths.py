"""Where each stage reads and writes: the one list of paths. dvc.yaml declares the
same ones (tests/test_paths.py checks both ways)."""
from pathlib import Path

PARAMS_OK = Path("data/params.ok")  # check_params' marker: every stage depends on it
RAW = Path("data/raw")
PREPARED = Path("data/prepared")
PREPARED_META = PREPARED / "meta.json"  # classes, shape, mean, std (kd.datasets.ImageSpec)
# DVC has no optional dependencies: data.path and teacher.init name this file when unused.
NO_INPUT = "data/none"
SOFT_LABELS = Path("data/soft_labels.pt")
MODELS = Path("models")
METRICS = Path("metrics")
PLOT_KINDS = ("curves", "per_class", "confusion", "calibration")


def split_file(split: str) -> Path:
    return PREPARED / f"{split}.pt"


def model_file(role: str) -> Path:
    return MODELS / f"{role}.pt"


def metrics_file(name: str) -> Path:
    """metrics/<name>.json: a trained role's summary (teacher, baseline, student) or
    what a stage measured (evaluate, model_cost, latency)."""
    return METRICS / f"{name}.json"


def timing_file(stage: str) -> Path:
    """metrics/timing/<stage>.json: the stage's wall time."""
    return METRICS / "timing" / f"{stage}.json"


def plot_file(kind: str, role: str) -> Path:
    """metrics/<kind>/<role>.csv, a plot CSV: curves (per-epoch loss and accuracy of a
    trained model), per_class (test errors), confusion (its off-diagonal: errors), calibration (reliability)."""
    if kind not in PLOT_KINDS:
        raise ValueError(f"plot kind {kind!r}: one of {PLOT_KINDS}")
    return METRICS / kind / f"{role}.csv"


def curve_file(role: str) -> Path:
    return plot_file("curves", role)


def onnx_file(role: str, suffix: str = "") -> Path:
    return MODELS / f"{role}{suffix}.onnx"
