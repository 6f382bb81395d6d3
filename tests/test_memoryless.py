"""Memorylessness of the base SDE (method.md §2; check §7.3).

Base: 1-D Gaussian N(0, s0²) under rectified flow, so v_base(x, t) = c(t) x with
c(t) = (t s0² - (1-t)) / (t² s0² + (1-t)²), and the Euler–Maruyama chain of sde_sample is linear:
X_{k+1} = a_k X_k + σ_k √h ξ_k, a_k = 1 + h (2 c(t_k) - 1/(t_k + h)), σ_k² = 2(1 - t_k + h)/(t_k + h).
Its exact moments (a few lines of numpy below, independent of eam) give the discretisation bias, so the
Monte-Carlo comparisons can use pure standard-error tolerances.
"""
import numpy as np
import pytest
import torch

from eam.gmm import GaussianMixture, GMMVelocity
from eam.interpolants import RectifiedFlow
from eam.samplers import ode_sample, sde_sample

F64 = torch.float64
S0, STEPS, N = 0.6, 200, 100_000


def _exact_chain_moments(s0, steps):
    """Var(X_k), Cov(X_0, X_k) and Π_{j≥k} a_j (so Cov(X_k, X_N) = Var(X_k) Π_{j≥k} a_j) of the EM chain."""
    h, S = 1.0 / steps, s0**2
    t = np.arange(steps) * h
    c = (t * S - (1 - t)) / (t**2 * S + (1 - t) ** 2)
    a = 1 + h * (2 * c - 1 / (t + h))
    sig2 = 2 * (1 - t + h) / (t + h)
    var, cov0 = np.empty(steps + 1), np.empty(steps + 1)
    var[0], cov0[0] = 1.0, 1.0
    for k in range(steps):
        var[k + 1] = a[k] ** 2 * var[k] + sig2[k] * h
        cov0[k + 1] = a[k] * cov0[k]
    tail = np.append(np.cumprod(a[::-1])[::-1], 1.0)
    return var, cov0, tail


@pytest.fixture(scope="module")
def sde_run():
    model = GMMVelocity(GaussianMixture([1.0], [[0.0]], [[[S0**2]]]), RectifiedFlow())
    g = torch.Generator().manual_seed(11)
    x0 = torch.randn(N, 1, generator=g, dtype=F64)
    traj, ts, _ = sde_sample(model, x0, STEPS, generator=g)
    return model, x0[:, 0], traj[:, :, 0], ts


def _cov_and_se(u, v):
    p = (u - u.mean()) * (v - v.mean())
    return float(p.mean()), float(p.std() / len(p) ** 0.5)


BRIDGE_T = [0.25, 0.5, 0.75]


def _gaps(steps):
    """Differences between the exact EM-chain moments and the continuous memoryless process."""
    var, cov0, tail = _exact_chain_moments(S0, steps)
    gaps = [var[-1] - S0**2, cov0[-1]]
    for t in BRIDGE_T:
        k = int(round(t * steps))
        gaps += [var[k] - (t**2 * S0**2 + (1 - t) ** 2), var[k] * tail[k] - t * S0**2]
    return np.array(gaps)


def test_discretisation_bias_is_order_h():
    """§7.3 (tolerance bookkeeping): the exact moments of the EM chain (Var(X_1), Cov(X_0, X_1), Var(X_t),
    Cov(X_t, X_1)) are within 5h of the continuous memoryless values s0², 0, α²s0² + β², αs0², and the
    gap is first order: it halves when h halves."""
    h = 1.0 / STEPS
    g1, g2 = _gaps(STEPS), _gaps(2 * STEPS)
    assert np.abs(g1).max() < 5 * h
    assert abs(g1[1]) < h**2  # Cov(X_0, X_1): the first step already forgets X_0 up to O(h²)
    ratio = np.abs(g2[[0, 2, 3, 4, 5, 6, 7]]) / np.abs(g1[[0, 2, 3, 4, 5, 6, 7]])
    assert ((ratio > 0.4) & (ratio < 0.6)).all(), ratio


def test_sde_endpoint_independent_of_start_and_has_base_variance(sde_run):
    """§7.3: under sde_sample with a Gaussian base N(0, s0²), Cov(X_0, X_1) ≈ 0 within 5 standard errors
    (plus the tiny exact discretisation value), and Var(X_1) equals the EM chain's exact variance within
    5 standard errors (itself within O(h) of s0²)."""
    _, x0, traj, _ = sde_run
    var, cov0, _ = _exact_chain_moments(S0, STEPS)
    x1 = traj[-1]
    cov, se = _cov_and_se(x0, x1)
    assert abs(cov) < 5 * se + abs(cov0[-1]), (cov, se, cov0[-1])
    dev = (x1 - x1.mean()) ** 2
    v_hat, v_se = float(dev.mean()), float(dev.std() / N**0.5)
    assert abs(v_hat - var[-1]) < 5 * v_se, (v_hat, var[-1], v_se)
    assert abs(v_hat - S0**2) < 5 * v_se + 5.0 / STEPS


def test_ode_sampler_is_not_memoryless(sde_run):
    """§7.3 (power of the check): the deterministic ODE sampler maps X_0 to X_1 = s0 X_0, so its
    Cov(X_0, X_1) ≈ s0 is hundreds of standard errors away from 0 — the memorylessness test detects it."""
    model, x0, traj, _ = sde_run
    _, se = _cov_and_se(x0, traj[-1])
    x1_ode = ode_sample(model, x0[:20_000, None], 100, "heun")[:, 0]
    cov_ode, _ = _cov_and_se(x0[:20_000], x1_ode)
    assert abs(cov_ode - S0) < 0.01
    assert cov_ode > 100 * se


@pytest.mark.parametrize("t", BRIDGE_T)
def test_sde_path_has_the_bridge_law(sde_run, t):
    """§2/§7.3: the memoryless path law is p(X_1) ⊗ bridge, X_t | X_1 ~ N(α_t X_1, β_t²): Var(X_t) and
    Cov(X_t, X_1) match the EM chain's exact values within 5 standard errors (those are within O(h) of
    α²s0² + β² and α s0², test_discretisation_bias_is_order_h)."""
    _, _, traj, ts = sde_run
    k = int(round(t * STEPS))
    assert float(ts[k]) == pytest.approx(t)
    var, _, tail = _exact_chain_moments(S0, STEPS)
    xt, x1 = traj[k], traj[-1]
    dev = (xt - xt.mean()) ** 2
    assert abs(float(dev.mean()) - var[k]) < 5 * float(dev.std() / N**0.5)
    cov, se = _cov_and_se(xt, x1)
    assert abs(cov - var[k] * tail[k]) < 5 * se
    assert abs(cov - t * S0**2) < 5 * se + 5.0 / STEPS
