"""ResNets for 32x32 inputs.

resnet18 is the CIFAR variant used by most public KD code (kuangliu/pytorch-cifar:
3x3 stem, no max-pool, 11,173,962 params). resnet8/resnet20 are He et al.'s
(2016) CIFAR nets (16-32-64 channels, 6n+2 layers), small enough to train on CPU;
their shortcuts are 1x1 projections where the shape changes (option B).
"""
from __future__ import annotations

from torch import nn

from kd.models import register


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout),
        )
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.relu(self.body(x) + self.shortcut(x))


def resnet(widths: list[int], blocks: list[int], *, num_classes: int, in_shape, **_) -> nn.Module:
    # Dropout params are accepted and ignored: BN nets are regularised by augmentation and weight decay.
    layers: list[nn.Module] = [
        nn.Conv2d(in_shape[0], widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True),
    ]
    cin = widths[0]
    for i, (w, n) in enumerate(zip(widths, blocks)):
        for j in range(n):
            layers.append(BasicBlock(cin, w, 2 if i > 0 and j == 0 else 1))
            cin = w
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes)]
    return nn.Sequential(*layers)


@register("resnet18")
def resnet18(**kw) -> nn.Module:
    """The poster's large student: 11.17M params."""
    return resnet([64, 128, 256, 512], [2, 2, 2, 2], **kw)


@register("resnet20")
def resnet20(**kw) -> nn.Module:
    """He et al.'s ResNet-20: 0.27M params, the CPU profile's large net."""
    return resnet([16, 32, 64], [3, 3, 3], **kw)


@register("resnet8")
def resnet8(**kw) -> nn.Module:
    """He et al.'s ResNet-8: 0.08M params, the CPU profile's smallest net."""
    return resnet([16, 32, 64], [1, 1, 1], **kw)
