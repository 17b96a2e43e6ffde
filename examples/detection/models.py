"""A toy detector for the detection-fusion example (plain torch, exportable to ONNX).

It is *not* a trained detector: a small seeded network whose outputs have the layout real
detectors are served with — ``boxes [K, 4]`` (x1, y1, x2, y2 in pixels), ``scores [K]``,
``labels [K]`` and ``count [1]`` valid rows, sorted by score with zero padding after
``count``. Members built from one base network plus small weight noise disagree a little,
which is what box fusion is for.
"""

from __future__ import annotations

import torch
from torch import nn


class ToyDetector(nn.Module):
    def __init__(self, slots: int = 8, classes: int = 3, image_size: int = 32, threshold: float = 0.5):
        super().__init__()
        self.slots, self.classes, self.size, self.threshold = slots, classes, float(image_size), threshold
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(),
            nn.Linear(8 * 16, slots * (5 + classes)),
        )

    def forward(self, image):
        raw = self.body(image).reshape(-1, self.slots, 5 + self.classes)
        centre = torch.sigmoid(raw[..., 0:2]) * self.size
        half = (torch.sigmoid(raw[..., 2:4]) * 0.25 + 0.05) * self.size
        boxes = torch.cat([centre - half, centre + half], dim=-1).clamp(0.0, self.size)
        scores = torch.sigmoid(raw[..., 4])
        labels = torch.argmax(raw[..., 5:], dim=-1)
        scores, order = torch.sort(scores, dim=1, descending=True)
        boxes = torch.gather(boxes, 1, order.unsqueeze(-1).expand(-1, -1, 4))
        labels = torch.gather(labels, 1, order)
        count = (scores >= self.threshold).sum(dim=1, keepdim=True)
        valid = torch.arange(self.slots, device=image.device).unsqueeze(0) < count
        return (boxes * valid.unsqueeze(-1), scores * valid, labels * valid, count)
