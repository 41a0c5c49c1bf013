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


def onnx_file(role: str, suffix: str = "") -> Path:
    return MODELS / f"{role}{suffix}.onnx"
