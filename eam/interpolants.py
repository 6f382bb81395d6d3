"""Interpolants X_t = α_t X_1 + β_t X_0 (method.md §1) and the memoryless SDE (§2).

Time t ∈ [0, 1]: t = 0 is noise, t = 1 is data. Every network prediction is turned into the
two posterior means D = E[X_1 | X_t = x] and N = E[X_0 | X_t = x]; velocity and score follow.
"""
from __future__ import annotations

import math

import torch

PREDICTIONS = ("velocity", "epsilon", "sample")


def bcast(t: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """A per-sample time (shape [B] or scalar) shaped to broadcast against x ([B, ...])."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    return t.reshape(t.shape + (1,) * (x.dim() - t.dim())) if t.dim() else t


class Interpolant:
    """Schedule α_t, β_t with time derivatives; subclasses define `coefficients`."""

    name = "interpolant"

    def coefficients(self, t: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(α, β, α̇, β̇) at t."""
        raise NotImplementedError

    def alpha(self, t):
        return self.coefficients(t)[0]

    def beta(self, t):
        return self.coefficients(t)[1]

    # -- §1: network outputs <-> (D, N) -------------------------------------------------------
    def to_posterior_means(self, pred: torch.Tensor, x: torch.Tensor, t, kind: str):
        """(D, N) from a network output of `kind` ∈ {velocity, epsilon, sample}; x = αD + βN."""
        a, b, da, db = (bcast(c, x) for c in self.coefficients(torch.as_tensor(t, dtype=x.dtype)))
        if kind == "sample":
            return pred, (x - a * pred) / b
        if kind == "epsilon":
            return (x - b * pred) / a, pred
        if kind == "velocity":
            # solve [α β; α̇ β̇] [D; N] = [x; v]
            det = a * db - b * da
            return (db * x - b * pred) / det, (a * pred - da * x) / det
        raise ValueError(f"unknown prediction type {kind!r}; expected one of {PREDICTIONS}")

    def velocity(self, D, N, t):
        """v = α̇ D + β̇ N."""
        _, _, da, db = (bcast(c, D) for c in self.coefficients(torch.as_tensor(t, dtype=D.dtype)))
        return da * D + db * N

    def score(self, N, t):
        """s = ∇ log p_t = -N / β."""
        return -N / bcast(self.beta(torch.as_tensor(t, dtype=N.dtype)), N)

    def velocity_to_score(self, v, x, t):
        return self.score(self.to_posterior_means(v, x, t, "velocity")[1], t)

    # -- §2: memoryless SDE -------------------------------------------------------------------
    def sigma(self, t, offset: float = 0.0) -> torch.Tensor:
        """Memoryless σ(t): σ² = 2β(α̇β/α - β̇). `offset` h regularises t → 0 (AM's choice)."""
        a, b, da, db = self.coefficients(torch.as_tensor(t) + offset)
        return torch.sqrt(2 * b * (da * b / a - db))

    def drift_coefficient(self, t, offset: float = 0.0) -> torch.Tensor:
        """κ(t) = α̇/α, so that the memoryless drift is b = v + (σ²/2) s = 2v - κ(t) x."""
        a, _, da, _ = self.coefficients(torch.as_tensor(t) + offset)
        return da / a

    def drift(self, v, x, t, offset: float = 0.0):
        """b(x, t) = 2 v - (α̇/α) x; for two models b_θ - b_base = 2 (v_θ - v_base) exactly."""
        return 2 * v - bcast(self.drift_coefficient(t, offset), x) * x

    default_sde_step = "euler"

    def sde_step(self, t0, t1, offset: float = 0.0, kind: str = "euler") -> tuple[torch.Tensor, ...]:
        """(A, C, s) of one step of the memoryless SDE from t0 to t1: X' = A X + C v(X, t0) + s ξ.

        euler: Euler–Maruyama, A = 1 - h α̇/α, C = 2h, s = σ(t0)√h (h = t1 - t0, σ and α̇/α at t0 + offset).
        ddpm: the DDPM posterior step (diffusers' DDIM with η = 1): X' = α' D + sqrt(β'² - s²) N + s ξ
        with s² = (β'/β)² (1 - α²/α'²), (D, N) the posterior means of (X, v) at t0 (method.md §3)."""
        if kind == "euler":
            h = t1 - t0
            return 1 - h * self.drift_coefficient(t0, offset), 2 * h, self.sigma(t0, offset) * h**0.5
        if kind != "ddpm":
            raise ValueError(f"unknown SDE step {kind!r}; expected euler or ddpm")
        a, b, da, db = self.coefficients(torch.as_tensor(t0))
        a1, b1 = self.coefficients(torch.as_tensor(t1))[:2]
        s = torch.sqrt((b1 / b) ** 2 * (1 - (a / a1) ** 2))
        c = torch.sqrt((b1**2 - s**2).clamp(min=0))
        det = a * db - b * da  # D = (β̇ X - β v)/det, N = (α v - α̇ X)/det
        return (a1 * db - c * da) / det, (c * a - a1 * b) / det, s


class RectifiedFlow(Interpolant):
    """α_t = t, β_t = 1 - t (SD3, SD3.5, FLUX)."""

    name = "rectified_flow"

    def coefficients(self, t):
        t = torch.as_tensor(t)
        return t, 1 - t, torch.ones_like(t), -torch.ones_like(t)

    def sde_step(self, t0, t1, offset: float = 0.0, kind: str = "euler"):
        if kind == "ddpm":
            raise ValueError("the ddpm SDE step is for variance-preserving models (a rectified flow ends at "
                             "β = 0, where its last step has no noise); set am.sde_step: euler or auto")
        return super().sde_step(t0, t1, offset, kind)

    def sigma(self, t, offset: float = 0.0):
        """σ(t) = sqrt(2 (1 - t + h) / (t + h)) (AM offset h on both ends, as in the AM paper)."""
        t = torch.as_tensor(t)
        return torch.sqrt(2 * (1 - t + offset) / (t + offset))


class VariancePreserving(Interpolant):
    """α_t = sqrt(ᾱ(t)), β_t = sqrt(1 - ᾱ(t)) from a discrete DDPM beta schedule.

    Training timestep n ∈ {0, …, T-1} sits at t = 1 - n/(T-1) (t = 1 ↔ timestep 0); log ᾱ is
    interpolated linearly between timesteps, so α̇ is exact on every segment.
    """

    name = "variance_preserving"
    default_sde_step = "ddpm"  # the official AM code's SD1.5 sampler (DDIM, η = 1)

    def __init__(self, beta_start=0.00085, beta_end=0.012, schedule="scaled_linear", num_train_timesteps=1000):
        T = num_train_timesteps
        if schedule == "linear":
            betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
        elif schedule == "scaled_linear":
            betas = torch.linspace(math.sqrt(beta_start), math.sqrt(beta_end), T, dtype=torch.float64) ** 2
        else:
            raise ValueError(f"unknown beta schedule {schedule!r}; expected 'linear' or 'scaled_linear'")
        self.T = T
        self.alphas_cumprod = torch.cumprod(1 - betas, 0)
        self.log_abar = torch.log(self.alphas_cumprod)

    def timestep(self, t):
        """Continuous training timestep τ = (1 - t)(T - 1) for t ∈ [0, 1]."""
        return (1 - torch.as_tensor(t)) * (self.T - 1)

    def coefficients(self, t):
        t = torch.as_tensor(t)
        dtype = t.dtype if t.is_floating_point() else torch.get_default_dtype()
        tau = self.timestep(t.double()).clamp(0, self.T - 1)
        lo = tau.floor().long().clamp(max=self.T - 2)
        table = self.log_abar.to(lo.device)
        slope = table[lo + 1] - table[lo]  # d log ᾱ / dτ on the segment
        log_abar = table[lo] + (tau - lo) * slope
        abar = log_abar.exp()
        alpha, beta = abar.sqrt(), (1 - abar).sqrt()
        dlog_abar_dt = -(self.T - 1) * slope
        dalpha = 0.5 * alpha * dlog_abar_dt
        dbeta = -0.5 * abar * dlog_abar_dt / beta
        return tuple(c.to(dtype) for c in (alpha, beta, dalpha, dbeta))


def make_interpolant(name: str, **kwargs) -> Interpolant:
    if name == "rectified_flow":
        if kwargs:
            raise ValueError(f"rectified_flow takes no options, got {', '.join(kwargs)}")
        return RectifiedFlow()
    if name == "variance_preserving":
        return VariancePreserving(**kwargs)
    raise ValueError(f"unknown interpolant {name!r}; expected 'rectified_flow' or 'variance_preserving'")
