"""Where each stage reads and writes; dvc.yaml declares the same paths."""
from pathlib import Path

RAW = Path("data/raw")
PREPARED = Path("data/prepared")
SOFT_LABELS = Path("data/soft_labels.pt")
MODELS = Path("models")
METRICS = Path("metrics")


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


def curve_file(role: str) -> Path:
    """metrics/curves/<role>.csv: per-epoch loss and accuracy of a trained model."""
    return METRICS / "curves" / f"{role}.csv"


def onnx_file(role: str, suffix: str = "") -> Path:
    return MODELS / f"{role}{suffix}.onnx"
