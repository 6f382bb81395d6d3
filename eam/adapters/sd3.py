"""Stable Diffusion 3 / 3.5 (rectified flow, `SD3Transformer2DModel`, CLIP-L + CLIP-G + T5 text
encoders) as v(x, t, cond) on 16-channel latents.

diffusers' flow-matching convention is x_σ = (1 - σ) x_data + σ ε with σ = 1 at the noise and the
transformer predicting dx/dσ = ε - x_data at timestep 1000 σ. Ours is x_t = t x_1 + (1 - t) ε with
t = 1 at the data (method.md §1), so σ = 1 - t and v = dx/dt = -(transformer output). The
scheduler's shift only places its sampling steps (`sampling_grid`: by default the scheduler's own σ's,
so that K Euler steps of ours are the pipeline's K steps); the network's parametrisation is the same.
"""
from __future__ import annotations

import copy

import torch

from ..interpolants import RectifiedFlow
from ..registry import register
from .diffusers_common import DiffusersVelocity


@register("model", "sd3", domain="image")
class StableDiffusion3(DiffusersVelocity):
    pipeline_name = "StableDiffusion3Pipeline"
    denoiser_name = "transformer"

    @staticmethod
    def make_interpolant(scheduler):
        return RectifiedFlow()

    def sampling_grid(self, steps, device=None, dtype=None):
        """t = 1 - σ over the scheduler's σ's for `steps` steps (SD3: shift 3 puts more steps near the
        noise), or uniform with `time_grid: uniform`."""
        if self.options.time_grid == "uniform":
            return super().sampling_grid(steps, device, dtype)
        scheduler = copy.deepcopy(self.pipe.scheduler)  # set_timesteps changes the scheduler's state
        if getattr(scheduler.config, "use_dynamic_shifting", False):
            raise ValueError("this scheduler shifts its grid by resolution (use_dynamic_shifting); "
                             "set the model's time_grid: uniform")
        scheduler.set_timesteps(steps)
        dtype = torch.promote_types(dtype or torch.float32, torch.float32)
        return (1 - scheduler.sigmas.to(torch.float64)).to(device=device, dtype=dtype)

    def encode(self, texts):
        """Per prompt: the joint sequence (CLIP-L ⊕ CLIP-G penultimate states padded to T5's width,
        then the T5 states, or zeros without T5) and the pooled CLIP-L ⊕ CLIP-G projection."""
        dev = next(self.denoiser.parameters()).device
        seq, _, pooled, _ = self.pipe.encode_prompt(texts, None, None, device=dev, do_classifier_free_guidance=False,
                                                    max_sequence_length=self.options.max_sequence_length)
        return seq, pooled

    def predict(self, denoiser, x, t, emb):
        seq, pooled = emb
        out = denoiser(hidden_states=self.latents(x), timestep=(1 - t) * 1000, encoder_hidden_states=seq,
                       pooled_projections=pooled).sample
        return -out
