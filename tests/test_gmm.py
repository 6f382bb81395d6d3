"""Gaussian-mixture bases: density, score, analytic velocity and the exact reward tilt
(the ground truth behind method.md §7.5 and §7.6)."""
import numpy as np
import pytest
import torch
from scipy import integrate, stats

from eam.gmm import GaussianMixture, GMMVelocity
from eam.interpolants import RectifiedFlow, VariancePreserving

F64 = torch.float64

W = [0.45, 0.35, 0.2]
MU = [[-1.0, 0.2], [1.5, 1.0], [0.0, -1.5]]
COV = [[[0.30, 0.12], [0.12, 0.25]], [[0.64, -0.2], [-0.2, 0.2]], [[0.0025, 0.0], [0.0, 0.09]]]  # stds 0.05–0.8


def _mix():
    return GaussianMixture(W, MU, COV)


def _scipy_pdf(x, w=W, mu=MU, cov=COV):
    """Mixture density by scipy, independent of GaussianMixture."""
    w = np.asarray(w) / np.sum(w)
    return sum(wi * stats.multivariate_normal(mi, ci).pdf(x) for wi, mi, ci in zip(w, mu, cov))


def _grid(lo=-7.0, hi=7.0, n=701):
    u = np.linspace(lo, hi, n)
    X, Y = np.meshgrid(u, u, indexing="ij")
    return np.stack([X.ravel(), Y.ravel()], 1), (u[1] - u[0]) ** 2


def _check_tilt(tilted, log_tilt):
    """Pointwise density and mean of `tilted` against p_base·exp(λr) normalised on a fine grid."""
    pts, dA = _grid()
    unnorm = _scipy_pdf(pts) * np.exp(log_tilt(pts))
    num = unnorm / (unnorm.sum() * dA)
    dens = tilted.log_prob(torch.tensor(pts, dtype=F64)).exp().numpy()
    assert np.abs(dens - num).max() < 1e-6 * num.max()
    mean_num = (pts * num[:, None]).sum(0) * dA
    np.testing.assert_allclose(tilted.mean().numpy(), mean_num, rtol=0, atol=1e-7)
    assert np.abs(mean_num - _mix().mean().numpy()).max() > 0.3  # the tilt really moved the law


@pytest.mark.parametrize("c,lam", [([1.0, -0.5], 1.5), ([0.0, 2.0], 0.7)])
def test_tilt_linear_matches_quadrature(c, lam):
    """§7.5: tilt_linear (r = cᵀx) equals p_base·exp(λ r) normalised by quadrature on a 2-D grid
    (density pointwise and mean)."""
    _check_tilt(_mix().tilt_linear(c, lam), lambda x: lam * x @ np.asarray(c))


@pytest.mark.parametrize("center,tau,lam", [([1.0, 1.0], 0.5, 2.0), ([-0.5, -1.0], 2.0, 3.0)])
def test_tilt_quadratic_matches_quadrature(center, tau, lam):
    """§7.5: tilt_quadratic (r = -‖x - center‖²/(2τ)) equals p_base·exp(λ r) normalised by quadrature
    on a 2-D grid (density pointwise and mean)."""
    tilted = _mix().tilt_quadratic(center, tau, lam)
    _check_tilt(tilted, lambda x: -lam * ((x - np.asarray(center)) ** 2).sum(1) / (2 * tau))


def test_log_prob_matches_scipy():
    """Mixture log density against scipy's multivariate normals."""
    x = 2 * torch.randn(500, 2, dtype=F64)
    np.testing.assert_allclose(_mix().log_prob(x).numpy(), np.log(_scipy_pdf(x.numpy())), rtol=1e-10, atol=1e-10)


def test_score_matches_autograd_and_finite_differences():
    """§7.5: GaussianMixture.score equals autograd of log_prob and central differences of scipy's log density."""
    mix = _mix()
    x = (2 * torch.randn(300, 2, dtype=F64)).requires_grad_(True)
    (grad,) = torch.autograd.grad(mix.log_prob(x).sum(), x)
    s = mix.score(x.detach())
    torch.testing.assert_close(s, grad, rtol=1e-9, atol=1e-9)
    xn, h = x.detach().numpy(), 1e-5
    fd = np.stack([(np.log(_scipy_pdf(xn + h * e)) - np.log(_scipy_pdf(xn - h * e))) / (2 * h)
                   for e in np.eye(2)], 1)
    np.testing.assert_allclose(s.numpy(), fd, rtol=1e-5, atol=1e-4)


def test_sample_moments():
    """Mixture samples: first and second moments within 5 standard errors of Σw μ and Σw (C + μμᵀ)."""
    mix, n = _mix(), 200_000
    x = mix.sample(n, torch.Generator().manual_seed(7))
    w, mu, C = (torch.tensor(a, dtype=F64) for a in (W, MU, COV))
    m1 = (w[:, None] * mu).sum(0)
    m2 = (w[:, None, None] * (C + mu[:, :, None] * mu[:, None, :])).sum(0)
    prods = x[:, :, None] * x[:, None, :]
    for est, exact, se in [(x.mean(0), m1, x.std(0) / n**0.5),
                           (prods.mean(0), m2, prods.std(0) / n**0.5)]:
        assert ((est - exact).abs() < 5 * se).all(), (est, exact, se)


# ------------------------------------------------------------------------------------------
# Analytic velocity of the mixture: posterior mean by 1-D quadrature
# ------------------------------------------------------------------------------------------
W1, MU1, VAR1 = [0.4, 0.6], [-1.0, 1.5], [0.1, 0.5]


def _posterior_mean_quad(x, a, b):
    """E[X_1 | α X_1 + β X_0 = x] = ∫ x1 p(x1) N(x; αx1, β²) dx1 / ∫ p(x1) N(x; αx1, β²) dx1."""
    p = lambda x1: sum(w * stats.norm.pdf(x1, m, v**0.5) for w, m, v in zip(W1, MU1, VAR1))  # noqa: E731
    lik = lambda x1: stats.norm.pdf(x, a * x1, b)  # noqa: E731
    kw = dict(points=MU1 + [x / a], limit=200, epsabs=0, epsrel=1e-11)
    num, _ = integrate.quad(lambda u: u * p(u) * lik(u), -12, 12, **kw)
    den, _ = integrate.quad(lambda u: p(u) * lik(u), -12, 12, **kw)
    return num / den


@pytest.mark.parametrize("name,t", [("rf", 0.2), ("rf", 0.5), ("rf", 0.9), ("vp", 0.3), ("vp", 0.8)])
def test_gmm_velocity_posterior_mean_matches_quadrature(name, t):
    """§7.5: GMMVelocity's D = E[X_1 | X_t = x] for a 1-D two-component mixture equals quadrature of
    x1·p(x1)N(x; αx1, β²); its velocity is α̇D + β̇(x - αD)/β and its score -(x - αD)/β²."""
    interp = {"rf": RectifiedFlow, "vp": VariancePreserving}[name]()
    mix = GaussianMixture(W1, [[m] for m in MU1], [[[v]] for v in VAR1])
    model = GMMVelocity(mix, interp)
    xs = np.array([-2.5, -1.0, -0.3, 0.0, 0.4, 1.2, 2.0, 3.0])
    tt = torch.full((len(xs),), t, dtype=F64)
    a, b, da, db = (float(c[0]) for c in interp.coefficients(tt))
    D_q = np.array([_posterior_mean_quad(x, a, b) for x in xs])
    x = torch.tensor(xs, dtype=F64)[:, None]
    D, N = mix.posterior_means(x, *interp.coefficients(tt)[:2])
    np.testing.assert_allclose(D[:, 0].numpy(), D_q, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(N[:, 0].numpy(), (xs - a * D_q) / b, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(model(x, tt)[:, 0].numpy(), da * D_q + db * (xs - a * D_q) / b, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(model.score(x, tt)[:, 0].numpy(), -(xs - a * D_q) / b**2, rtol=1e-8, atol=1e-8)


def test_responsibilities_average_to_the_weights_on_exact_samples(gen):
    """E_p[P(i | X)] = w_i: the soft assignment the benchmark reports as component_weights is unbiased."""
    m = _mix()
    r = m.responsibilities(m.sample(20_000, gen))
    se = r.std(0) / 20_000**0.5
    assert torch.allclose(r.sum(1), torch.ones(len(r), dtype=torch.float64))
    assert ((r.mean(0) - m.w).abs() < 4 * se + 1e-3).all(), (r.mean(0), m.w)
