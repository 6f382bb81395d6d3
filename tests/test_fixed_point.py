"""Fixed points of the AM and EAM losses (method.md §3–§5; check §7.4, and the target-level part of §7.5).

The EAM regression target is v_lin(x_t, t) - (σ²/2) Φ(t) ∇g(x_1), ∇g = ∇log p_lin - ∇log p_base - λ∇r.
Its conditional mean given x_t (x_1 from the optimum, x_t from the bridge) must be the optimal velocity;
with r = 0 the optimum is the base. "Conditional mean equals v" is tested as orthogonality of the residual
to test functions of x_t, each within 5 standard errors, with a control showing the test has power.
"""
import pytest
import torch
from torch import nn

from eam.gmm import GaussianMixture, GMMVelocity
from eam.interpolants import RectifiedFlow, VariancePreserving
from eam.losses import AMConfig, EAMConfig, am_loss, base_score_endpoint, eam_loss, lean_adjoint
from eam.models import ResidualVelocity
from eam.reference import LinearReference
from eam.rewards import LinearReward, reward_grad

F64 = torch.float64
INTERPOLANTS = {"rf": RectifiedFlow, "vp": VariancePreserving}


def _mixture():
    """2-D, three components, stds 0.2–0.8."""
    return GaussianMixture([0.5, 0.3, 0.2], [[-1.0, 0.5], [1.5, 1.0], [0.0, -1.5]],
                           [[[0.3, 0.1], [0.1, 0.25]], [[0.64, -0.2], [-0.2, 0.2]], [[0.04, 0.0], [0.0, 0.09]]])


def _test_functions(xt):
    ones = torch.ones_like(xt[:, 0])
    fs = [ones] + [xt[:, j] for j in range(xt.shape[1])] + [torch.sin(xt[:, 0]), torch.tanh(xt[:, -1])]
    return torch.stack(fs, 1)  # [n, F]


def _max_z(residual, xt):
    """max |mean(residual_j f(x_t))| / standard error over coordinates j and test functions f."""
    prod = residual[:, :, None] * _test_functions(xt)[:, None, :]
    n = prod.shape[0]
    return float((prod.mean(0) / (prod.std(0) / n**0.5)).abs().max())


def _eam_target(interp, ref, xt, t, x1, grad_g, phi_scale=1.0):
    """The §4 v-space target v_lin(x_t, t) - (σ²/2) Φ(t) ∇g(x_1)."""
    tt = torch.tensor(t, dtype=F64)
    return ref.velocity(xt, tt) - 0.5 * interp.sigma(tt) ** 2 * phi_scale * ref.phi(tt, xt) * grad_g


# ------------------------------------------------------------------------------------------
# EAM, r = 0: the base is a fixed point
# ------------------------------------------------------------------------------------------
REFS = {"standard": (0.0, 1.0), "fitted": ([0.3, -0.2], [0.8, 1.5])}
CASES = [("rf", "standard", t) for t in (0.05, 0.3, 0.7, 0.9)] + [("rf", "fitted", t) for t in (0.1, 0.5)] \
    + [("vp", "standard", t) for t in (0.1, 0.5, 0.9)] + [("vp", "fitted", 0.3)]


@pytest.mark.parametrize("name,ref_name,t", CASES)
def test_eam_target_conditional_mean_is_base_velocity_when_r_is_zero(name, ref_name, t):
    """§7.4: r = 0 (LinearReward with c = 0), x_1 exact base samples, exact base score: the EAM target minus
    v_base(x_t, t) is orthogonal to 1, x_t, sin, tanh of x_t within 5 standard errors (2·10⁵ samples)."""
    interp = INTERPOLANTS[name]()
    mix = _mixture()
    base = GMMVelocity(mix, interp)
    ref = LinearReference(interp, *(torch.tensor(v) for v in REFS[ref_name]))
    g = torch.Generator().manual_seed(21)
    n = 200_000
    x1 = mix.sample(n, g)
    _, grad_r = reward_grad(LinearReward(torch.zeros(2, dtype=F64)), x1)
    grad_g = ref.score_data(x1) - mix.score(x1) - 1.0 * grad_r
    a, b = (float(c) for c in interp.coefficients(torch.tensor(t, dtype=F64))[:2])
    xt = a * x1 + b * torch.randn(n, 2, generator=g, dtype=F64)
    v_base = base(xt, torch.tensor(t, dtype=F64))
    assert _max_z(_eam_target(interp, ref, xt, t, x1, grad_g) - v_base, xt) < 5


@pytest.mark.parametrize("t", [0.7, 0.9])
def test_eam_fixed_point_check_detects_a_five_percent_error_in_phi(t):
    """§7.4 (power of the check): with Φ scaled by 1.05 the same orthogonality statistic exceeds 5 standard
    errors, so the fixed-point test resolves errors of a few percent in the target."""
    interp = RectifiedFlow()
    mix = _mixture()
    ref = LinearReference(interp)
    g = torch.Generator().manual_seed(21)
    n = 200_000
    x1 = mix.sample(n, g)
    grad_g = ref.score_data(x1) - mix.score(x1)
    xt = t * x1 + (1 - t) * torch.randn(n, 2, generator=g, dtype=F64)
    v_base = GMMVelocity(mix, interp)(xt, torch.tensor(t, dtype=F64))
    assert _max_z(_eam_target(interp, ref, xt, t, x1, grad_g, phi_scale=1.05) - v_base, xt) > 5


class LinearFeatures(nn.Module):
    """f_θ(x, t) = Θ ψ(x, t), ψ = (1, x, sin x_0, tanh x_last, t), Θ = 0: a residual whose loss gradient
    at Θ = 0 is E[2 w (v_θ - target) ψ] — zero exactly when the target's conditional mean is v_θ."""

    def __init__(self, dim):
        super().__init__()
        self.theta = nn.Parameter(torch.zeros(dim, dim + 4, dtype=F64))

    def forward(self, x, t):
        psi = torch.cat([_test_functions(x), t[:, None]], 1)
        return psi @ self.theta.T


def _loss_gradient_z(model, base, reward, lam, ref, cfg, exact_score, dim, reps=20, batch=4000, seed=31):
    """|mean| / standard error of the gradient of eam_loss w.r.t. Θ over independent batches. A floor of
    1e-10 on the standard error stands for float64 round-off: where the residual v_θ - target vanishes
    identically (bridge with p_base = p_lin), every batch's gradient is round-off and z is tiny."""
    g = torch.Generator().manual_seed(seed)
    grads = []
    for _ in range(reps):
        x0 = torch.randn(batch, dim, generator=g, dtype=F64)
        out = eam_loss(model, base, reward, lam, x0, ref, cfg, exact_score=exact_score, generator=g)
        (grad,) = torch.autograd.grad(out.loss, model.residual.theta)
        grads.append(grad.flatten())
    G = torch.stack(grads)
    return G.mean(0).abs() / (G.std(0) / reps**0.5 + 1e-10)


@pytest.mark.parametrize("weighting", ["u", "v"])
def test_eam_loss_gradient_vanishes_at_base_when_r_is_zero(weighting):
    """§7.4 through eam_loss itself (base_score 'exact', r = 0, model = base + zero residual, x_1 from a
    25-step Heun ODE): the loss gradient w.r.t. the residual's weights is zero within 5 standard errors
    (20 batches); with a slightly wrong base score (the base smoothed by N(0, 0.1² I)) it is not (shown
    for the u-weighting)."""
    interp = RectifiedFlow()
    mix = _mixture()
    base = GMMVelocity(mix, interp)
    model = ResidualVelocity(base, LinearFeatures(2))
    ref = LinearReference(interp)
    cfg = EAMConfig(ode_steps=25, ode_method="heun", n_times=8, base_score="exact", weighting=weighting)
    reward = LinearReward(torch.zeros(2, dtype=F64))
    z = _loss_gradient_z(model, base, reward, 1.0, ref, cfg, mix.score, 2)
    assert z.max() < 5, z
    if weighting == "u":
        smoothed = GaussianMixture(mix.w, mix.mu, mix.C + 0.01 * torch.eye(2, dtype=F64))
        z_wrong = _loss_gradient_z(model, base, reward, 1.0, ref, cfg, smoothed.score, 2)
        assert z_wrong.max() > 5, z_wrong


# ------------------------------------------------------------------------------------------
# EAM with a reward, Gaussian base: the tilted optimum is a fixed point; `bridge` is biased when S0 ≠ 1
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("s0,base_score,expect_fixed", [(0.5, "exact", True), (1.0, "bridge", True),
                                                        (0.5, "bridge", False)])
def test_eam_loss_fixed_point_is_tilted_gaussian(s0, base_score, expect_fixed):
    """§7.4/§7.5 at the loss level: 1-D base N(0, s0²), r = c x, λ; p* = N(λ s0² c, s0²). With the model at
    p*'s exact velocity, eam_loss's gradient vanishes (within 5 standard errors) for 'exact', and for
    'bridge' when p_base is the reference N(0, 1); 'bridge' with s0 ≠ 1 is biased, detected at > 5 SE."""
    interp = RectifiedFlow()
    lam, c = 1.5, 0.75  # exact in float32, so the reward and p* agree in any dtype
    base_mix = GaussianMixture([1.0], [[0.0]], [[[s0**2]]])
    target_mix = base_mix.tilt_linear([c], lam)
    assert float(target_mix.mu[0, 0]) == pytest.approx(lam * s0**2 * c, rel=1e-12)
    base = GMMVelocity(base_mix, interp)
    model = ResidualVelocity(GMMVelocity(target_mix, interp), LinearFeatures(1))
    cfg = EAMConfig(ode_steps=25, ode_method="heun", n_times=8, base_score=base_score)
    reward = LinearReward(torch.tensor([c], dtype=F64))
    z = _loss_gradient_z(model, base, reward, lam, LinearReference(interp), cfg, base_mix.score, 1)
    if expect_fixed:
        assert z.max() < 5, z
    else:
        assert z.max() > 5, z


# ------------------------------------------------------------------------------------------
# The endpoint estimator of ∇log p_base (§5)
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["rf", "vp"])
@pytest.mark.parametrize("delta", [0.02, 0.05, 0.1])
def test_base_score_endpoint_is_score_of_smoothed_base(name, delta):
    """§5/§7.4: base_score_endpoint(δ) = α' s_base(α' x_1, 1 - δ) is exactly the score of
    p_base * N(0, (β'/α')² I) at x_1 (that mixture built by adding the variance to each covariance)."""
    interp = INTERPOLANTS[name]()
    mix = _mixture()
    base = GMMVelocity(mix, interp)
    x1 = 2 * torch.randn(500, 2, dtype=F64)
    a, b = (float(c) for c in interp.coefficients(torch.tensor(1 - delta, dtype=F64))[:2])
    smoothed = GaussianMixture(mix.w, mix.mu, mix.C + (b / a) ** 2 * torch.eye(2, dtype=F64))
    est = base_score_endpoint(base, x1, delta)
    torch.testing.assert_close(est, smoothed.score(x1), rtol=1e-8, atol=1e-8)
    assert (est - mix.score(x1)).abs().max() > 1e-3  # it is the smoothed score, not the raw one


# ------------------------------------------------------------------------------------------
# Adjoint Matching
# ------------------------------------------------------------------------------------------
def test_am_lean_adjoint_zero_and_loss_zero_at_base_when_r_is_zero():
    """§7.4 for AM: with r = 0 the lean adjoint is ã_N = 0 ⇒ ã_k = 0 for all k, and am_loss at
    model = base (zero residual) is exactly 0 with zero gradient (target 0 = v_θ - v_base)."""
    interp = RectifiedFlow()
    mix = _mixture()
    base = GMMVelocity(mix, interp)
    ts = torch.linspace(0, 1, 21, dtype=F64)
    traj = torch.randn(21, 64, 2, dtype=F64)
    adj, v_base = lean_adjoint(base, traj, ts, torch.zeros(64, 2, dtype=F64), offset=0.05)
    assert adj.shape == (21, 64, 2) and (adj == 0).all()
    torch.testing.assert_close(v_base, torch.stack([base(traj[k], ts[k]) for k in range(20)]))
    model = ResidualVelocity(base, LinearFeatures(2))
    out = am_loss(model, base, LinearReward(torch.zeros(2, dtype=F64)), 1.0, torch.randn(128, 2, dtype=F64),
                  AMConfig(n_steps=20))
    assert out.loss.item() == pytest.approx(0.0, abs=1e-20)
    (grad,) = torch.autograd.grad(out.loss, model.residual.theta)
    assert grad.abs().max() < 1e-12


@pytest.mark.parametrize("s0", [0.5, 1.0, 1.8])
def test_am_lean_adjoint_closed_form_for_gaussian_base(s0):
    """§7.4 for AM: 1-D base N(0, s0²), r = c x: the base drift is linear, so the lean adjoint is
    deterministic (same for every X_k) and equals ã_t = -λ c exp(∫_t^1 κ_base) = -λ c t s0²/(t² s0² + (1-t)²);
    lean_adjoint's recursion matches it to O(h) on [0.1, 1] (error ≤ 3h·λ|c|, halving with h)."""
    interp = RectifiedFlow()
    base = GMMVelocity(GaussianMixture([1.0], [[0.0]], [[[s0**2]]]), interp)
    lam, c = 2.0, 0.7
    errs = []
    for N in (200, 400):
        ts = torch.linspace(0, 1, N + 1, dtype=F64)
        traj = 3 * torch.randn(N + 1, 16, 1, dtype=F64)  # arbitrary states: the adjoint must not depend on them
        _, grad_r = reward_grad(LinearReward(torch.tensor([c], dtype=F64)), traj[-1])
        adj, _ = lean_adjoint(base, traj, ts, -lam * grad_r, offset=1.0 / N)
        adj = adj[:, :, 0]
        assert adj.std(1).max() < 1e-12  # deterministic
        closed = -lam * c * ts * s0**2 / (ts**2 * s0**2 + (1 - ts) ** 2)
        sel = ts >= 0.1
        errs.append(float((adj[sel] - closed[sel, None]).abs().max()))
        assert errs[-1] < 3 * lam * abs(c) / N, (N, errs[-1])
    assert 0.4 < errs[1] / errs[0] < 0.6  # first order in h
