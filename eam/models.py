"""The model interface v(x, t, cond) shared by toy and diffusers models, with an NFE counter."""
from __future__ import annotations

import math

import torch
from torch import nn

from .interpolants import Interpolant


class VelocityModel(nn.Module):
    """A velocity field on an interpolant. Calling it counts one function evaluation per row.

    Subclasses implement `velocity(x, t, cond)` with t of shape [B]. `nfe` is the number of
    sample-evaluations so far (a batch of B counts B), so `nfe / B` is NFEs per sample.
    """

    def __init__(self, interpolant: Interpolant):
        super().__init__()
        self.interpolant = interpolant
        self.nfe = 0

    def forward(self, x: torch.Tensor, t, cond=None) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0])
        self.nfe += x.shape[0]
        return self.velocity(x, t, cond)

    def velocity(self, x, t, cond=None):
        raise NotImplementedError

    guidance_scale = 1.0  # classifier-free guidance g of conditional models (`guided`); 1: none

    @property
    def cost(self) -> int:
        """Network forwards per sample-evaluation (2 where classifier-free guidance runs v_c and v_∅)."""
        return 1 if self.guidance_scale == 1.0 else 2

    def guided(self, net, x, t, cond, null, stack):
        """Classifier-free guidance in diffusers' convention, v = v_∅ + g (v_c - v_∅), g = `guidance_scale`, from one
        call of `net(x, t, conditioning)` on the conditional and null rows stacked (`stack(cond, null())`);
        g = 1: the conditional rows alone, one call (`null` is then never built)."""
        if self.guidance_scale == 1.0:
            return net(x, t, cond)
        v_c, v_u = net(torch.cat([x, x]), torch.cat([t, t]), stack(cond, null())).chunk(2)
        return v_u + self.guidance_scale * (v_c - v_u)

    def sampling_grid(self, steps: int, device=None, dtype=None) -> torch.Tensor:
        """The times t_0 = 0 < … < t_N = 1 the ODE sampler steps through: uniform, unless the model's own
        scheduler places them (SD3's shifted grid). At least float32 (bf16 would quantise t by ~4e-3 near 1)."""
        dtype = torch.promote_types(dtype or torch.float32, torch.float32)
        return torch.linspace(0.0, 1.0, steps + 1, device=device, dtype=dtype)

    @classmethod
    def pair(cls, path, **options) -> tuple["VelocityModel", "VelocityModel"]:
        """The frozen base and the trainable model loaded from `path`: by default two copies.
        Adapters that can share weights (LoRA: the base is the adapter switched off) override it."""
        base = cls.load(path, **options).requires_grad_(False).eval()
        return base, cls.load(path, **options).train()

    # -- what fine-tuning trains (all parameters by default; LoRA adapters override) -------------
    def trainable_parameters(self):
        return [p for p in self.parameters() if p.requires_grad]

    def trainable_state(self) -> dict:
        return {k: p.detach().clone() for k, p in self.named_parameters() if p.requires_grad}

    def load_trainable_state(self, state: dict):
        own = dict(self.named_parameters())
        missing = {k for k, p in own.items() if p.requires_grad} ^ set(state)
        if missing:
            raise ValueError(f"checkpoint does not match the model's trainable parameters ({sorted(missing)[0]}, ...)")
        with torch.no_grad():
            for k, v in state.items():
                own[k].copy_(v)


class TimeEmbedding(nn.Module):
    """Fourier features of t at geometric frequencies, plus the features log t and log(1 - t),
    which resolve the fast changes of a velocity field near the data end t → 1."""

    def __init__(self, n_freq: int = 8, max_freq: float = 64.0, eps: float = 1e-3):
        super().__init__()
        self.register_buffer("freqs", math.pi * torch.logspace(0, math.log10(max_freq), n_freq))
        self.eps = eps
        self.dim = 2 * n_freq + 3

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        t = t[:, None]
        ang = t * self.freqs
        logs = [torch.log(t + self.eps), torch.log(1 - t + self.eps)]
        return torch.cat([t, *logs, ang.sin(), ang.cos()], dim=1)


class MLP(nn.Module):
    """x ⊕ time features → hidden layers (SiLU) → output; the last layer starts at zero."""

    def __init__(self, dim: int, hidden: int = 256, depth: int = 3, time_embedding: TimeEmbedding | None = None):
        super().__init__()
        self.time = time_embedding or TimeEmbedding()
        layers, width = [], dim + self.time.dim
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, dim)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x, t):
        return self.head(self.body(torch.cat([x, self.time(t)], dim=1)))


class ResidualVelocity(VelocityModel):
    """Fine-tuned model v_θ = v_base + f_θ(x, t) with f_θ zero at initialisation (so v_θ = v_base)."""

    def __init__(self, base: VelocityModel, residual: nn.Module):
        super().__init__(base.interpolant)
        self.base = base.requires_grad_(False)
        self.residual = residual

    def velocity(self, x, t, cond=None):
        return self.base.velocity(x, t, cond) + self.residual(x, t)

    def trainable_parameters(self):
        return list(self.residual.parameters())
