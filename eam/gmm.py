"""Gaussian-mixture bases: exact density, score, analytic velocity and the exact reward tilt."""
from __future__ import annotations

import math

import torch

from .interpolants import Interpolant, bcast
from .models import VelocityModel


class GaussianMixture:
    """Σ_i w_i N(μ_i, C_i) with full covariances, in float64 internally."""

    def __init__(self, weights, means, covs):
        self.w = torch.as_tensor(weights, dtype=torch.float64)
        self.mu = torch.as_tensor(means, dtype=torch.float64)
        self.C = torch.as_tensor(covs, dtype=torch.float64)
        self.w = self.w / self.w.sum()
        self.lam, self.U = torch.linalg.eigh(self.C)  # C_i = U_i diag(λ_i) U_iᵀ
        if (self.lam <= 0).any():
            raise ValueError("every component covariance must be positive definite")

    @property
    def dim(self) -> int:
        return self.mu.shape[1]

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        comp = torch.multinomial(self.w, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, dtype=torch.float64, generator=generator)
        L = self.U * self.lam.sqrt()[:, None, :]  # C = L Lᵀ
        return self.mu[comp] + torch.einsum("nij,nj->ni", L[comp], z)

    def _noised(self, x, alpha, beta):
        """Per component, for X_t = α X_1 + β X_0: whitened residual y = Uᵀ(x - αμ), the variances
        α²λ + β² of p_t's components in the eigenbasis, and log responsibilities."""
        y = torch.einsum("kji,bkj->bki", self.U, x[:, None, :] - alpha[:, None, None] * self.mu)
        var = alpha[:, None, None] ** 2 * self.lam + beta[:, None, None] ** 2
        logp = -0.5 * (y**2 / var + var.log()).sum(-1) - 0.5 * self.dim * math.log(2 * math.pi)
        return y, var, logp + self.w.log()

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        one = torch.ones(x.shape[0], dtype=torch.float64)
        return torch.logsumexp(self._noised(x.double(), one, 0 * one)[2], dim=1).to(x.dtype)

    def posterior_means(self, x: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor):
        """D = E[X_1 | X_t = x] and N = E[X_0 | X_t = x] for X_t = α X_1 + β X_0, X_1 ~ this mixture."""
        xd = x.double()
        y, var, logp = self._noised(xd, alpha.double(), beta.double())
        gamma = torch.softmax(logp, dim=1)[:, :, None]  # responsibilities [B, K, 1]
        a, b = alpha.double()[:, None, None], beta.double()[:, None, None]
        # per component: E[X_1|x] = μ + α C (α²C + β²I)⁻¹(x - αμ), E[X_0|x] = β (α²C + β²I)⁻¹(x - αμ)
        back = lambda z: torch.einsum("kij,bkj->bki", self.U, z)  # noqa: E731
        D = (gamma * (self.mu + back(a * self.lam * y / var))).sum(1)
        N = (gamma * back(b * y / var)).sum(1)
        return D.to(x.dtype), N.to(x.dtype)

    def responsibilities(self, x: torch.Tensor) -> torch.Tensor:
        """P(component i | x) for every row of x: [B, K]."""
        one = torch.ones(x.shape[0], dtype=torch.float64)
        return torch.softmax(self._noised(x.double(), one, 0 * one)[2], dim=1)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """∇ log p(x), exact."""
        one = torch.ones(x.shape[0], dtype=torch.float64)
        y, _, logp = self._noised(x.double(), one, 0 * one)
        gamma = torch.softmax(logp, dim=1)[:, :, None]
        return (gamma * torch.einsum("kij,bkj->bki", self.U, -y / self.lam)).sum(1).to(x.dtype)

    def mean(self) -> torch.Tensor:
        return (self.w[:, None] * self.mu).sum(0)

    # -- exact tilt p* ∝ p · exp(λ r) --------------------------------------------------------
    def tilt_linear(self, c, lam: float) -> "GaussianMixture":
        """r(x) = cᵀx: N(μ, C) e^{λcᵀx} ∝ N(μ + λCc, C), weight × exp(λcᵀμ + λ² cᵀCc / 2)."""
        c = torch.as_tensor(c, dtype=torch.float64)
        Cc = self.C @ c
        logw = self.w.log() + lam * self.mu @ c + 0.5 * lam**2 * Cc @ c
        return GaussianMixture(torch.softmax(logw, 0), self.mu + lam * Cc, self.C)

    def tilt_quadratic(self, center, tau: float, lam: float) -> "GaussianMixture":
        """r(x) = -‖x - center‖² / (2τ): with s = τ/λ, N(μ, C) e^{-‖x-c‖²/(2s)} ∝ N(μ', C') with
        C' = (C⁻¹ + I/s)⁻¹, μ' = C'(C⁻¹μ + c/s), weight × N(c; μ, C + sI)."""
        c = torch.as_tensor(center, dtype=torch.float64)
        s = tau / lam
        eye = torch.eye(self.dim, dtype=torch.float64)
        prec = torch.linalg.inv(self.C) + eye / s
        Cn = torch.linalg.inv(prec)
        Cn = 0.5 * (Cn + Cn.transpose(1, 2))
        mun = torch.einsum("kij,kj->ki", Cn, torch.linalg.solve(self.C, self.mu) + c / s)
        marg = torch.distributions.MultivariateNormal(self.mu, self.C + s * eye)
        return GaussianMixture(torch.softmax(self.w.log() + marg.log_prob(c), 0), mun, Cn)


class GMMVelocity(VelocityModel):
    """The analytic velocity v = α̇ D + β̇ N of the interpolant whose data law is a mixture."""

    def __init__(self, mixture: GaussianMixture, interpolant: Interpolant):
        super().__init__(interpolant)
        self.mixture = mixture

    def velocity(self, x, t, cond=None):
        alpha, beta, da, db = self.interpolant.coefficients(t)
        D, N = self.mixture.posterior_means(x, alpha, beta)
        return bcast(da, x) * D + bcast(db, x) * N

    def score(self, x, t):
        alpha, beta, _, _ = self.interpolant.coefficients(t)
        return -self.mixture.posterior_means(x, alpha, beta)[1] / bcast(beta, x)
