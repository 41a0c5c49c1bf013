"""Model registry: params name an architecture, `build_model` makes it.

Every model takes float images in [0, 1] of shape [N, C, H, W] and normalises
them itself, so a checkpoint is usable without knowing the data pipeline.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

MODELS: dict[str, Callable[..., nn.Module]] = {}


def register(name: str):
    def deco(fn):
        MODELS[name] = fn
        return fn
    return deco


class Normalize(nn.Module):
    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


def build_model(arch: str, *, num_classes: int, in_shape, mean, std, **kwargs) -> nn.Module:
    if arch not in MODELS:
        raise KeyError(f"unknown arch {arch!r}; choose one of {sorted(MODELS)}")
    body = MODELS[arch](num_classes=num_classes, in_shape=tuple(in_shape), **kwargs)
    return nn.Sequential(Normalize(mean, std), body)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# Registration happens on import.
from kd.models import mlp, resnet, vgg  # noqa: E402,F401
