"""A ResNet-50-like image classifier in plain torch (no torchvision), taking uint8 images.

``ResNetLike()`` is ResNet-50's layout (bottleneck blocks 3/4/6/3, width 64, 1000 classes,
224x224 inputs); ``SmallResNetLike()`` is a narrow, shallow one for CPU checks. Inputs are
``uint8 [3, H, W]`` in 0..255 and the ImageNet normalisation happens inside the model (in the
dtype of its weights), so a client sends one byte per value instead of four: at batch 256 a
request is 38 MB instead of 154 MB. Random weights (``torch.manual_seed``): the bench measures
speed and equality of outputs, not accuracy.
"""

from __future__ import annotations

import torch
from torch import nn

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1):
        super().__init__()
        cout = width * self.expansion
        self.body = nn.Sequential(
            nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout),
        )
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.relu(self.body(x) + self.shortcut(x))


class ResNetLike(nn.Module):
    def __init__(self, layers: tuple[int, ...] = (3, 4, 6, 3), width: int = 64, num_classes: int = 1000):
        super().__init__()
        self.register_buffer("mean", torch.tensor(MEAN).reshape(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(STD).reshape(1, 3, 1, 1) * 255)
        self.stem = nn.Sequential(nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU(inplace=True), nn.MaxPool2d(3, stride=2, padding=1))
        blocks, cin = [], width
        for stage, count in enumerate(layers):
            w = width * 2 ** stage
            for i in range(count):
                blocks.append(Bottleneck(cin, w, stride=2 if i == 0 and stage > 0 else 1))
                cin = w * Bottleneck.expansion
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes))
        for m in self.modules():  # torchvision's ResNet init; the last BN of a block starts at zero
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        for block in blocks:
            nn.init.zeros_(block.body[-1].weight)

    def forward(self, image):
        x = (image.to(self.mean.dtype) - self.mean) / self.std  # uint8 -> normalised, in the weights' dtype
        return self.head(self.blocks(self.stem(x)))


class SmallResNetLike(ResNetLike):
    """One block per stage, width 8 (~0.2 M parameters): fast on a CPU."""

    def __init__(self, num_classes: int = 10):
        super().__init__(layers=(1, 1, 1, 1), width=8, num_classes=num_classes)
