"""Evaluation: samples from fixed seeds per evaluation prompt, then every metric on them.

Metrics: each registered reward's mean (± standard error over samples), diversity (mean pairwise
distance between the samples of one prompt, averaged over prompts) and the distance to the base
(Fréchet distance between feature statistics of the samples and of the base model's samples, in a
classifier's feature space)."""
from __future__ import annotations

import json
import math

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from . import adapters  # noqa: F401  (registers the model adapters)
from .finetune import eval_batch, resolve_device
from .io import atomic_path, write_json
from .prompts import PromptBatch, load_prompt_set
from .registry import lookup
from .rewards import load_reward
from .rewards.image import to_pil
from .samplers import ode_sample


@torch.no_grad()
def sample(model_name: str, model_path, prompts_path, per_prompt: int, steps: int, guidance_scale: float, out,
           chunk: int = 256, model_options: dict | None = None):
    """Heun-ODE samples of `per_prompt` fixed seeds per prompt, saved with their prompts (safetensors)."""
    if per_prompt < 2:
        raise ValueError(f"--per-prompt must be at least 2 (diversity compares samples of one prompt), got {per_prompt}")
    model = lookup("model", model_name).load(model_path, guidance_scale=guidance_scale, **(model_options or {})).eval()
    device = resolve_device("auto")
    model.to(device)
    records = load_prompt_set(prompts_path)
    x0, cond = eval_batch(records, per_prompt, model.sample_shape)
    parts = []
    for i in tqdm(range(0, len(x0), chunk), desc=f"sampling {model_path}", disable=len(x0) <= chunk):
        c = PromptBatch(cond.texts[i:i + chunk], None if cond.labels is None else cond.labels[i:i + chunk]).to(device)
        x = ode_sample(model, x0[i:i + chunk].to(device), steps, "heun", c)
        if hasattr(model, "decode"):  # latents → 8-bit RGB, as a saved PNG would hold them
            x = (model.decode(x) * 255).round().to(torch.uint8)
        parts.append(x.cpu())
    tensors = {"images": torch.cat(parts).contiguous()}
    if cond.labels is not None:
        tensors["labels"] = cond.labels
    meta = {"prompts": json.dumps(cond.texts), "per_prompt": str(per_prompt), "steps": str(steps),
            "guidance_scale": str(guidance_scale), "model": str(model_path)}
    with atomic_path(out) as tmp:
        save_file(tensors, tmp, metadata=meta)


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


@torch.no_grad()
def score(samples_path, base_samples_path, metrics: dict, features: tuple[str, str], out) -> dict:
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
    for name, path in metrics.items():
        r = metric_values(load_reward(name, path), x, cond)
        if not torch.isfinite(r).all():
            raise FloatingPointError(f"metric {name} is not finite on {samples_path}; check the samples and weights")
        result[name] = _mean_se(r)
    per_prompt = int(meta["per_prompt"])
    feat = load_reward(*features)
    fx, fb = (_in_chunks(lambda xs, _: feat.features(xs), s, c.texts) for s, c in ((x, cond), (xb, cond_b)))
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
