"""Evaluation samples: fixed noise per evaluation prompt (`eval_batch`, shared by the curves of a run and the
final sample sets), Heun-ODE sample sets saved with their prompts (safetensors), and their reader."""
from __future__ import annotations

import json

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from ..io import atomic_path
from ..prompts import PromptBatch, load_prompt_set
from ..registry import lookup
from ..samplers import ode_sample


def eval_batch(records: list[dict], per_prompt: int, shape, stream: int = 0) -> tuple[torch.Tensor, PromptBatch]:
    """Fixed noise for evaluation: `per_prompt` draws from each record's own seed. `stream` > 0 gives
    other, independent draws (the base pool of the tilted-law estimate must not reuse evaluation noise)."""
    noise = [torch.randn(per_prompt, *shape, generator=torch.Generator().manual_seed(r["seed"] + 1_000_003 * stream))
             for r in records]
    rows = [r for r in records for _ in range(per_prompt)]
    return torch.cat(noise), PromptBatch.from_records(rows)


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
    from ..finetune import resolve_device

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
