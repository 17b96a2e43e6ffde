"""Plain-torch CNNs for 8x8 digit images (``[batch, 1, 8, 8]`` float32 in ``[0, 1]``).

They return logits; the pipeline's fusion step applies the softmax.
"""

from __future__ import annotations

from torch import nn


class DigitsCNN(nn.Module):
    """Two conv layers, one pooling, a small MLP head (a few thousand parameters)."""

    def __init__(self, width: int = 16, hidden: int = 64, num_classes: int = 10, dropout: float = 0.1):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 8x8 -> 4x4
        )
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(2 * width * 16, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x):
        return self.head(self.features(x))


class LargeDigitsCNN(nn.Module):
    """A deeper CNN with about the compute (~1.2 MMAC/sample) of the three small ones together."""

    def __init__(self, width: int = 28, hidden: int = 160, num_classes: int = 10, dropout: float = 0.2):
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU())

        self.features = nn.Sequential(
            block(1, width),
            block(width, width),
            nn.MaxPool2d(2),  # 8x8 -> 4x4
            block(width, 2 * width),
            block(2 * width, 2 * width),
            nn.MaxPool2d(2),  # 4x4 -> 2x2
        )
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(2 * width * 4, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x):
        return self.head(self.features(x))


class DigitsBackbone(nn.Module):
    """Feature extractor for chaining: conv features -> ``hidden`` ReLU features."""

    def __init__(self, width: int = 16, hidden: int = 64):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(2 * width * 16, hidden), nn.ReLU(),
        )

    def forward(self, x):
        return self.features(x)


class DigitsHead(nn.Module):
    """Classifier head on backbone features: linear, or a small MLP when ``mlp`` > 0."""

    def __init__(self, hidden: int = 64, num_classes: int = 10, mlp: int = 0, dropout: float = 0.1):
        super().__init__()
        layers: list[nn.Module] = [nn.Dropout(dropout)]
        if mlp:
            layers += [nn.Linear(hidden, mlp), nn.ReLU(), nn.Linear(mlp, num_classes)]
        else:
            layers += [nn.Linear(hidden, num_classes)]
        self.classifier = nn.Sequential(*layers)

    def forward(self, features):
        return self.classifier(features)


class StudentCNN(nn.Module):
    """The distillation student (``tritonfleet distill``): three conv-BN-ReLU layers and one linear
    layer, about the cost of one small member; no dropout (the teacher's soft labels regularise)."""

    def __init__(self, width: int = 16, num_classes: int = 10):
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU())

        self.features = nn.Sequential(
            block(1, width),
            block(width, 2 * width),
            nn.MaxPool2d(2),  # 8x8 -> 4x4
            block(2 * width, 2 * width),
            nn.MaxPool2d(2),  # 4x4 -> 2x2
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * width * 4, num_classes))

    def forward(self, x):
        return self.head(self.features(x))
