"""Model of the ground-truth benchmark: a Gaussian-mixture base's exact velocity (frozen) plus a trainable
MLP residual that starts at zero, so fine-tuning starts at the base (`eam gmm`, eam/bench_gmm.py)."""
from __future__ import annotations

from ..gmm import GaussianMixture, GMMVelocity
from ..interpolants import RectifiedFlow
from ..models import MLP, ResidualVelocity
from ..registry import register


@register("model", "gmm", domain="toy")
class GMMResidual(ResidualVelocity):
    """v_θ = v_base + f_θ with v_base the mixture's analytic rectified-flow velocity and f_θ an MLP."""

    def __init__(self, mixture: GaussianMixture, hidden: int = 256, depth: int = 3):
        super().__init__(GMMVelocity(mixture, RectifiedFlow()), MLP(mixture.dim, hidden, depth))

    @classmethod
    def pair(cls, mixture: GaussianMixture, **options) -> tuple[GMMVelocity, "GMMResidual"]:
        """The frozen base (the mixture's exact velocity: nothing to load) and the trainable model."""
        if not isinstance(mixture, GaussianMixture):  # e.g. `eam finetune --model gmm --model-path DIR`
            cls.load(mixture)  # refuses, in one line
        return GMMVelocity(mixture, RectifiedFlow()), cls(mixture, **options)

    @classmethod
    def load(cls, path, **options):
        raise ValueError("model 'gmm' is the Gaussian-mixture benchmark's, built from a case file, not loaded from "
                         f"{path}: run `eam gmm --case FILE`")
