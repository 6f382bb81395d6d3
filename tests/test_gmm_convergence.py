"""method.md §7.6 and issue acceptance: on the non-stress 2-D cases, AM and EAM (`endpoint` at δ = 0.05,
`exact`, and `corrected` on mix2d_linear) fine-tuned with the `eam gmm` defaults reach sliced-W2 ≤ 1.5 × floor + 0.02 against exact
samples of the tilted mixture; `bridge` stays clearly off (its documented bias). Minutes each: marked slow,
run in CI."""
import json
from pathlib import Path

import pytest

from eam.cli import main

ROOT = Path(__file__).resolve().parents[1]
CASES = ["mix2d_linear", "mix2d_quadratic"]


def _run(tmp_path, case, *args):
    # only the final evaluation (a quarter of a run's time): the training and its RNG are the same
    out = tmp_path / "result.json"
    main(["gmm", "--case", str(ROOT / "config" / "gmm" / f"{case}.yaml"), *args, "--set", "eval_every=100000",
          "--out", str(out), "--quiet"])
    return json.loads(out.read_text())


def _bound(res):
    return 1.5 * res["sliced_w2_floor"] + 0.02


VARIANTS = {"am": ["--method", "am"],
            "eam-endpoint": ["--method", "eam", "--base-score", "endpoint", "--delta", "0.05"],
            "eam-exact": ["--method", "eam", "--base-score", "exact"],
            "eam-residual": ["--method", "eam", "--base-score", "residual", "--delta", "0.05"],
            "eam-corrected": ["--method", "eam", "--base-score", "corrected", "--delta", "0.05"]}
# Measured (README, "Ground truth", "Why EAM moves mass between separated modes slowly"): on
# mix2d_quadratic EAM fixes the modes' shapes but stalls on their relative weights (sliced-W2 0.125 at
# 800 iterations, 0.093 at 2400, bound 0.088). Strict: the day it passes, this marker must go. Left out
# of the default run (minutes of CI for a known answer): `pytest -m known_gap` runs them.
EAM_QUADRATIC_SLOW = [pytest.mark.known_gap, pytest.mark.xfail(strict=True, reason=(
    "EAM corrects mode weights slowly on mix2d_quadratic: with the modes' shapes right, any weights are an EAM "
    "fixed point (tests/test_eam_fixed_points.py)"))]


# Measured (docs/method.md §5.4): `residual` stalls at a network whose endpoint score matches the tilt while its
# flow has not moved the mass: mix2d_linear sliced-W2 0.505 after 800 iterations (bound 0.115, base 0.542), mean
# reward 0.239 against 0.907; with eam.consistency 0.1 / 0.3 of the endpoint target mixed in, 0.310 / 0.212.
EAM_RESIDUAL_STALLS = [pytest.mark.known_gap, pytest.mark.xfail(strict=True, reason=(
    "residual's fixed points include networks inconsistent with their own flow (docs/method.md §5.4)"))]


def _marks(case, variant):
    if variant == "eam-corrected":
        return [pytest.mark.slow(minutes=5)]  # its correction fit is 3x the run
    if variant == "eam-residual":
        return EAM_RESIDUAL_STALLS
    return EAM_QUADRATIC_SLOW if case == "mix2d_quadratic" and variant != "am" else []


@pytest.mark.slow(minutes=3.5)
@pytest.mark.parametrize("case,variant", [
    pytest.param(case, variant, id=f"{case}-{variant}", marks=_marks(case, variant))
    for case in CASES for variant in VARIANTS
    if (case, variant) not in {("mix2d_quadratic", "am"),  # AM: below
                               ("mix2d_quadratic", "eam-corrected")}])  # its correction fit triples the cost; not measured
def test_reaches_the_exact_tilted_mixture(tmp_path, case, variant):
    args = VARIANTS[variant]
    res = _run(tmp_path, case, *args)
    assert res["sliced_w2_base"] > 3 * _bound(res), "the case must be far from its base to mean anything"
    assert res["sliced_w2"] <= _bound(res), (res["sliced_w2"], res["sliced_w2_floor"])


@pytest.mark.slow(minutes=1.7)
@pytest.mark.parametrize("case", ["mix2d_linear"])  # its bias in closed form: test_gaussian_tilt.py
def test_bridge_stays_off(tmp_path, case):
    """Half the default iterations suffice to see it: bridge is already past p* there (measured: mean reward
    1.358 against the exact 0.907, sliced-W2 0.368 against the bound 0.115), a bias, not a short run."""
    res = _run(tmp_path, case, "--method", "eam", "--base-score", "bridge", "--iters", "400")
    assert res["sliced_w2"] > 2 * _bound(res), (res["sliced_w2"], res["sliced_w2_floor"])
    assert res["reward_mean"] > res["reward_mean_exact"] + 0.2, (res["reward_mean"], res["reward_mean_exact"])


SMALL_MODE = 3  # the component at (2.2, -2) of mix2d_quadratic: weight 0.20 in the base, 0.131 under p*


@pytest.mark.slow(minutes=3.5)
@pytest.mark.parametrize("variant", ["am", "eam-endpoint"])
def test_mode_weights_on_mix2d_quadratic_am_reaches_eam_stays_off(tmp_path, variant):
    """Issue 2's decision, pinned: on mix2d_quadratic the tilt must move mass out of the small mode. AM
    reaches p* (sliced-W2 bound, and that mode's weight within 0.025 of exact; measured 0.146 against
    0.131), EAM (endpoint) stays off by at least 0.025 (measured 0.168: it closes under half of the weight
    gap; once the modes' shapes are right any weights are an EAM fixed point, tests/test_eam_fixed_points.py).
    One method per test, so the two run side by side."""
    res = _run(tmp_path, "mix2d_quadratic", *VARIANTS[variant])
    exact, weight = res["component_weights_exact"][SMALL_MODE], res["component_weights"][SMALL_MODE]
    if variant == "am":
        assert res["sliced_w2"] <= _bound(res), (res["sliced_w2"], res["sliced_w2_floor"])
        assert abs(weight - exact) < 0.025, res["component_weights"]
    else:
        assert 0.025 <= weight - exact < 0.2 - exact, res["component_weights"]
