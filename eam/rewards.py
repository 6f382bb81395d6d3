"""Differentiable rewards r(x, cond) → [B], registered by name; `reward_grad` is one reward VJP."""
from __future__ import annotations

import torch

from .registry import register


class Reward(torch.nn.Module):
    """A differentiable scalar reward per sample."""

    def forward(self, x: torch.Tensor, cond=None) -> torch.Tensor:
        raise NotImplementedError


def reward_grad(reward: Reward, x: torch.Tensor, cond=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(r(x), ∇_x r(x)) by one vector–Jacobian product."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        r = reward(x, cond)
        (g,) = torch.autograd.grad(r.sum(), x)
    return r.detach(), g


@register("reward", "linear")
class LinearReward(Reward):
    """r(x) = cᵀx."""

    def __init__(self, c):
        super().__init__()
        self.register_buffer("c", torch.as_tensor(c, dtype=torch.get_default_dtype()))

    def forward(self, x, cond=None):
        return x.flatten(1) @ self.c.to(x)


@register("reward", "quadratic")
class QuadraticReward(Reward):
    """r(x) = -‖x - center‖² / (2τ)."""

    def __init__(self, center, tau: float):
        super().__init__()
        self.register_buffer("center", torch.as_tensor(center, dtype=torch.get_default_dtype()))
        self.tau = float(tau)

    def forward(self, x, cond=None):
        return -((x.flatten(1) - self.center.to(x)) ** 2).sum(1) / (2 * self.tau)
