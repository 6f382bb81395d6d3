"""Image–prompt agreement on digits (CLIPScore's role): a tiny CLIP trained contrastively on digit
images and their prompts; score = 100 · cos(image embedding, prompt embedding), the convention of
text-to-image papers' CLIPScore."""
from __future__ import annotations

import math
import re

import torch
from torch import nn

from ..checkpoint import load_pretrained, load_state, save_pretrained
from ..registry import register
from .base import Reward


def tokenize(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


class TinyCLIP(nn.Module):
    """Word-bag text encoder and conv image encoder into a shared `dim`-d space."""

    def __init__(self, vocab: list[str], dim: int = 64, width: int = 32):
        super().__init__()
        self.vocab = list(vocab)  # index 0 is the unknown word
        self.index = {w: i for i, w in enumerate(self.vocab)}
        self.words = nn.EmbeddingBag(len(self.vocab), dim, mode="mean")
        self.text_proj = nn.Linear(dim, dim)
        self.image = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.SiLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.SiLU(),
            nn.Flatten(), nn.Linear(2 * width * 16, 128), nn.SiLU(), nn.Linear(128, dim))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        ids = [torch.tensor([self.index.get(w, 0) for w in tokenize(t)] or [0]) for t in texts]
        offsets = torch.tensor([0] + [len(i) for i in ids[:-1]]).cumsum(0)
        dev = self.logit_scale.device
        return nn.functional.normalize(self.text_proj(self.words(torch.cat(ids).to(dev), offsets.to(dev))), dim=-1)

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.image(x), dim=-1)


@register("reward", "digit_clip", domain="digits", weights=True, features=False)
class DigitCLIPScore(Reward):
    def __init__(self, clip: TinyCLIP):
        super().__init__()
        self.clip = clip.requires_grad_(False).eval()

    def forward(self, x, cond=None):
        if cond is None:
            raise ValueError("digit_clip scores images against prompts: pass a PromptBatch")
        return 100 * (self.clip.encode_image(x) * self.clip.encode_text(cond.texts).to(x)).sum(-1)

    def save(self, directory, **config):
        save_pretrained(directory, self.clip, {"reward": "digit_clip", "vocab": self.clip.vocab, **config})

    @classmethod
    def load(cls, directory) -> "DigitCLIPScore":
        config, state = load_pretrained(directory, "digit_clip reward model",
                                        "train it with `eam digits-pretrain digit_clip --out DIR` (rule digits_reward_model)")
        clip = TinyCLIP(config["vocab"], **config.get("arch", {}))
        load_state(clip, state, directory, "digit_clip reward model")
        return cls(clip)
