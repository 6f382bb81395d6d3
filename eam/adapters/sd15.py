"""Stable Diffusion 1.5 (ε-prediction `UNet2DConditionModel` on the DDPM "scaled linear" schedule,
one CLIP text encoder) as v(x, t, cond) on 4-channel latents.

The scheduler's betas give the variance-preserving interpolant; training timestep τ sits at
t = 1 - τ/(T - 1) (`VariancePreserving`). The UNet is called at the continuous τ, and its output
(ε, or v / x_0 for checkpoints trained with `v_prediction` / `sample`) becomes the posterior means
(D, N) and then v = α̇ D + β̇ N (method.md §1).
"""
from __future__ import annotations

import torch

from ..interpolants import VariancePreserving
from ..registry import register
from .diffusers_common import DiffusersVelocity

PREDICTION_KINDS = {"epsilon": "epsilon", "sample": "sample", "v_prediction": "v_prediction"}


@register("model", "sd15", domain="image")
class StableDiffusion15(DiffusersVelocity):
    pipeline_name = "StableDiffusionPipeline"
    denoiser_name = "unet"

    @classmethod
    def pipeline_kwargs(cls):
        return {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}

    @staticmethod
    def make_interpolant(scheduler):
        c = scheduler.config
        if c.prediction_type not in PREDICTION_KINDS:
            raise ValueError(f"unsupported prediction_type {c.prediction_type!r} in the scheduler config")
        return VariancePreserving(c.beta_start, c.beta_end, c.beta_schedule, c.num_train_timesteps)

    def sampling_grid(self, steps, device=None, dtype=None):
        """t = 1 - τ/(T - 1) over DDIM's "trailing" timesteps for `steps` steps, then t = 1 (ᾱ at
        timestep 0, DDIM's last target when set_alpha_to_one is false, as in SD1.5), or uniform with
        `time_grid: uniform`. With `ddim` steps this is StableDiffusionPipeline + DDIMScheduler
        (trailing) whenever `steps` divides T; otherwise diffusers steps to τ - T // steps, off its grid."""
        if self.options.time_grid == "uniform":
            return super().sampling_grid(steps, device, dtype)
        from diffusers import DDIMScheduler

        sched = DDIMScheduler.from_config(self.pipe.scheduler.config, timestep_spacing="trailing")
        sched.set_timesteps(steps)
        tau = torch.cat([sched.timesteps.to(torch.float64), torch.zeros(1, dtype=torch.float64)])
        dtype = torch.promote_types(dtype or torch.float32, torch.float32)
        return (1 - tau / (self.interpolant.T - 1)).to(device=device, dtype=dtype)

    def encode(self, texts):
        dev = next(self.denoiser.parameters()).device
        emb, _ = self.pipe.encode_prompt(texts, dev, 1, False)
        return (emb,)

    def predict(self, denoiser, x, t, emb):
        interp = self.interpolant
        out = denoiser(self.latents(x), interp.timestep(t), encoder_hidden_states=emb[0]).sample.float()
        kind = self.pipe.scheduler.config.prediction_type
        if kind == "v_prediction":  # diffusers' v = α ε - β x_0  →  x_0 = α x - β v
            a, b = (c.view(-1, 1, 1, 1) for c in interp.coefficients(t)[:2])
            out = a * x - b * out
            kind = "sample"
        D, N = interp.to_posterior_means(out, x, t, kind)
        return interp.velocity(D, N, t)
