"""The Gaussian linear reference p_lin = N(m, diag S) of EAM (method.md §4)."""
from __future__ import annotations

import torch

from .interpolants import Interpolant, bcast


class LinearReference:
    """N(m, diag S) pushed through the interpolant: linear velocity, closed-form adjoint propagator.

    m and S broadcast against one sample (shape [] or the sample's shape without the batch dim).
    """

    def __init__(self, interpolant: Interpolant, mean=0.0, var=1.0):
        self.interpolant = interpolant
        self.m = torch.as_tensor(mean, dtype=torch.float64)
        self.S = torch.as_tensor(var, dtype=torch.float64)

    @classmethod
    def fit(cls, interpolant: Interpolant, samples: torch.Tensor, reduce_dims=(0,)):
        """Fit (m, S) per channel to base samples; `reduce_dims` are the dims pooled together."""
        return cls(interpolant, samples.mean(reduce_dims, keepdim=True)[0], samples.var(reduce_dims, keepdim=True)[0])

    def _coeffs(self, x, t):
        return (bcast(c, x) for c in self.interpolant.coefficients(torch.as_tensor(t, dtype=x.dtype)))

    def velocity(self, x, t):
        """v_lin = α̇ m + ((α̇ α S + β̇ β) / (α² S + β²)) (x - α m)."""
        a, b, da, db = self._coeffs(x, t)
        m, S = self.m.to(x), self.S.to(x)
        return da * m + (da * a * S + db * b) / (a**2 * S + b**2) * (x - a * m)

    def phi(self, t, like: torch.Tensor):
        """Φ(t) = α S / (α² S + β²) = ∂E_lin[X_1 | X_t = x] / ∂x, shaped to broadcast against `like`."""
        a, b, _, _ = self._coeffs(like, t)
        S = self.S.to(like)
        return a * S / (a**2 * S + b**2)

    def score_data(self, x):
        """∇ log p_lin(x) = -(x - m) / S."""
        return -(x - self.m.to(x)) / self.S.to(x)

    def drift_coefficient(self, t, like: torch.Tensor):
        """κ(t) of the linear memoryless drift b_lin = 2 v_lin - (α̇/α) x = κ(t) x + const."""
        a, b, da, db = self._coeffs(like, t)
        S = self.S.to(like)
        return 2 * (da * a * S + db * b) / (a**2 * S + b**2) - da / a
