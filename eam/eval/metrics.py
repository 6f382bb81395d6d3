"""Metrics of sample sets: each reward's mean ± SE (the authors' PIL path where a reward has one), diversity, the
Fréchet distance to the base's samples and the energy distance to a tilted-law sample set (both in a classifier's
features), and sliced-W2 between point clouds (the Gaussian-mixture benchmark). `score` writes them for one set."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..io import write_json
from ..rewards import load_reward
from ..rewards.image import to_pil
from .samples import load_samples


def sliced_w2(x: torch.Tensor, y: torch.Tensor, n_proj: int = 512, seed: int = 0) -> float:
    """Sliced Wasserstein-2: sqrt of the mean over random unit directions θ of W2²(θᵀx, θᵀy),
    each 1-D W2² from sorted projections (equal sample sizes)."""
    if x.shape != y.shape:
        raise ValueError(f"sliced_w2 needs equal-size samples, got {tuple(x.shape)} and {tuple(y.shape)}")
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(x.shape[1], n_proj, generator=g, dtype=torch.float64)
    theta = theta / theta.norm(dim=0, keepdim=True)
    px, py = ((z.double() @ theta).T.contiguous().sort(1).values for z in (x, y))
    return float(((px - py) ** 2).mean().sqrt())


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


def mean_se(v: torch.Tensor) -> dict:
    v = v.double()
    return {"mean": float(v.mean()), "se": float(v.std() / math.sqrt(len(v))) if len(v) > 1 else 0.0}


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """‖μ_a - μ_b‖² + tr(C_a + C_b - 2 (C_a C_b)^{1/2}) between two feature sets."""
    from scipy import linalg

    a, b = a.astype(np.float64), b.astype(np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(ca @ cb)
    covmean = covmean.real if np.iscomplexobj(covmean) else covmean
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(ca + cb - 2 * covmean))


def diversity(x: torch.Tensor, per_prompt: int, cosine: bool = False) -> dict:
    """Mean pairwise distance among the samples of each prompt (L2, or 1 - cos of unit feature
    vectors); mean ± SE over prompts."""
    groups = x.flatten(1).double().view(-1, per_prompt, x[0].numel())
    d = 1 - groups @ groups.transpose(1, 2) if cosine else torch.cdist(groups, groups)
    n = per_prompt
    return mean_se(d.sum((1, 2)) / (n * (n - 1)))


def _in_chunks(fn, x, texts: list[str], chunk: int = 32) -> torch.Tensor:
    """fn(samples, their prompts) over chunks of the sample set, concatenated."""
    return torch.cat([fn(x[i:i + chunk], texts[i:i + chunk]) for i in range(0, len(x), chunk)])


def metric_values(reward, x, cond) -> torch.Tensor:
    """A reward on samples: the authors' evaluation path (PIL images) where the reward has one."""
    if hasattr(reward, "score_pil"):
        return _in_chunks(lambda xs, texts: reward.score_pil(to_pil(xs), texts), x, cond.texts)
    return reward(x, cond)


def feature_values(feat, x, cond) -> torch.Tensor:
    return _in_chunks(lambda xs, _: feat.features(xs), x, cond.texts)


def metric_table(metrics: dict, x, cond, where) -> dict[str, torch.Tensor]:
    """Per-sample values of every metric (name → weights path), each checked finite."""
    values = {}
    for name, path in metrics.items():
        r = metric_values(load_reward(name, path), x, cond)
        if not torch.isfinite(r).all():
            raise FloatingPointError(f"metric {name} is not finite on {where}; check the samples and weights")
        values[name] = r
    return values


@torch.no_grad()
def score(samples_path, base_samples_path, metrics: dict, features: tuple[str, str], out, pstar_path=None) -> dict:
    """All metrics of one sample set; `metrics` maps reward name → weights path (or None);
    `features` = (reward name, path) of the model whose features the Fréchet distance uses (and,
    for RGB images, the diversity: DreamSim is not available offline, so the fallback is the mean
    pairwise cosine distance of those features)."""
    x, cond, meta = load_samples(samples_path)
    xb, cond_b, _ = load_samples(base_samples_path)
    if cond.texts != cond_b.texts:
        raise ValueError(f"{samples_path} and {base_samples_path} were sampled from different prompt sets")
    result = {"samples": str(samples_path), "n": len(x), "guidance_scale": float(meta["guidance_scale"]),
              "features": features[0]}
    for name, r in metric_table(metrics, x, cond, samples_path).items():
        result[name] = mean_se(r)
    per_prompt = int(meta["per_prompt"])
    feat = load_reward(*features)
    fx, fb = (feature_values(feat, s, c) for s, c in ((x, cond), (xb, cond_b)))
    if pstar_path is not None:  # energy distance to a resampled p* set (`tilt_truth`)
        xp, cond_p, meta_p = load_samples(pstar_path)
        if cond_p.texts[::int(meta_p["per_prompt"])] != cond.texts[::per_prompt]:
            raise ValueError(f"{samples_path} and {pstar_path} were sampled from different prompt sets")
        result["distance_to_pstar"] = energy_distance_grouped(fx, feature_values(feat, xp, cond_p), per_prompt,
                                                                 int(meta_p["per_prompt"]))
        result["pstar"] = str(pstar_path)
    if x.dim() == 4 and x.shape[1] == 3:
        result["diversity"] = diversity(F.normalize(fx, dim=-1), per_prompt, cosine=True)
        result["diversity_metric"] = f"mean pairwise cosine distance of {features[0]} image features"
    else:
        result["diversity"] = diversity(x, per_prompt)
        result["diversity_metric"] = "mean pairwise L2 distance of the samples"
    result["fd_to_base"] = frechet_distance(fx.numpy(), fb.numpy())
    if cond.labels is not None:  # prompt accuracy under the held-out model where there is one
        result["accuracy"] = {n: mean_se((load_reward(n, p).net(x).argmax(-1) == cond.labels).float())
                              for n, p in metrics.items() if n.endswith("classifier")}
    write_json(out, result)
    return result
