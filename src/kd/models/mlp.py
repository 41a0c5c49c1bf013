"""Hinton et al. (2015) MNIST nets: fully connected, ReLU."""
from __future__ import annotations

import math

from torch import nn

from kd.models import register


def mlp(hidden: list[int], *, num_classes: int, in_shape, dropout=0.0, input_dropout=0.0) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten(), nn.Dropout(input_dropout)]
    width = math.prod(in_shape)
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU(inplace=True), nn.Dropout(dropout)]
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


@register("mlp1200")
def mlp1200(**kw) -> nn.Module:
    """The paper's teacher: 784-1200-1200-10, 2.39M params."""
    return mlp([1200, 1200], **kw)


@register("mlp800")
def mlp800(**kw) -> nn.Module:
    """The paper's student: 784-800-800-10, 1.28M params."""
    return mlp([800, 800], **kw)
