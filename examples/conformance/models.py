"""Tiny versions of real architectures, one class each (plain torch; BERT via transformers)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def confident(head: nn.Linear, std: float = 1.0) -> nn.Linear:
    """Re-initialise a classifier head with larger weights, so classes are as well separated as in a
    trained model: with default initialisation, seeded random logits are nearly tied and any
    rounding (int8) flips argmaxes that no trained model would have this close."""
    nn.init.normal_(head.weight, std=std)
    return head


class ResNetTiny(nn.Module):
    """ResNet-style: conv stem, two residual blocks with BatchNorm, global pooling; any H x W."""

    def __init__(self, width: int = 8, classes: int = 5):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.blocks = nn.ModuleList([self._block(width, width, 1), self._block(width, 2 * width, 2)])
        self.skips = nn.ModuleList([nn.Identity(), nn.Sequential(nn.Conv2d(width, 2 * width, 1, stride=2, bias=False),
                                                                 nn.BatchNorm2d(2 * width))])
        self.head = nn.Linear(2 * width, classes)

    @staticmethod
    def _block(cin: int, cout: int, stride: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                             nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.stem(image)
        for block, skip in zip(self.blocks, self.skips):
            x = F.relu(block(x) + skip(x))
        return self.head(x.mean(dim=(2, 3)))


class MobileNetTiny(nn.Module):
    """MobileNet-style depthwise-separable convolutions with SiLU and hardswish; any H x W."""

    def __init__(self, width: int = 8, classes: int = 5):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.SiLU())
        layers = []
        for cin, cout, act in ((width, 2 * width, nn.SiLU), (2 * width, 2 * width, nn.Hardswish)):
            layers += [nn.Conv2d(cin, cin, 3, padding=1, groups=cin), nn.BatchNorm2d(cin), act(),
                       nn.Conv2d(cin, cout, 1), nn.BatchNorm2d(cout), act()]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(2 * width, classes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(F.adaptive_avg_pool2d(self.features(self.stem(image)), 1).flatten(1))


class ViTTiny(nn.Module):
    """A small ViT: patch embedding, class token, position embeddings, pre-norm attention blocks."""

    def __init__(self, image: int = 32, patch: int = 8, dim: int = 32, depth: int = 2, heads: int = 2, classes: int = 5):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, patch, stride=patch)
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, (image // patch) ** 2 + 1, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.patch(image).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        return self.head(self.norm(self.encoder(x))[:, 0])


class BertClassifier(nn.Module):
    """A tiny BERT built from a ``transformers`` config (random init, no download)."""

    def __init__(self, vocab: int = 1000, hidden: int = 32, layers: int = 2, heads: int = 2, max_len: int = 64,
                 classes: int = 3):
        super().__init__()
        from transformers import BertConfig, BertForSequenceClassification

        config = BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                            intermediate_size=2 * hidden, max_position_embeddings=max_len, num_labels=classes)
        self.bert = BertForSequenceClassification(config)

    def forward(self, input_ids, attention_mask, token_type_ids):
        return self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                         return_dict=False)[0]


class TextGRU(nn.Module):
    """Token ids [B, T] -> embedding -> GRU -> last step, with feats [B, 8] -> classes; any length T.
    A second architecture on the same (ids, feats) inputs as :class:`TextTabular`."""

    def __init__(self, vocab: int = 500, dim: int = 16, hidden: int = 24, feats: int = 8, classes: int = 5):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.gru = nn.GRU(dim, hidden, batch_first=True)
        self.head = confident(nn.Linear(hidden + feats, classes))

    def forward(self, ids: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(self.embed(ids))
        return self.head(torch.cat([out[:, -1], feats], dim=1))


class LSTMTagger(nn.Module):
    """Float frames [B, T, 12] -> two-layer LSTM -> mean over time -> classes (saved as TorchScript:
    torch.export.export specializes the length of an LSTM)."""

    def __init__(self, features: int = 12, hidden: int = 16, classes: int = 4):
        super().__init__()
        self.lstm = nn.LSTM(features, hidden, num_layers=2, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(frames)
        return self.head(out.mean(dim=1))


class TemporalConv(nn.Module):
    """Audio-like waveform [B, 1, T] -> strided 1-D convolutions -> global pooling; any T >= 16."""

    def __init__(self, width: int = 8, classes: int = 4):
        super().__init__()
        self.net = nn.Sequential(nn.Conv1d(1, width, 9, stride=2, padding=4), nn.GELU(),
                                 nn.Conv1d(width, 2 * width, 5, stride=2, padding=2, dilation=1), nn.GELU(),
                                 nn.Conv1d(2 * width, 2 * width, 3, padding=2, dilation=2), nn.GELU())
        self.head = nn.Linear(2 * width, classes)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return self.head(self.net(wave).amax(dim=2))


class UNetTiny(nn.Module):
    """A two-level U-Net: mask logits [B, C, H, W] follow the input's H, W (multiples of 4)."""

    def __init__(self, width: int = 8, classes: int = 3):
        super().__init__()

        def conv(cin, cout):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU())

        self.down1, self.down2, self.bottom = conv(3, width), conv(width, 2 * width), conv(2 * width, 4 * width)
        self.up2 = nn.ConvTranspose2d(4 * width, 2 * width, 2, stride=2)
        self.dec2 = conv(4 * width, 2 * width)
        self.up1 = nn.ConvTranspose2d(2 * width, width, 2, stride=2)
        self.dec1 = conv(2 * width, width)
        self.out = nn.Conv2d(width, classes, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        a = self.down1(image)
        b = self.down2(F.max_pool2d(a, 2))
        c = self.bottom(F.max_pool2d(b, 2))
        d = self.dec2(torch.cat([b, self.up2(c)], dim=1))
        return self.out(self.dec1(torch.cat([a, self.up1(d)], dim=1)))


class ScoresAndLabel(nn.Module):
    """Two outputs of different dtypes, returned as a tuple: float32 probabilities, int64 label."""

    def __init__(self, features: int = 10, classes: int = 4):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(features, 32), nn.ReLU(), confident(nn.Linear(32, classes)))

    def forward(self, x: torch.Tensor):
        scores = torch.softmax(self.net(x), dim=1)
        return scores, scores.argmax(dim=1, keepdim=True)


class DictHeads(nn.Module):
    """Returns a dict: class logits and an embedding (outputs taken by the spec's names)."""

    def __init__(self, features: int = 10, classes: int = 4, dim: int = 6):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(features, 24), nn.Tanh())
        self.logits = confident(nn.Linear(24, classes))
        self.embed = nn.Linear(24, dim)

    def forward(self, x: torch.Tensor):
        h = self.body(x)
        return {"logits": self.logits(h), "embedding": F.normalize(self.embed(h), dim=1)}


class TabularNet(nn.Module):
    """Tabular: int64 categorical columns through embeddings, float features, three inputs."""

    def __init__(self, cardinality: int = 10, dim: int = 4, numeric: int = 6, classes: int = 3):
        super().__init__()
        self.region = nn.Embedding(cardinality, dim)
        self.product = nn.Embedding(cardinality, dim)
        self.mlp = nn.Sequential(nn.Linear(2 * dim + numeric, 32), nn.ReLU(), confident(nn.Linear(32, classes)))

    def forward(self, region: torch.Tensor, product: torch.Tensor, numeric: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.cat([self.region(region[:, 0]), self.product(product[:, 0]), numeric], dim=1))


class TextTabular(nn.Module):
    """The issue's model: ids [B, T] through an EmbeddingBag plus feats [B, 8]."""

    def __init__(self, vocab: int = 500, dim: int = 16, feats: int = 8, classes: int = 5):
        super().__init__()
        self.bag = nn.EmbeddingBag(vocab, dim, mode="mean")
        self.head = nn.Sequential(nn.Linear(dim + feats, 32), nn.ReLU(), confident(nn.Linear(32, classes)))

    def forward(self, ids: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.bag(ids), feats], dim=1))
