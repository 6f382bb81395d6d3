"""Closed-form rewards of the Gaussian-mixture benchmark. Each declares the keys a case file gives it
(`case_keys`: "vector" of the case's dimension or "positive" number) and its exact tilt of a mixture."""
from __future__ import annotations

import torch

from ..registry import register
from .base import Reward


@register("reward", "linear", domain="toy", weights=False, features=False)
class LinearReward(Reward):
    """r(x) = cᵀx."""

    case_keys = {"c": "vector"}

    def __init__(self, c):
        super().__init__()
        self.register_buffer("c", torch.as_tensor(c, dtype=torch.float64))  # exact; cast to x's dtype in use

    def forward(self, x, cond=None):
        return x.flatten(1) @ self.c.to(x)

    def tilt(self, mixture, lam: float):
        """p* ∝ p e^{λ cᵀx}, exact (GaussianMixture.tilt_linear)."""
        return mixture.tilt_linear(self.c, lam)


@register("reward", "quadratic", domain="toy", weights=False, features=False)
class QuadraticReward(Reward):
    """r(x) = -‖x - center‖² / (2τ)."""

    case_keys = {"center": "vector", "tau": "positive"}

    def __init__(self, center, tau: float):
        super().__init__()
        self.register_buffer("center", torch.as_tensor(center, dtype=torch.float64))
        self.tau = float(tau)

    def forward(self, x, cond=None):
        return -((x.flatten(1) - self.center.to(x)) ** 2).sum(1) / (2 * self.tau)

    def tilt(self, mixture, lam: float):
        """p* ∝ p e^{-λ‖x - center‖²/(2τ)}, exact (GaussianMixture.tilt_quadratic)."""
        return mixture.tilt_quadratic(self.center, self.tau, lam)
