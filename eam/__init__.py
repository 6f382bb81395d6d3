"""eam: reward fine-tuning of diffusion and flow models by stochastic optimal control —
Adjoint Matching (AM) and Efficient Adjoint Matching (EAM)."""

__version__ = "0.1.0"
