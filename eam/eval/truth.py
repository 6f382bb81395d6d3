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

from pathlib import Path

import torch

from ..io import write_json
from ..prompts import PromptBatch
from ..rewards import load_reward
from .metrics import energy_distance_grouped, feature_values, metric_table
from .samples import load_samples, save_samples

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


@torch.no_grad()
def tilt_truth(pool_path, reward: tuple[str, str | None], lam: float, metrics: dict, features: tuple[str, str | None],
               per_prompt: int, base_samples_path, out, seed: int = 0) -> dict:
    """The tilted law p* ∝ p_base e^{λ r} from a pool of fresh base samples (docs/method.md §8):
    E_p*[metric] ± SE by SNIS over the whole pool, the ESS per prompt, and two p* sample sets of
    `per_prompt` per prompt resampled from the pool's two disjoint halves (`pstar_a`: the reference
    every run is compared with; `pstar_b`: the floor, the distance between two independent p* sets).
    `reward` is the tilt's reward (name, weights path); it need not be among `metrics`."""
    x, cond, meta = load_samples(pool_path)
    n_pool = int(meta["per_prompt"])
    if n_pool < 4:
        raise ValueError(f"{pool_path} has {n_pool} samples per prompt; the tilted-law pool needs many (e.g. 400)")
    P, half = len(x) // n_pool, n_pool // 2
    log_w = lam * metric_table({reward[0]: reward[1]}, x, cond, pool_path)[reward[0]].view(P, n_pool)
    values = {k: v.view(P, n_pool) for k, v in metric_table(metrics, x, cond, pool_path).items()}
    result = {"lam": lam, "reward": reward[0], "pool": str(pool_path), **truth(log_w, values)}
    if result["low_ess"]:
        print(f"warning: ESS / N = {result['ess_min_fraction']:.3f} < {ESS_WARN} for some prompt at λ = {lam:g}: "
              "the tilted-law estimate rests on few samples; draw a larger pool")
    g = torch.Generator().manual_seed(seed)
    grouped = x.view(P, n_pool, *x.shape[1:])
    texts = [cond.texts[i * n_pool] for i in range(P) for _ in range(per_prompt)]
    labels = None if cond.labels is None else cond.labels.view(P, n_pool)[:, 0].repeat_interleave(per_prompt)
    names = ("pstar_a", "pstar_b")
    for name, lo in zip(names, (0, half)):
        w = snis_weights(log_w[:, lo:lo + half])
        idx = resample(w, per_prompt, g) + lo
        xs = torch.stack([grouped[p, idx[p]] for p in range(P)]).flatten(0, 1)
        xs = (xs * 255).round().to(torch.uint8) if xs.dim() == 4 and xs.shape[1] == 3 else xs
        save_samples(Path(out) / f"{name}.safetensors", xs, PromptBatch(texts, labels),
                     {"per_prompt": str(per_prompt), "steps": meta.get("steps", ""), "model": meta.get("model", ""),
                      "guidance_scale": meta.get("guidance_scale", "1.0"), "tilt": f"lam={lam:g} reward={reward[0]}"})
    feat = load_reward(*features)
    batch = PromptBatch(texts, labels)
    fa, fb = (feature_values(feat, load_samples(Path(out) / f"{n}.safetensors")[0], batch) for n in names)
    xb, cond_b, meta_b = load_samples(base_samples_path)
    if cond_b.texts[::int(meta_b["per_prompt"])] != texts[::per_prompt]:
        raise ValueError(f"{base_samples_path} and {pool_path} were sampled from different prompt sets")
    fbase = feature_values(feat, xb, cond_b)
    result.update({
        "features": features[0], "resampled_per_prompt": per_prompt,
        "ess_halves": [ess(snis_weights(log_w[:, lo:lo + half])).tolist() for lo in (0, half)],
        # energy distance in feature space, pooled over prompts, ± jackknife SE over prompts
        "distance_floor": energy_distance_grouped(fb, fa, per_prompt, per_prompt),
        "base_distance_to_pstar": energy_distance_grouped(fbase, fa, int(meta_b["per_prompt"]), per_prompt)})
    write_json(Path(out) / "truth.json", result)
    return result
