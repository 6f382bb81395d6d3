"""Distances between sample sets."""
from __future__ import annotations

import torch


def sliced_w2(x: torch.Tensor, y: torch.Tensor, n_proj: int = 512, seed: int = 0) -> float:
    """Sliced Wasserstein-2: sqrt of the mean over random unit directions θ of W2²(θᵀx, θᵀy),
    each 1-D W2² from sorted projections (equal sample sizes)."""
    if x.shape != y.shape:
        raise ValueError(f"sliced_w2 needs equal-size samples, got {tuple(x.shape)} and {tuple(y.shape)}")
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(x.shape[1], n_proj, generator=g, dtype=torch.float64)
    theta = theta / theta.norm(dim=0, keepdim=True)
    px, py = ((z.double() @ theta).T.contiguous().sort(1).values for z in (x, y))
    return float(((px - py) ** 2).mean().sqrt())
