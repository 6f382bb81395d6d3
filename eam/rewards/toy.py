"""Closed-form rewards of the Gaussian-mixture benchmark (their exact tilt is in gmm.py)."""
from __future__ import annotations

import torch

from ..registry import register
from .base import Reward


@register("reward", "linear", domain="toy", weights=False, features=False)
class LinearReward(Reward):
    """r(x) = cᵀx."""

    def __init__(self, c):
        super().__init__()
        self.register_buffer("c", torch.as_tensor(c, dtype=torch.get_default_dtype()))

    def forward(self, x, cond=None):
        return x.flatten(1) @ self.c.to(x)


@register("reward", "quadratic", domain="toy", weights=False, features=False)
class QuadraticReward(Reward):
    """r(x) = -‖x - center‖² / (2τ)."""

    def __init__(self, center, tau: float):
        super().__init__()
        self.register_buffer("center", torch.as_tensor(center, dtype=torch.get_default_dtype()))
        self.tau = float(tau)

    def forward(self, x, cond=None):
        return -((x.flatten(1) - self.center.to(x)) ** 2).sum(1) / (2 * self.tau)
