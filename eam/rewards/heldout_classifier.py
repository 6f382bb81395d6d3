"""Held-out preference model on digits (evaluation only, ImageReward/HPS's role against reward
hacking): an MLP classifier, a different architecture trained on the disjoint `heldout` split;
score = log p(prompted class | x)."""
from __future__ import annotations

from torch import nn

from ..registry import register
from .digit_classifier import DigitClassifierReward


class MLPClassifier(nn.Module):
    """Flattened 8x8 pixels → 256 → 256 → 10 logits, with dropout while training."""

    def __init__(self, n_classes: int = 10, hidden: int = 256, dropout: float = 0.2):
        super().__init__()
        self.features = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.SiLU(), nn.Dropout(dropout),
                                      nn.Linear(hidden, hidden), nn.SiLU(), nn.Dropout(dropout))
        self.head = nn.Linear(hidden, n_classes)

    def forward(self, x):
        return self.head(self.features(x))


@register("reward", "heldout_classifier", domain="digits", weights=True, features=True)
class HeldoutClassifierReward(DigitClassifierReward):
    arch = MLPClassifier
