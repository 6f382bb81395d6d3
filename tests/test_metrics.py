"""Sliced Wasserstein-2 (the metric of method.md §7.6) against closed forms for Gaussians."""
import numpy as np
import pytest
import torch

from eam.eval.metrics import sliced_w2

F64 = torch.float64
N_SAMPLES, N_PROJ = 1600, 1600  # cost ~ n·P (sorting); relative error ~ sqrt(1/(2P) + 8/(‖μ‖² n))


@pytest.mark.parametrize("mu", [[2.4, -3.2], [2.0, 3.0, -1.5]])
def test_sliced_w2_of_shifted_gaussians(mu):
    """§7.6 metric: for N(0, I) and N(μ, I) in d dims, W2²(θᵀX, θᵀY) = (θᵀμ)², so the sliced W2² is
    E_θ[(θᵀμ)²] = ‖μ‖²/d. Tolerance: 5 standard errors from the random projections (Var_θ(θᵀμ)² / P)
    and from the samples (E_θ[2 θᵀμ θᵀΔ] = (2/d) μᵀΔ for the mean difference Δ, SD (2/d)‖μ‖ sqrt(2/n)),
    plus the same-law floor (the sliced W2² of two independent samples of one law, O(1/n))."""
    mu = torch.tensor(mu, dtype=F64)
    d = mu.numel()
    g = torch.Generator().manual_seed(41)
    x = torch.randn(N_SAMPLES, d, generator=g, dtype=F64)
    y = mu + torch.randn(N_SAMPLES, d, generator=g, dtype=F64)
    floor2 = sliced_w2(torch.randn(N_SAMPLES, d, generator=g, dtype=F64), x, n_proj=128) ** 2
    sw2 = sliced_w2(x, y, n_proj=N_PROJ) ** 2
    exact = float(mu @ mu) / d
    # spread of (θᵀμ)² over uniform directions, by an independent Monte Carlo over the sphere
    th = np.random.default_rng(0).standard_normal((200_000, d))
    th /= np.linalg.norm(th, axis=1, keepdims=True)
    se_proj = float(np.std((th @ mu.numpy()) ** 2)) / N_PROJ**0.5
    se_data = 2 / d * float(mu.norm()) * (2 / N_SAMPLES) ** 0.5
    tol = 5 * (se_proj**2 + se_data**2) ** 0.5 + floor2
    assert abs(sw2 - exact) < tol, (sw2, exact, tol)
    assert tol < 0.15 * exact  # sharp enough to tell ‖μ‖²/d from ‖μ‖²/(d ± 1), ‖μ‖² or ‖μ‖


def test_sliced_w2_of_scaled_gaussians():
    """§7.6 metric: N(0, I) vs N(0, s² I): every projection has W2² = (s - 1)², whatever the direction, so
    sliced W2² = (s - 1)². Sampling error: W2² ≈ (s-1)² + (s-1)(s(m_y/s² - 1) - (m_x - 1)) with m the
    projected second moments, SD |s-1| sqrt(s² + 1) sqrt(2/n) per direction, over d independent directions;
    plus 0.01 for the O(1/n) same-law floor."""
    n, d, s = 10_000, 2, 3.0
    g = torch.Generator().manual_seed(42)
    x = torch.randn(n, d, generator=g, dtype=F64)
    y = s * torch.randn(n, d, generator=g, dtype=F64)
    se = abs(s - 1) * (s**2 + 1) ** 0.5 * (2 / (d * n)) ** 0.5
    assert abs(sliced_w2(x, y, n_proj=64) ** 2 - (s - 1) ** 2) < 5 * se + 0.01


def test_sliced_w2_zero_for_identical_and_small_for_same_law():
    """§7.6 metric: exactly 0 for identical samples; for two independent samples of one law it is the
    sampling floor, far below the distance between different laws."""
    n = 4000
    g = torch.Generator().manual_seed(43)
    x = torch.randn(n, 2, generator=g, dtype=F64)
    assert sliced_w2(x, x.clone(), n_proj=128) == 0.0
    assert sliced_w2(x, x[torch.randperm(n, generator=g)], n_proj=128) == 0.0  # order does not matter
    same = sliced_w2(x, torch.randn(n, 2, generator=g, dtype=F64), n_proj=128)
    assert same < 0.1  # O(n^-1/2) with a small constant; a unit shift would give ≈ 0.71


def test_sliced_w2_rejects_unequal_sizes():
    """sliced_w2 needs equal sample sizes and says so."""
    with pytest.raises(ValueError, match="equal-size"):
        sliced_w2(torch.zeros(10, 2), torch.zeros(11, 2))
