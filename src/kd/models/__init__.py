"""Model registry: params name an architecture, `build_model` makes it.

Registered nets by their name (`resnet18` is the CIFAR-style one); any torchvision
classification model as `torchvision.<name>` (`torchvision.resnet18`,
`torchvision.mobilenet_v3_small`, ...), built untrained with the data's class count.

Every model takes float images in [0, 1] of shape [N, C, H, W] and normalises
them itself, so a checkpoint is usable without knowing the data pipeline.
"""
from __future__ import annotations

import warnings
from functools import lru_cache
from typing import Callable

import torch
from torch import nn

MODELS: dict[str, Callable[..., nn.Module]] = {}
TORCHVISION = "torchvision."


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


@lru_cache(maxsize=1)
def torchvision_classifiers() -> tuple[str, ...]:
    import torchvision.models

    return tuple(torchvision.models.list_models(module=torchvision.models))


def check_arch(arch: str) -> None:
    """ValueError naming the choices when `arch` is neither registered nor torchvision's."""
    if arch in MODELS:
        return
    if arch.startswith(TORCHVISION):
        if arch[len(TORCHVISION):] in torchvision_classifiers():
            return
        raise ValueError(f"unknown arch {arch!r}: torchvision's classification models are "
                         f"{', '.join(TORCHVISION + n for n in torchvision_classifiers())}")
    raise ValueError(f"unknown arch {arch!r}; choose one of {sorted(MODELS)} or torchvision.<name> "
                     "(any torchvision classification model, e.g. torchvision.resnet18)")


def _body(arch: str, num_classes: int, in_shape: tuple[int, ...], **kwargs) -> nn.Module:
    if arch.startswith(TORCHVISION):
        import torchvision.models

        # Untrained: weights come from training or from teacher.init, never from a hub.
        # Their own dropout stays as torchvision defines it.
        return torchvision.models.get_model(arch[len(TORCHVISION):], weights=None, num_classes=num_classes)
    return MODELS[arch](num_classes=num_classes, in_shape=tuple(in_shape), **kwargs)


def build_model(arch: str, *, num_classes: int, in_shape, mean, std, **kwargs) -> nn.Module:
    check_arch(arch)
    return nn.Sequential(Normalize(mean, std), _body(arch, num_classes, in_shape, **kwargs))


@lru_cache(maxsize=None)
def input_problem(arch: str, in_shape: tuple[int, ...], num_classes: int) -> str | None:
    """Why `arch` cannot take images of `in_shape` (too small for its strides, or a
    fixed size such as ViT's), or None. Run on the meta device: shapes only, no memory."""
    try:
        check_arch(arch)
    except ValueError:
        return None  # the arch's own check names it
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torchvision's notes on future init defaults
            body = _body(arch, num_classes, in_shape).eval()
            out = body(torch.zeros(2, *in_shape))
    except Exception as e:  # RuntimeError (output size too small), AssertionError (ViT), ...
        return str(e).strip().splitlines()[0][:200] or type(e).__name__
    if tuple(out.shape) != (2, num_classes):
        return f"it outputs shape {tuple(out.shape)}, not (N, {num_classes})"
    return None


def head(body: nn.Module) -> str:
    """The name of the classifier layer: the last Linear (or 1x1 Conv, as in SqueezeNet)."""
    name = ""
    for n, m in body.named_modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            name = n
    return name


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# Registration happens on import.
from kd.models import mlp, resnet, vgg  # noqa: E402,F401
