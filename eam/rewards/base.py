"""The reward interface r(x, cond) → [B] and the reward VJP every method spends."""
from __future__ import annotations

import torch


class Reward(torch.nn.Module):
    """A differentiable scalar reward per sample. `cond` is whatever the model is conditioned on
    (None for the benchmarks, a `PromptBatch` for prompted generation)."""

    def forward(self, x: torch.Tensor, cond=None) -> torch.Tensor:
        raise NotImplementedError


def reward_grad(reward: Reward, x: torch.Tensor, cond=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(r(x), ∇_x r(x)) by one vector–Jacobian product; a non-finite reward is an error, not a step."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        r = reward(x, cond)
        if not torch.isfinite(r).all():
            raise FloatingPointError(f"{type(reward).__name__} returned a non-finite reward "
                                     f"({int((~torch.isfinite(r)).sum())} of {r.numel()} samples); check its inputs and weights")
        (g,) = torch.autograd.grad(r.sum(), x)
    return r.detach(), g
