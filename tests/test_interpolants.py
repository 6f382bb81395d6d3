"""Interpolants, posterior means, velocity, score, σ and the memoryless drift (method.md §1, §2; check §7.2)."""
import numpy as np
import pytest
import torch

from eam.gmm import GaussianMixture, GMMVelocity
from eam.interpolants import Interpolant, RectifiedFlow, VariancePreserving
from eam.reference import LinearReference

F64 = torch.float64
INTERPOLANTS = {"rf": RectifiedFlow, "vp": VariancePreserving}


def _ddpm_abar(schedule, beta_start, beta_end, T):
    """ᾱ_n = Π_{i≤n} (1 - β_i), computed independently in numpy (diffusers' DDPM schedules)."""
    if schedule == "scaled_linear":
        betas = np.linspace(np.sqrt(beta_start), np.sqrt(beta_end), T) ** 2
    else:
        betas = np.linspace(beta_start, beta_end, T)
    return np.cumprod(1.0 - betas)


def _coeffs(interp, t):
    return [c.double().numpy() for c in interp.coefficients(torch.as_tensor(t, dtype=F64))]


# ------------------------------------------------------------------------------------------
# Variance-preserving schedule
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("schedule,b0,b1,abar_last", [("scaled_linear", 0.00085, 0.012, 0.0047),
                                                      ("linear", 0.0001, 0.02, 4.04e-5)])
def test_vp_alpha_on_grid_matches_ddpm_cumprod(schedule, b0, b1, abar_last):
    """§7.2: α(1 - n/(T-1))² = ᾱ_n = cumprod(1 - β)_n (numpy, independent, and diffusers' DDPMScheduler, whose
    `alphas_cumprod` SD1.5's pipelines use, in float32); SD1.5's ᾱ_999 ≈ 0.0047."""
    from diffusers import DDPMScheduler

    T = 1000
    abar = _ddpm_abar(schedule, b0, b1, T)
    assert abar[-1] == pytest.approx(abar_last, rel=0.02)
    diffusers_abar = DDPMScheduler(beta_start=b0, beta_end=b1, beta_schedule=schedule,
                                   num_train_timesteps=T).alphas_cumprod.double().numpy()
    np.testing.assert_allclose(abar, diffusers_abar, rtol=1e-5)
    vp = VariancePreserving(beta_start=b0, beta_end=b1, schedule=schedule, num_train_timesteps=T)
    n = np.arange(T)
    t = torch.tensor(1.0 - n / (T - 1), dtype=F64)
    a, b, _, _ = _coeffs(vp, t)
    np.testing.assert_allclose(a**2, abar, rtol=1e-10)
    np.testing.assert_allclose(b**2, 1 - abar, rtol=1e-9, atol=1e-13)


def test_vp_alpha_beta_on_unit_circle():
    """§7.2: α² + β² = 1 for the VP interpolant at arbitrary t (grid and off-grid)."""
    vp = VariancePreserving()
    t = torch.linspace(0.0, 1.0, 4001, dtype=F64)
    a, b, _, _ = _coeffs(vp, t)
    np.testing.assert_allclose(a**2 + b**2, 1.0, rtol=0, atol=1e-12)


def _off_grid_times(T=1000, n=np.array([3, 50, 200, 499, 750, 990])):
    """Midpoints of VP grid segments (timestep n + 1/2), away from the kinks of the schedule."""
    return 1.0 - (n + 0.5) / (T - 1), n


def test_vp_time_derivatives_by_finite_differences():
    """§7.2: α̇ and β̇ of VP equal central finite differences of α and β away from grid points."""
    vp = VariancePreserving()
    t, _ = _off_grid_times()
    dt = 1e-6  # far inside a segment (segment width 1/999)
    a, b, da, db = _coeffs(vp, t)
    ap, bp, _, _ = _coeffs(vp, t + dt)
    am, bm, _, _ = _coeffs(vp, t - dt)
    np.testing.assert_allclose(da, (ap - am) / (2 * dt), rtol=1e-6)
    np.testing.assert_allclose(db, (bp - bm) / (2 * dt), rtol=1e-6)


def test_vp_sigma_squared_is_dlog_abar_dt():
    """§7.2: VP memoryless σ² = 2β(α̇β/α - β̇) equals d log ᾱ/dt (numpy ᾱ, exact on a segment and by FD)."""
    T = 1000
    vp = VariancePreserving()
    t, n = _off_grid_times(T)
    sigma2 = vp.sigma(torch.tensor(t, dtype=F64)).double().numpy() ** 2
    log_abar = np.log(_ddpm_abar("scaled_linear", 0.00085, 0.012, T))
    # on segment [n, n+1] of training time τ = (1 - t)(T - 1), log ᾱ is linear in τ
    exact = -(T - 1) * (log_abar[n + 1] - log_abar[n])
    np.testing.assert_allclose(sigma2, exact, rtol=1e-8)
    dt = 1e-6
    fd = (np.log(_coeffs(vp, t + dt)[0] ** 2) - np.log(_coeffs(vp, t - dt)[0] ** 2)) / (2 * dt)
    np.testing.assert_allclose(sigma2, fd, rtol=1e-6)


# ------------------------------------------------------------------------------------------
# Rectified flow σ
# ------------------------------------------------------------------------------------------
def test_rf_sigma_closed_form():
    """§7.2: rectified flow σ(t)² = 2(1 - t)/t (offset 0, both the override and the generic
    formula 2β(α̇β/α - β̇)), and with the AM offset h: σ² = 2(1 - t + h)/(t + h)."""
    rf = RectifiedFlow()
    t = torch.linspace(0.01, 0.99, 99, dtype=F64)
    closed = 2 * (1 - t) / t
    torch.testing.assert_close(rf.sigma(t) ** 2, closed, rtol=1e-12, atol=0)
    torch.testing.assert_close(Interpolant.sigma(rf, t) ** 2, closed, rtol=1e-12, atol=0)
    h = 0.025
    torch.testing.assert_close(rf.sigma(t, offset=h) ** 2, 2 * (1 - t + h) / (t + h), rtol=1e-12, atol=0)
    torch.testing.assert_close(rf.drift_coefficient(t), 1 / t, rtol=1e-12, atol=0)


# ------------------------------------------------------------------------------------------
# Posterior means, velocity and score on a Gaussian
# ------------------------------------------------------------------------------------------
def _gaussian_closed_forms(interp, m, S, x, t):
    """For X_1 ~ N(m, diag S): D = E[X_1|x], N = E[X_0|x], v = α̇D + β̇N, s = -(x - αm)/(α²S + β²)."""
    a, b, da, db = (c.to(F64).reshape(-1, 1) for c in interp.coefficients(torch.as_tensor(t, dtype=F64)))
    var = a**2 * S + b**2
    D = m + a * S / var * (x - a * m)
    N = b / var * (x - a * m)
    v = da * m + (da * a * S + db * b) / var * (x - a * m)
    s = -(x - a * m) / var
    return D, N, v, s


@pytest.mark.parametrize("name", ["rf", "vp"])
@pytest.mark.parametrize("kind", ["velocity", "epsilon", "sample"])
def test_posterior_means_velocity_score_on_gaussian(name, kind):
    """§7.2: to_posterior_means round-trips every prediction kind to the Gaussian's closed-form (D, N);
    velocity(D, N) and score(N) (and velocity_to_score) match v_lin and -(x - αm)/(α²S + β²)."""
    interp = INTERPOLANTS[name]()
    g = torch.Generator().manual_seed(0)
    m, S = torch.tensor([0.7, -1.2], dtype=F64), torch.tensor([0.3, 2.5], dtype=F64)
    B = 64
    x = 1.5 * torch.randn(B, 2, generator=g, dtype=F64)
    t = torch.rand(B, generator=g, dtype=F64) * 0.9 + 0.05  # per-sample times
    D, N, v, s = _gaussian_closed_forms(interp, m, S, x, t)
    pred = {"velocity": v, "epsilon": N, "sample": D}[kind]
    D_hat, N_hat = interp.to_posterior_means(pred, x, t, kind)
    torch.testing.assert_close(D_hat, D, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(N_hat, N, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(interp.velocity(D_hat, N_hat, t), v, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(interp.score(N_hat, t), s, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(interp.velocity_to_score(v, x, t), s, rtol=1e-9, atol=1e-9)
    # the same model output, evaluated with one scalar time for the whole batch
    t0 = 0.37
    D, N, v, s = _gaussian_closed_forms(interp, m, S, x, torch.tensor([t0], dtype=F64))
    pred = {"velocity": v, "epsilon": N, "sample": D}[kind]
    D_hat, N_hat = interp.to_posterior_means(pred, x, torch.tensor(t0, dtype=F64), kind)
    torch.testing.assert_close(D_hat, D, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(N_hat, N, rtol=1e-9, atol=1e-9)
    # the reference's v_lin is this same closed-form velocity (LinearReference stores m, S in the
    # default dtype, float32, hence the looser tolerance)
    torch.testing.assert_close(LinearReference(interp, m, S).velocity(x, torch.tensor(t0, dtype=F64)), v,
                               rtol=1e-6, atol=1e-6)
    # and an independent one: the posterior-mean velocity of a one-component Gaussian mixture (itself checked
    # against quadrature in test_gmm.py), per coordinate m and S
    from eam.gmm import GaussianMixture, GMMVelocity

    gauss = GMMVelocity(GaussianMixture([1.0], [m.tolist()], [torch.diag(S).tolist()]), interp)
    torch.testing.assert_close(LinearReference(interp, m, S).velocity(x, t), gauss(x, t).to(F64), rtol=1e-5, atol=1e-5)


def test_rf_score_from_velocity_closed_form():
    """§1/§7.2: for rectified flow, s = (t v - x)/(1 - t)."""
    rf = RectifiedFlow()
    g = torch.Generator().manual_seed(1)
    x, v = torch.randn(32, 3, generator=g, dtype=F64), torch.randn(32, 3, generator=g, dtype=F64)
    t = torch.rand(32, generator=g, dtype=F64) * 0.9 + 0.05
    torch.testing.assert_close(rf.velocity_to_score(v, x, t), (t[:, None] * v - x) / (1 - t[:, None]),
                               rtol=1e-10, atol=1e-10)


def test_unknown_prediction_kind_rejected():
    """§1: an unknown prediction kind is an error, not a silent default."""
    x = torch.zeros(2, 2, dtype=F64)
    with pytest.raises(ValueError, match="prediction"):
        RectifiedFlow().to_posterior_means(x, x, 0.5, "noise")


CASES = [("rf", 0.2, 1.0), ("rf", 0.5, 0.3), ("rf", 0.8, 2.5), ("rf", 0.05, 2.5),
         ("vp", 0.3, 0.3), ("vp", 0.7, 2.5), ("vp", 0.95, 1.0)]


@pytest.mark.parametrize("name,t,S", CASES)
def test_v_lin_is_monte_carlo_regression(name, t, S):
    """§7.2: v_lin(x, t) = E[α̇X_1 + β̇X_0 | X_t = x] for X_1 ~ N(m, S): OLS of the velocity on X_t from
    10⁶ samples; slope and value at the sample mean agree with v_lin within 5 standard errors."""
    interp = INTERPOLANTS[name]()
    m, n = 0.7, 1_000_000
    g = torch.Generator().manual_seed(2)
    x1 = m + S**0.5 * torch.randn(n, generator=g, dtype=F64)
    x0 = torch.randn(n, generator=g, dtype=F64)
    a, b, da, db = (float(c) for c in interp.coefficients(torch.tensor(t, dtype=F64)))
    xt, y = a * x1 + b * x0, da * x1 + db * x0
    xbar, ybar = xt.mean(), y.mean()
    sxx = ((xt - xbar) ** 2).sum()
    slope = ((xt - xbar) * (y - ybar)).sum() / sxx
    resid = y - ybar - slope * (xt - xbar)
    s_r = (resid.pow(2).sum() / (n - 2)).sqrt()
    se_slope, se_mean = s_r / sxx.sqrt(), s_r / n**0.5
    ref = LinearReference(interp, m, S)
    pts = torch.stack([xbar, xbar + 1]).reshape(2, 1)
    v = ref.velocity(pts, torch.tensor(t, dtype=F64)).reshape(2).double()
    assert abs(v[1] - v[0] - slope) < 5 * se_slope, (float(v[1] - v[0]), float(slope), float(se_slope))
    assert abs(v[0] - ybar) < 5 * se_mean, (float(v[0]), float(ybar), float(se_mean))


# ------------------------------------------------------------------------------------------
# Memoryless drift
# ------------------------------------------------------------------------------------------
def _mixtures():
    A = GaussianMixture([0.3, 0.7], [[-1.0, 0.5], [1.5, -0.5]],
                        [[[0.2, 0.05], [0.05, 0.3]], [[0.5, -0.1], [-0.1, 0.15]]])
    B = GaussianMixture([0.5, 0.2, 0.3], [[0.0, 0.0], [2.0, 2.0], [-2.0, 1.0]],
                        [[[1.0, 0.0], [0.0, 1.0]], [[0.1, 0.0], [0.0, 0.4]], [[0.3, 0.2], [0.2, 0.3]]])
    return A, B


@pytest.mark.parametrize("name", ["rf", "vp"])
@pytest.mark.parametrize("t", [0.1, 0.45, 0.8])
def test_drift_is_v_plus_half_sigma2_score_and_differences_double(name, t):
    """§7.2 (§2): Interpolant.drift equals b = v + (σ²/2) s with the model's own score for two different
    mixture models, and b_θ - b_base = 2 (v_θ - v_base) exactly."""
    interp = INTERPOLANTS[name]()
    A, B = _mixtures()
    mA, mB = GMMVelocity(A, interp), GMMVelocity(B, interp)
    g = torch.Generator().manual_seed(3)
    x = 2 * torch.randn(200, 2, generator=g, dtype=F64)
    tt = torch.tensor(t, dtype=F64)
    half_s2 = 0.5 * float(Interpolant.sigma(interp, tt)) ** 2
    vA, vB = mA(x, tt), mB(x, tt)
    bA, bB = interp.drift(vA, x, tt), interp.drift(vB, x, tt)
    tb = tt.expand(x.shape[0])
    torch.testing.assert_close(bA, vA + half_s2 * mA.score(x, tb), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(bB, vB + half_s2 * mB.score(x, tb), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(bA - bB, 2 * (vA - vB), rtol=1e-9, atol=1e-9)
    assert (vA - vB).abs().max() > 0.1  # the two models really differ
