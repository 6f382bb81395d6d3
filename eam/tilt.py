"""Ground truth on any base: the tilted law p* ∝ p_base e^{λ r} by self-normalised importance
sampling (SNIS) of fresh base samples, per prompt (docs/method.md §8).

For a prompt with base samples x_1..x_N and weights w_i ∝ e^{λ r(x_i)}, normalised to sum 1:
    E_p*[f] ≈ Σ_i w_i f(x_i),   SE² ≈ Σ_i w_i² (f(x_i) - E_p*[f])²   (the delta-method SE of SNIS),
    ESS = 1 / Σ_i w_i²  (N when the tilt is flat, 1 when one sample carries all the weight).
A benchmark averages its metrics over prompts with equal weight, so does the truth: the mean over
prompts of the per-prompt estimates, SE² = Σ_p SE_p² / P². Resampling the pool by its weights gives a
sample set of p* (multinomial, with replacement): the reference for the distance to the tilted law.
"""
from __future__ import annotations

import torch

ESS_WARN = 0.1  # ESS / N below this: the estimate rests on few samples; flagged in every table


def snis_weights(log_w: torch.Tensor) -> torch.Tensor:
    """Normalised weights per row of `log_w` ([P, N]: prompts × samples), in float64."""
    return torch.softmax(log_w.double(), dim=-1)


def ess(w: torch.Tensor) -> torch.Tensor:
    """Effective sample size 1 / Σ w² per row of normalised weights."""
    return 1.0 / w.pow(2).sum(-1)


def tilted_mean(values: torch.Tensor, w: torch.Tensor) -> dict:
    """E_p*[f] ± SE from per-sample values [P, N] and normalised weights [P, N]: per prompt, then
    the mean over prompts (equal weight, as the evaluation averages them)."""
    f = values.double()
    mu = (w * f).sum(-1)
    var = (w.pow(2) * (f - mu[:, None]).pow(2)).sum(-1)
    P = f.shape[0]
    return {"mean": float(mu.mean()), "se": float(var.sum().sqrt() / P),
            "per_prompt": mu.tolist()}


def resample(w: torch.Tensor, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Indices [P, n] of n draws per prompt from the pool, with probabilities w (with replacement)."""
    return torch.multinomial(w.float(), n, replacement=True, generator=generator)


def truth(log_w: torch.Tensor, metrics: dict[str, torch.Tensor]) -> dict:
    """The tilted-law value of every metric (each a [P, N] tensor of per-sample values) with its SE,
    and the ESS per prompt; `low_ess` when some prompt's ESS / N is under ESS_WARN."""
    w = snis_weights(log_w)
    e = ess(w)
    N = log_w.shape[-1]
    out = {name: tilted_mean(v, w) for name, v in metrics.items()}
    flat = torch.full_like(w, 1.0 / N)
    frac = float(e.min() / N)
    return {"metrics": out, "base_metrics": {name: tilted_mean(v, flat) for name, v in metrics.items()},
            "ess": e.tolist(), "ess_min_fraction": frac, "n_per_prompt": N, "low_ess": frac < ESS_WARN}


def energy_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """Energy distance between the empirical laws of x [n, d] and y [m, d]:
    2 E‖x - y‖ - E‖x - x'‖ - E‖y - y'‖ (V-statistics, so it is ≥ 0 and its value for two samples of
    one law, the floor, is positive and shrinks as 1/n)."""
    x, y = x.flatten(1).double(), y.flatten(1).double()
    return float(2 * torch.cdist(x, y).mean() - torch.cdist(x, x).mean() - torch.cdist(y, y).mean())


def energy_distance_grouped(fx: torch.Tensor, fy: torch.Tensor, nx: int, ny: int) -> dict:
    """Energy distance between two sample sets pooled over prompts (rows grouped by prompt, nx (ny) per
    prompt, prompts in the same order), ± its jackknife SE over prompts (each prompt's rows left out of
    both sets in turn). Pooling keeps the floor (∝ 1/n) small enough to see a drift that a per-prompt
    distance on a few dozen samples would drown."""
    gx, gy = fx.view(-1, nx, *fx.shape[1:]), fy.view(-1, ny, *fy.shape[1:])
    P = gx.shape[0]
    if gy.shape[0] != P:
        raise ValueError(f"energy distance: {P} prompts against {gy.shape[0]}")
    full = energy_distance(gx.flatten(0, 1), gy.flatten(0, 1))
    if P < 2:
        return {"mean": full, "se": 0.0}
    keep = lambda g, p: torch.cat([g[:p], g[p + 1:]]).flatten(0, 1)  # noqa: E731
    loo = torch.tensor([energy_distance(keep(gx, p), keep(gy, p)) for p in range(P)], dtype=torch.float64)
    return {"mean": full, "se": float(((P - 1) / P * (loo - loo.mean()).pow(2).sum()).sqrt())}
