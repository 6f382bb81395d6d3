"""The linear reference p_lin = N(m, S) of EAM: adjoint propagator Φ (method.md §4; check §7.1)."""
import numpy as np
import pytest
import torch
from scipy import integrate

from eam.interpolants import RectifiedFlow, VariancePreserving
from eam.reference import LinearReference

F64 = torch.float64
LIKE = torch.zeros(1, dtype=F64)  # a scalar-per-sample template for LinearReference's broadcasting


def _kappa(ref):
    return lambda s: float(ref.drift_coefficient(torch.tensor(s, dtype=F64), LIKE))


def _phi(ref, t):
    return float(ref.phi(torch.tensor(t, dtype=F64), LIKE))


@pytest.mark.parametrize("S", [1.0, 0.3, 2.5])
@pytest.mark.parametrize("t", [0.02, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99])
def test_phi_is_exp_integral_of_drift_coefficient_rf(S, t):
    """§7.1: rectified flow, Φ(t) = exp(∫_t^1 κ(s) ds) (scipy quad) for S = 1 and S ≠ 1, and
    Φ = tS/(t²S + (1-t)²) in closed form."""
    ref = LinearReference(RectifiedFlow(), mean=0.4, var=S)
    integral, err = integrate.quad(_kappa(ref), t, 1.0, epsabs=1e-12, epsrel=1e-12, limit=200)
    assert err < 1e-9
    assert _phi(ref, t) == pytest.approx(np.exp(integral), rel=1e-8)
    S32 = float(ref.S)  # the value LinearReference actually holds
    assert _phi(ref, t) == pytest.approx(t * S32 / (t**2 * S32 + (1 - t) ** 2), rel=1e-12)


def _vp_segment_integral(f, vp, t0, t1):
    """∫_{t0}^{t1} f by quad on each segment between VP grid points (f has kinks there)."""
    T = vp.T
    knots = 1.0 - np.arange(T)[::-1] / (T - 1)  # ascending grid times
    pts = np.concatenate([[t0], knots[(knots > t0) & (knots < t1)], [t1]])
    total = 0.0
    for lo, hi in zip(pts[:-1], pts[1:]):
        val, err = integrate.quad(f, lo, hi, epsabs=1e-13, epsrel=1e-12)
        assert err < 1e-10
        total += val
    return total


@pytest.mark.parametrize("S", [1.0, 0.3, 2.5])
@pytest.mark.parametrize("t,t_prime", [(0.05, 0.2), (0.3, 0.45), (0.6, 0.75), (0.85, 0.97)])
def test_phi_ratio_is_exp_integral_vp(S, t, t_prime):
    """§7.1: variance preserving (α_1 ≠ 1, so Φ(1) ≠ 1): Φ(t)/Φ(t') = exp(∫_t^{t'} κ) for t < t' < 1,
    by quad on each segment of the piecewise schedule."""
    vp = VariancePreserving()
    ref = LinearReference(vp, var=S)
    integral = _vp_segment_integral(_kappa(ref), vp, t, t_prime)
    assert _phi(ref, t) / _phi(ref, t_prime) == pytest.approx(np.exp(integral), rel=1e-7)


@pytest.mark.parametrize("name", ["rf", "vp"])
@pytest.mark.parametrize("t", [0.15, 0.5, 0.85])
def test_drift_coefficient_is_slope_of_linear_memoryless_drift(name, t):
    """§7.1: κ(t) is the coefficient of x in b_lin = 2 v_lin - (α̇/α) x (the drift of Interpolant.drift);
    the linear drift's slope by a secant, which is exact for a linear map."""
    interp = {"rf": RectifiedFlow, "vp": VariancePreserving}[name]()
    ref = LinearReference(interp, mean=0.6, var=0.4)
    tt = torch.tensor(t, dtype=F64)
    x = torch.tensor([[-2.0], [3.0]], dtype=F64)
    b = interp.drift(ref.velocity(x, tt), x, tt)
    slope = float((b[1] - b[0]) / (x[1] - x[0]))
    assert float(ref.drift_coefficient(tt, LIKE)) == pytest.approx(slope, rel=1e-10)


@pytest.mark.parametrize("name,t", [("rf", 0.2), ("rf", 0.6), ("vp", 0.4), ("vp", 0.9)])
def test_phi_is_slope_of_posterior_mean_monte_carlo(name, t):
    """§4/§7.1: Φ(t) = ∂E_lin[X_1 | X_t = x]/∂x: the OLS slope of X_1 on X_t from 10⁶ samples of
    X_1 ~ N(m, S) agrees with Φ(t) within 5 standard errors."""
    interp = {"rf": RectifiedFlow, "vp": VariancePreserving}[name]()
    m, S, n = -0.5, 1.7, 1_000_000
    g = torch.Generator().manual_seed(5)
    x1 = m + S**0.5 * torch.randn(n, generator=g, dtype=F64)
    a, b = (float(c) for c in interp.coefficients(torch.tensor(t, dtype=F64))[:2])
    xt = a * x1 + b * torch.randn(n, generator=g, dtype=F64)
    xc = xt - xt.mean()
    slope = (xc * (x1 - x1.mean())).sum() / xc.pow(2).sum()
    resid = x1 - x1.mean() - slope * xc
    se = (resid.pow(2).sum() / (n - 2)).sqrt() / xc.pow(2).sum().sqrt()
    phi = _phi(LinearReference(interp, m, S), t)
    assert abs(phi - float(slope)) < 5 * float(se), (phi, float(slope), float(se))


def test_score_data_is_gaussian_score():
    """§4: ∇log p_lin(x) = -(x - m)/S, against autograd of the N(m, diag S) log density."""
    m, S = torch.tensor([0.3, -1.0]), torch.tensor([0.5, 2.0])
    ref = LinearReference(RectifiedFlow(), m, S)
    x = torch.randn(16, 2, dtype=F64, requires_grad=True)
    logp = torch.distributions.Normal(m.double(), S.double().sqrt()).log_prob(x).sum()
    (grad,) = torch.autograd.grad(logp, x)
    torch.testing.assert_close(ref.score_data(x.detach()), grad, rtol=1e-6, atol=1e-6)


def test_rf_target_shift_coefficient_closed_form():
    """§4: rectified flow with S = 1, the target's shift coefficient (σ²/2)Φ = (1 - t)/(t² + (1 - t)²)."""
    rf = RectifiedFlow()
    ref = LinearReference(rf)
    t = torch.linspace(0.01, 0.99, 99, dtype=F64)
    shift = 0.5 * rf.sigma(t) ** 2 * ref.phi(t, t)
    torch.testing.assert_close(shift, (1 - t) / (t**2 + (1 - t) ** 2), rtol=1e-12, atol=0)
