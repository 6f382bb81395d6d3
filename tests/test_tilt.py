"""The tilted-law ground truth on any base (docs/method.md §8) against closed forms: SNIS estimates and
their standard errors on a Gaussian mixture whose tilt is exact, the ESS of a Gaussian tilt, resampled p*
sets, and the energy distance with its floor."""
import math

import pytest
import torch

from eam.eval import truth as tilt
from eam.eval.metrics import energy_distance, energy_distance_grouped
from eam.gmm import GaussianMixture
from eam.eval.metrics import sliced_w2

F64 = torch.float64
C = torch.tensor([1.0, 1.0], dtype=F64)


def _mixture():
    return GaussianMixture([0.3, 0.25, 0.25, 0.2], [[-2.0, 2.0], [-0.6, 0.8], [0.9, -0.7], [2.2, -2.0]],
                           [[[0.64, 0.2], [0.2, 0.36]], [[0.25, 0.0], [0.0, 0.49]], [[0.16, -0.08], [-0.08, 0.25]],
                            [[0.04, 0.0], [0.0, 0.09]]])


def _exact_moments(mix: GaussianMixture):
    """E[cᵀx] and E[x_0²] of a mixture, in closed form."""
    mean = mix.mean()
    second = (mix.w * (mix.mu[:, 0] ** 2 + mix.C[:, 0, 0])).sum()
    return float(C @ mean), float(second)


def _estimate(mix, lam, P, N, gen):
    x = mix.sample(P * N, gen).view(P, N, 2)
    r = x @ C
    return tilt.truth(lam * r, {"reward": r, "x0_squared": x[..., 0] ** 2}), x, r


@pytest.mark.parametrize("lam", [0.0, 0.5, 1.0])
def test_snis_matches_the_exact_tilted_mixture(lam, gen):
    """Mean reward and a quadratic moment of p* within 3 SE of the closed form (4 prompts × 5000 samples)."""
    mix = _mixture()
    est, _, _ = _estimate(mix, lam, 4, 5000, gen)
    exact_r, exact_q = _exact_moments(mix.tilt_linear(C, lam))
    for name, exact in (("reward", exact_r), ("x0_squared", exact_q)):
        m = est["metrics"][name]
        assert abs(m["mean"] - exact) < 3 * m["se"], (name, m, exact)
    if lam > 0:  # the tilt moved them: the test has power
        base_r, _ = _exact_moments(mix)
        assert abs(exact_r - base_r) > 20 * est["metrics"]["reward"]["se"]


def test_snis_standard_error_is_calibrated(gen):
    """Over 60 independent pools, (estimate - exact) / SE has standard deviation about 1."""
    mix = _mixture()
    exact_r, _ = _exact_moments(mix.tilt_linear(C, 0.8))
    z = [(e["metrics"]["reward"]["mean"] - exact_r) / e["metrics"]["reward"]["se"]
         for e in (_estimate(mix, 0.8, 2, 1500, gen)[0] for _ in range(60))]
    z = torch.tensor(z)
    assert 0.7 < float(z.std()) < 1.35, z
    assert abs(float(z.mean())) < 0.5, z


@pytest.mark.parametrize("lam", [0.3, 0.7, 1.0])
def test_ess_of_a_gaussian_tilt(lam, gen):
    """x ~ N(0, 1), w ∝ e^{λx}: ESS / N → E[w]² / E[w²] = e^{-λ²}."""
    x = torch.randn(1, 200_000, generator=gen, dtype=F64)
    frac = float(tilt.ess(tilt.snis_weights(lam * x))[0]) / x.shape[1]
    assert frac == pytest.approx(math.exp(-lam**2), rel=0.03)


def test_resampled_set_is_a_sample_of_the_tilted_mixture(gen):
    """4000 draws resampled from a pool of 40000 base samples: sliced-W2 to exact p* samples within the
    bound the GMM benchmark uses (1.5 × the floor of two exact sets + 0.02); the base itself is far."""
    mix, lam = _mixture(), 1.0
    x = mix.sample(40_000, gen)
    idx = tilt.resample(tilt.snis_weights(lam * (x @ C))[None], 4000, gen)[0]
    target = mix.tilt_linear(C, lam)
    exact_a, exact_b = target.sample(4000, gen), target.sample(4000, gen)
    floor = sliced_w2(exact_a, exact_b)
    assert sliced_w2(x[idx], exact_a) <= 1.5 * floor + 0.02
    assert sliced_w2(x[:4000], exact_a) > 5 * (1.5 * floor + 0.02)


def _abs_diff_mean(d, v):
    """E|X - Y| for X - Y ~ N(d, v): the folded normal's mean."""
    s = math.sqrt(v)
    return s * math.sqrt(2 / math.pi) * math.exp(-d**2 / (2 * v)) + d * math.erf(d / (s * math.sqrt(2)))


def test_energy_distance_against_the_gaussian_closed_form(gen):
    """1-D N(0, 1) against N(0.5, 0.6²): 2E|X-Y| - E|X-X'| - E|Y-Y'| in closed form; and the floor (two
    samples of one law, size n each) has mean (2/n) E|X-X'| = (2/n)(2/√π)."""
    n = 3000
    x, y = torch.randn(n, 1, generator=gen, dtype=F64), 0.5 + 0.6 * torch.randn(n, 1, generator=gen, dtype=F64)
    exact = 2 * _abs_diff_mean(0.5, 1.36) - _abs_diff_mean(0, 2.0) - _abs_diff_mean(0, 0.72)
    assert energy_distance(x, y) == pytest.approx(exact, abs=0.01)
    m = 32
    floors = [energy_distance(torch.randn(m, 1, generator=gen, dtype=F64), torch.randn(m, 1, generator=gen, dtype=F64))
              for _ in range(400)]
    floors = torch.tensor(floors)
    expected = (2 / m) * 2 / math.sqrt(math.pi)
    assert abs(float(floors.mean()) - expected) < 3 * float(floors.std()) / 20, (float(floors.mean()), expected)
    assert (floors >= -1e-12).all()


def test_grouped_energy_distance_and_its_jackknife_se(gen):
    """Pooled over 10 prompts of 32 samples: the jackknife SE over prompts matches the spread of the distance
    over 150 independent replicates (within a factor 0.6–1.6), for a shifted pair and for one law (the floor)."""
    def draw(shift):
        x = torch.randn(320, 4, generator=gen, dtype=F64)
        return x + shift * torch.tensor([1.0, 0, 0, 0], dtype=F64), torch.randn(320, 4, generator=gen, dtype=F64)
    for shift in (0.0, 0.5):
        reps = [energy_distance_grouped(*draw(shift), 32, 32) for _ in range(150)]
        spread = float(torch.tensor([r["mean"] for r in reps]).std())
        jack = float(torch.tensor([r["se"] for r in reps]).mean())
        assert 0.6 < jack / spread < 1.6, (shift, jack, spread)
    far, floor = energy_distance_grouped(*draw(0.5), 32, 32), energy_distance_grouped(*draw(0.0), 32, 32)
    assert far["mean"] > floor["mean"] + 3 * far["se"]
