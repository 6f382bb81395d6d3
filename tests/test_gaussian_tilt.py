"""method.md §7.5: 1-D Gaussian base N(0, s0²), linear reward c: the tilted law is N(s0²λc, s0²).
AM and EAM (endpoint, exact) must reach that mean; `bridge` must land on its own, biased fixed
point, which for a Gaussian base is computed here by quadrature."""
import math

import pytest
from scipy.integrate import quad

from eam.bench_gmm import GMMTrainConfig, parse_case, run

S0, C, LAM = 0.5, 1.0, 2.0
EXACT_MEAN = S0**2 * LAM * C  # 0.5


def _case(s0=S0):
    return parse_case({"dim": 1, "components": [{"weight": 1.0, "mean": [0.0], "cov": [[s0**2]]}],
                       "reward": {"type": "linear", "c": [C]}, "lambda": LAM}, name="gauss1d")


def _run(method, iters, **kw):
    # a 64-wide, 2-layer residual: the 1-D tilt needs no more (AM 2.8 min instead of over 5 at the 2-D default
    # 256 x 3, same results: AM mean 0.484, endpoint 0.500, exact 0.495, bridge 1.205 against 1.209)
    cfg = GMMTrainConfig(iters=iters, eval_every=iters, n_eval=4000, hidden=64, depth=2)
    for k, v in kw.items():
        setattr(cfg.am if method == "am" else cfg.eam, k, v)
    return run(_case(), method, cfg, seed=0, progress=False)


def bridge_fixed_point_mean(s0: float) -> float:
    """The `bridge` target is v_base + (σ²/2)Φ_ref λc, a shift δ(t) = λc(1-t)/(t² + (1-t)²) of the base
    velocity (rectified flow, reference N(0, 1)). A Gaussian base flow is linear with Jacobian
    J(t→1) = s0 / sqrt(t²s0² + (1-t)²), so the endpoint mean is ∫ J(t→1) δ(t) dt."""
    integrand = lambda t: s0 / math.sqrt(t**2 * s0**2 + (1 - t) ** 2) * (1 - t) / (t**2 + (1 - t) ** 2)  # noqa: E731
    return LAM * C * quad(integrand, 0, 1)[0]


def test_bridge_formula_is_exact_for_a_standard_normal_base():
    """Sanity of the quadrature above: with s0 = 1 the bridge is exact, so it must give s0²λc."""
    assert bridge_fixed_point_mean(1.0) == pytest.approx(LAM * C, rel=1e-6)


# AM's fixed point carries the O(h) bias of its Euler–Maruyama discretisation: measured mean 0.466 with
# N = 40 steps and 0.484 with N = 100 (gap 0.031 → 0.013, first order); N = 100 here. Its 600 iterations are
# needed too: 400 leave it at 0.471.
@pytest.mark.slow(minutes=0.4)
@pytest.mark.parametrize("method,kw,iters", [
    pytest.param("am", {"n_steps": 100, "n_last": 25, "n_random": 25}, 600, marks=pytest.mark.slow(minutes=3)),
    ("eam", {"base_score": "exact"}, 500),
    ("eam", {"base_score": "endpoint", "delta": 0.05}, 500),
])
def test_am_and_eam_reach_the_tilted_mean(method, kw, iters):
    res = _run(method, iters, **kw)
    # 4000 samples of std 0.5: standard error of the mean 0.008; allow the fine-tuning error on top
    assert res["reward_mean_exact"] == pytest.approx(EXACT_MEAN, abs=0.03)
    assert res["reward_mean"] == pytest.approx(EXACT_MEAN, abs=0.03)
    assert res["sliced_w2"] <= 1.5 * res["sliced_w2_floor"] + 0.02


def test_bridge_is_biased_when_the_base_is_not_the_reference():
    res = _run("eam", 500, base_score="bridge")
    biased = bridge_fixed_point_mean(S0)
    assert abs(biased - EXACT_MEAN) > 0.1  # the documented bias is large here ...
    assert res["reward_mean"] == pytest.approx(biased, abs=0.03)  # ... and bridge lands on it
