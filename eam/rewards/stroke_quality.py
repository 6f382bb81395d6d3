"""Image quality with no text on digits (LAION Aesthetics' role): crisp, smooth strokes.

q(x) = mean(x²) - γ · mean(|∇x|²), x in [-1, 1]: the first term rewards saturated ink/background
pixels (contrast), the second penalises pixel-to-pixel jumps (ragged, noisy strokes)."""
from __future__ import annotations


from ..registry import register
from .base import Reward


@register("reward", "stroke_quality", domain="digits", weights=False, features=False)
class StrokeQuality(Reward):
    def __init__(self, gamma: float = 0.25):
        super().__init__()
        self.gamma = float(gamma)

    def forward(self, x, cond=None):
        contrast = x.pow(2).flatten(1).mean(1)
        dh, dv = x[..., :, 1:] - x[..., :, :-1], x[..., 1:, :] - x[..., :-1, :]
        roughness = 0.5 * (dh.pow(2).flatten(1).mean(1) + dv.pow(2).flatten(1).mean(1))
        return contrast - self.gamma * roughness

    @classmethod
    def load(cls, directory=None) -> "StrokeQuality":
        return cls()
