"""Prompt alignment on digits (the training reward of the embedded default, PickScore's role):
log-probability of the prompted class under a small conv classifier trained on the `train` split."""
from __future__ import annotations

from torch import nn

from ..checkpoint import load_pretrained, load_state, save_pretrained
from ..registry import register
from .base import Reward


class ConvClassifier(nn.Module):
    """8x8 → conv 32 → conv 64 (4x4) → 128 features → 10 logits."""

    def __init__(self, n_classes: int = 10, width: int = 32):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.SiLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.SiLU(),
            nn.Flatten(), nn.Linear(2 * width * 16, 128), nn.SiLU())
        self.head = nn.Linear(128, n_classes)

    def forward(self, x):
        return self.head(self.features(x))


@register("reward", "digit_classifier", domain="digits", weights=True, features=True)
class DigitClassifierReward(Reward):
    """r(x, prompt) = log p(label | x); `features` (128-d) serve the Fréchet distance to the base."""

    arch = ConvClassifier

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net.requires_grad_(False).eval()

    def forward(self, x, cond=None):
        if cond is None or cond.labels is None:
            raise ValueError(f"{type(self).__name__} scores prompted digits: pass a PromptBatch with labels")
        logp = self.net(x).log_softmax(-1)
        return logp.gather(1, cond.labels.to(x.device)[:, None])[:, 0]

    def features(self, x):
        return self.net.features(x)

    def save(self, directory, **config):
        save_pretrained(directory, self.net, {"reward": self.registered_name, **config})

    @classmethod
    def load(cls, directory) -> "DigitClassifierReward":
        config, state = load_pretrained(directory, f"{cls.registered_name} reward model",
                                        f"train it with `eam digits-pretrain {cls.registered_name} --out DIR` (rule digits_reward_model)")
        net = cls.arch(**config.get("arch", {}))
        load_state(net, state, directory, f"{cls.registered_name} reward model")
        return cls(net)
