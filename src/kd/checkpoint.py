"""Model checkpoints that rebuild themselves: arch, dataset and weights."""
from __future__ import annotations

from pathlib import Path

from torch import nn

from kd.datasets import DATASETS
from kd.files import load_torch, save_torch
from kd.models import build_model


def new_model(arch: str, dataset: str, **kwargs) -> nn.Module:
    info = DATASETS[dataset]
    return build_model(arch, num_classes=info.num_classes, in_shape=info.shape,
                       mean=info.mean, std=info.std, **kwargs)


def save_model(path: str | Path, model: nn.Module, *, arch: str, dataset: str, **kwargs) -> None:
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    save_torch({"arch": arch, "dataset": dataset, "kwargs": kwargs, "state_dict": state}, path)


def load_model(path: str | Path) -> tuple[nn.Module, dict]:
    ckpt = load_torch(path)
    model = new_model(ckpt["arch"], ckpt["dataset"], **ckpt["kwargs"])
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    return model, ckpt
