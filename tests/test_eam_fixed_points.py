"""EAM's fixed points on a mixture of well-separated modes, by quadrature (a finding against the
acceptance of issue 2, see README "Ground truth").

The population minimiser of the EAM loss for samples x_1 ~ q is the conditional mean of its target,
v_new(x, t) = v_lin(x, t) - (σ²/2) Φ(t) E_q[∇g(x_1) | x_t = x], with the exact base and reward
(∇g = ∇log p_lin - ∇log p*). With q = p* it is v_{p*} (the fixed point of method.md §4). But any q
with p*'s modes and other mode weights is a fixed point too: E_q[∇log(p*/q)(x_1) | x_t] vanishes
where log(p*/q) is constant on each mode, so EAM cannot move mass between separated modes once their
shapes are right; AM, whose adjoint runs on the base dynamics, can.
"""
import pytest
import torch

from eam.gmm import GaussianMixture, GMMVelocity
from eam.interpolants import RectifiedFlow
from eam.reference import LinearReference

F64 = torch.float64
TIMES = (0.05, 0.2, 0.4, 0.6, 0.8)


def _mixture(weights, std):
    return GaussianMixture(torch.tensor(weights, dtype=F64), torch.tensor([[-3.0], [3.0]], dtype=F64),
                           torch.tensor([[[std**2]], [[std**2]]], dtype=F64))


P_STAR = _mixture([0.5, 0.5], 0.4)


def _update(q, t: float):
    """(‖v_new - v_q‖, ‖v_{p*} - v_q‖, ‖v_new - v_{p*}‖), RMS under q_t, by quadrature over x_1."""
    interp = RectifiedFlow()
    ref = LinearReference(interp)
    x1 = torch.linspace(-8, 8, 4001, dtype=F64)[:, None]
    xs = torch.linspace(-8, 8, 801, dtype=F64)[:, None]
    tt = torch.full((len(xs),), t, dtype=F64)
    a, b = (c[0] for c in interp.coefficients(tt[:1])[:2])
    log_joint = q.log_prob(x1)[None, :] - 0.5 * ((xs - a * x1.T) / b) ** 2  # q(x_1) N(x_t; α x_1, β²), [X, G]
    post = torch.softmax(log_joint, 1)
    grad_g = (ref.score_data(x1) - P_STAR.score(x1)).squeeze(1)
    v_new = ref.velocity(xs, tt).squeeze(1) - 0.5 * interp.sigma(tt) ** 2 * ref.phi(tt, xs).squeeze(1) * (post @ grad_g)
    v_q, v_star = (GMMVelocity(m, interp)(xs, tt).squeeze(1) for m in (q, P_STAR))
    w = torch.softmax(torch.logsumexp(log_joint, 1), 0)  # q_t on the x grid
    rms = lambda d: float((w * d**2).sum().sqrt())  # noqa: E731
    return rms(v_new - v_q), rms(v_star - v_q), rms(v_new - v_star)


@pytest.mark.parametrize("t", TIMES)
def test_the_tilted_target_is_a_fixed_point(t):
    """Validates the quadrature: with q = p* the update returns v_{p*}."""
    assert _update(P_STAR, t)[2] < 1e-8


@pytest.mark.parametrize("t", TIMES)
def test_other_mode_weights_are_fixed_points_too(t):
    """q = p*'s modes weighted 0.8/0.2: v_q is far from v_{p*} at small t, and EAM's update leaves it
    where it is (moves it by under 1e-4 of the distance to v_{p*})."""
    moved, needed, _ = _update(_mixture([0.8, 0.2], 0.4), t)
    if t < 0.5:
        assert needed > 0.5
    assert moved < 1e-4 * max(needed, 1e-3)


@pytest.mark.parametrize("t", TIMES)
def test_wrong_mode_shapes_are_corrected(t):
    """Control with power: q = p*'s weights and means with std 0.6 instead of 0.4; the update moves
    v_q by at least the distance to v_{p*}."""
    moved, needed, _ = _update(_mixture([0.5, 0.5], 0.6), t)
    assert needed > 0.01 and moved > needed
