"""VGGs for 32x32 inputs, with batch norm and a single linear classifier.

Convs keep their biases (redundant before BN) to match the public definition's count.
vgg13 is the CIFAR variant used by most public KD code (kuangliu/pytorch-cifar:
five 2x2 pools down to 1x1, then 512 -> classes; 9,416,010 params).
vgg8 and vgg5 are narrow small VGGs for the CPU profile.
"""
from __future__ import annotations

from torch import nn

from kd.models import register

M = "M"  # 2x2 max-pool


def vgg(cfg: list, *, num_classes: int, in_shape, **_) -> nn.Module:
    layers: list[nn.Module] = []
    cin = in_shape[0]
    for v in cfg:
        if v == M:
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(cin, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
            cin = v
    # Global pooling: a no-op for vgg13 (already 1x1), and lets small VGGs stop pooling earlier.
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes)]
    return nn.Sequential(*layers)


@register("vgg13")
def vgg13(**kw) -> nn.Module:
    """The poster's small teacher: 9.41M params."""
    return vgg([64, 64, M, 128, 128, M, 256, 256, M, 512, 512, M, 512, 512, M], **kw)


@register("vgg8")
def vgg8(**kw) -> nn.Module:
    """Seven conv layers (16, 16, 32, 32, 64, 64, 128 channels) and one linear: the CPU profile's small VGG."""
    return vgg([16, 16, M, 32, 32, M, 64, 64, M, 128, M], **kw)


@register("vgg5")
def vgg5(**kw) -> nn.Module:
    """vgg8 with one conv per stage (99k params, about twice as fast to train on a CPU): the CPU
    study's smaller teacher, chosen because it reaches its plateau within 80 epochs."""
    return vgg([16, M, 32, M, 64, M, 128, M], **kw)
