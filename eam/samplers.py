"""Samplers: Euler and Heun ODE of a velocity field; the memoryless SDE by Euler–Maruyama or DDPM posterior steps (method.md §2, §3)."""
from __future__ import annotations

import torch

from .interpolants import bcast
from .models import VelocityModel


def time_grid(steps: int, device=None, dtype=None) -> torch.Tensor:
    """The uniform grid t_0 = 0, …, t_N = 1 of the SDE sampler (its step h = 1/N), at least float32."""
    dtype = torch.promote_types(dtype or torch.float32, torch.float32)
    return torch.linspace(0.0, 1.0, steps + 1, device=device, dtype=dtype)


@torch.no_grad()
def ode_sample(model: VelocityModel, x: torch.Tensor, steps: int, method: str = "euler", cond=None) -> torch.Tensor:
    """Integrate dx/dt = v(x, t) from t = 0 (noise) to t = 1 (data) in `steps` steps on the model's
    sampling grid (uniform unless its scheduler places the steps). `ddim`: x' = α' D + β' N with (D, N)
    the posterior means of (x, v) at t (diffusers' DDIM with η = 0; the Euler step on a rectified flow)."""
    interp = model.interpolant
    ts = model.sampling_grid(steps, x.device, x.dtype)
    for t, t_next in zip(ts[:-1], ts[1:]):
        h = t_next - t
        v = model(x, t, cond)
        if method == "euler":
            x = x + h * v
        elif method == "ddim":
            D, N = interp.to_posterior_means(v, x, t, "velocity")
            x = bcast(interp.alpha(t_next), x) * D + bcast(interp.beta(t_next), x) * N
        elif method == "heun":
            x_pred = x + h * v
            x = x + 0.5 * h * (v + model(x_pred, t_next, cond))
        else:
            raise ValueError(f"unknown ODE method {method!r}; expected euler, heun or ddim")
    return x


@torch.no_grad()
def sde_sample(model: VelocityModel, x: torch.Tensor, steps: int, offset: float | None = None, cond=None,
               generator: torch.Generator | None = None, step: str = "euler"):
    """The memoryless SDE dX = b(X, t) dt + σ(t) dB, b = 2v - (α̇/α)x, on the uniform grid, one
    `Interpolant.sde_step` per step (`euler`: Euler–Maruyama; `ddpm`: the DDPM posterior step).

    Returns the trajectory [steps + 1, B, ...], the grid t_0..t_N and the model velocities at
    t_0..t_{N-1}. `offset` h (default: one step) keeps σ and α̇/α finite at t = 0 (euler).
    """
    interp = model.interpolant
    ts = time_grid(steps, x.device, x.dtype)
    offset = 1.0 / steps if offset is None else offset
    traj, vels = [x], []
    for t, t_next in zip(ts[:-1], ts[1:]):
        v = model(x, t, cond)
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        A, C, s = (bcast(c, x) for c in interp.sde_step(t, t_next, offset, step))
        x = A * x + C * v + s * noise
        traj.append(x)
        vels.append(v)
    return torch.stack(traj), ts, torch.stack(vels)
