"""Evaluation: samples from fixed seeds per evaluation prompt, then every metric on them.

Metrics: each registered reward's mean (± standard error over samples), diversity (mean pairwise
distance between the samples of one prompt, averaged over prompts) and the distance to the base
(Fréchet distance between feature statistics of the samples and of the base model's samples, in a
classifier's feature space)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from .finetune import eval_batch, resolve_device
from .io import atomic_path, write_json
from .prompts import PromptBatch, load_prompt_set
from .registry import lookup
from .rewards import load_reward
from .rewards.image import to_pil
from .samplers import ode_sample


@torch.no_grad()
def sample(model_name: str, model_path, prompts_path, per_prompt: int, steps: int, guidance_scale: float, out,
           chunk: int = 256, model_options: dict | None = None, stream: int = 0):
    """Heun-ODE samples of `per_prompt` fixed seeds per prompt, saved with their prompts (safetensors);
    `stream` selects an independent noise stream (0: the evaluation noise)."""
    if per_prompt < 2:
        raise ValueError(f"--per-prompt must be at least 2 (diversity compares samples of one prompt), got {per_prompt}")
    if steps < 1:
        raise ValueError(f"--steps must be at least 1, got {steps}")
    model = lookup("model", model_name).load(model_path, guidance_scale=guidance_scale, **(model_options or {})).eval()
    device = resolve_device("auto")
    model.to(device)
    records = load_prompt_set(prompts_path)
    x0, cond = eval_batch(records, per_prompt, model.sample_shape, stream)
    parts = []
    for i in tqdm(range(0, len(x0), chunk), desc=f"sampling {model_path}", disable=len(x0) <= chunk):
        c = PromptBatch(cond.texts[i:i + chunk], None if cond.labels is None else cond.labels[i:i + chunk]).to(device)
        x = ode_sample(model, x0[i:i + chunk].to(device), steps, "heun", c)
        if hasattr(model, "decode"):  # latents → 8-bit RGB, as a saved PNG would hold them
            x = (model.decode(x) * 255).round().to(torch.uint8)
        parts.append(x.cpu())
    save_samples(out, torch.cat(parts), cond, {"per_prompt": str(per_prompt), "steps": str(steps),
                                               "guidance_scale": str(guidance_scale), "model": str(model_path),
                                               "stream": str(stream)})


def save_samples(out, x: torch.Tensor, cond: PromptBatch, meta: dict):
    """A sample set with its prompts (and labels) as safetensors, atomically."""
    tensors = {"images": x.contiguous()}
    if cond.labels is not None:
        tensors["labels"] = cond.labels.contiguous()
    with atomic_path(out) as tmp:
        save_file(tensors, tmp, metadata={"prompts": json.dumps(cond.texts), **meta})


def load_samples(path) -> tuple[torch.Tensor, PromptBatch, dict]:
    """Samples, their prompts and metadata; 8-bit RGB images come back as floats in [0, 1]."""
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata()
            x = f.get_tensor("images")
            if x.dtype == torch.uint8:
                x = x.float() / 255
            labels = f.get_tensor("labels") if "labels" in f.keys() else None
        cond = PromptBatch(json.loads(meta["prompts"]), labels)
        int(meta["per_prompt"])
    except Exception as e:
        raise ValueError(f"cannot read samples {path} ({type(e).__name__}); re-run the sampling rule") from None
    return x, cond, meta


def _mean_se(v: torch.Tensor) -> dict:
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
    return _mean_se(d.sum((1, 2)) / (n * (n - 1)))


def _in_chunks(fn, x, texts: list[str], chunk: int = 32) -> torch.Tensor:
    """fn(samples, their prompts) over chunks of the sample set, concatenated."""
    return torch.cat([fn(x[i:i + chunk], texts[i:i + chunk]) for i in range(0, len(x), chunk)])


def metric_values(reward, x, cond) -> torch.Tensor:
    """A reward on samples: the authors' evaluation path (PIL images) where the reward has one."""
    if hasattr(reward, "score_pil"):
        return _in_chunks(lambda xs, texts: reward.score_pil(to_pil(xs), texts), x, cond.texts)
    return reward(x, cond)


def _feature_values(feat, x, cond) -> torch.Tensor:
    return _in_chunks(lambda xs, _: feat.features(xs), x, cond.texts)


def _metric_table(metrics: dict, x, cond, where) -> dict[str, torch.Tensor]:
    """Per-sample values of every metric (name → weights path), each checked finite."""
    values = {}
    for name, path in metrics.items():
        r = metric_values(load_reward(name, path), x, cond)
        if not torch.isfinite(r).all():
            raise FloatingPointError(f"metric {name} is not finite on {where}; check the samples and weights")
        values[name] = r
    return values


@torch.no_grad()
def tilt_truth(pool_path, reward: tuple[str, str | None], lam: float, metrics: dict, features: tuple[str, str | None],
               per_prompt: int, base_samples_path, out, seed: int = 0) -> dict:
    """The tilted law p* ∝ p_base e^{λ r} from a pool of fresh base samples (docs/method.md §8):
    E_p*[metric] ± SE by SNIS over the whole pool, the ESS per prompt, and two p* sample sets of
    `per_prompt` per prompt resampled from the pool's two disjoint halves (`pstar_a`: the reference
    every run is compared with; `pstar_b`: the floor, the distance between two independent p* sets).
    `reward` is the tilt's reward (name, weights path); it need not be among `metrics`."""
    from . import tilt

    x, cond, meta = load_samples(pool_path)
    n_pool = int(meta["per_prompt"])
    if n_pool < 4:
        raise ValueError(f"{pool_path} has {n_pool} samples per prompt; the tilted-law pool needs many (e.g. 400)")
    P, half = len(x) // n_pool, n_pool // 2
    log_w = lam * _metric_table({reward[0]: reward[1]}, x, cond, pool_path)[reward[0]].view(P, n_pool)
    values = {k: v.view(P, n_pool) for k, v in _metric_table(metrics, x, cond, pool_path).items()}
    result = {"lam": lam, "reward": reward[0], "pool": str(pool_path), **tilt.truth(log_w, values)}
    if result["low_ess"]:
        print(f"warning: ESS / N = {result['ess_min_fraction']:.3f} < {tilt.ESS_WARN} for some prompt at λ = {lam:g}: "
              "the tilted-law estimate rests on few samples; draw a larger pool")
    g = torch.Generator().manual_seed(seed)
    grouped = x.view(P, n_pool, *x.shape[1:])
    texts = [cond.texts[i * n_pool] for i in range(P) for _ in range(per_prompt)]
    labels = None if cond.labels is None else cond.labels.view(P, n_pool)[:, 0].repeat_interleave(per_prompt)
    names = ("pstar_a", "pstar_b")
    for name, lo in zip(names, (0, half)):
        w = tilt.snis_weights(log_w[:, lo:lo + half])
        idx = tilt.resample(w, per_prompt, g) + lo
        xs = torch.stack([grouped[p, idx[p]] for p in range(P)]).flatten(0, 1)
        xs = (xs * 255).round().to(torch.uint8) if xs.dim() == 4 and xs.shape[1] == 3 else xs
        save_samples(Path(out) / f"{name}.safetensors", xs, PromptBatch(texts, labels),
                     {"per_prompt": str(per_prompt), "steps": meta.get("steps", ""), "model": meta.get("model", ""),
                      "guidance_scale": meta.get("guidance_scale", "1.0"), "tilt": f"lam={lam:g} reward={reward[0]}"})
    feat = load_reward(*features)
    batch = PromptBatch(texts, labels)
    fa, fb = (_feature_values(feat, load_samples(Path(out) / f"{n}.safetensors")[0], batch) for n in names)
    xb, cond_b, meta_b = load_samples(base_samples_path)
    if cond_b.texts[::int(meta_b["per_prompt"])] != texts[::per_prompt]:
        raise ValueError(f"{base_samples_path} and {pool_path} were sampled from different prompt sets")
    fbase = _feature_values(feat, xb, cond_b)
    result.update({
        "features": features[0], "resampled_per_prompt": per_prompt,
        "ess_halves": [tilt.ess(tilt.snis_weights(log_w[:, lo:lo + half])).tolist() for lo in (0, half)],
        # energy distance in feature space, pooled over prompts, ± jackknife SE over prompts
        "distance_floor": tilt.energy_distance_grouped(fb, fa, per_prompt, per_prompt),
        "base_distance_to_pstar": tilt.energy_distance_grouped(fbase, fa, int(meta_b["per_prompt"]), per_prompt)})
    write_json(Path(out) / "truth.json", result)
    return result


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
    for name, r in _metric_table(metrics, x, cond, samples_path).items():
        result[name] = _mean_se(r)
    per_prompt = int(meta["per_prompt"])
    feat = load_reward(*features)
    fx, fb = (_feature_values(feat, s, c) for s, c in ((x, cond), (xb, cond_b)))
    if pstar_path is not None:  # energy distance to a resampled p* set (`tilt_truth`)
        from .tilt import energy_distance_grouped

        xp, cond_p, meta_p = load_samples(pstar_path)
        if cond_p.texts[::int(meta_p["per_prompt"])] != cond.texts[::per_prompt]:
            raise ValueError(f"{samples_path} and {pstar_path} were sampled from different prompt sets")
        result["distance_to_pstar"] = energy_distance_grouped(fx, _feature_values(feat, xp, cond_p), per_prompt,
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
        result["accuracy"] = {n: _mean_se((load_reward(n, p).net(x).argmax(-1) == cond.labels).float())
                              for n, p in metrics.items() if n.endswith("classifier")}
    write_json(out, result)
    return result
