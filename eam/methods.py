"""The fine-tuning methods behind one interface. A `Method` holds what its loss needs besides the model being
trained (the frozen base, the reward, its settings and state) and turns (model, λ, x_0, prompts) into the loss of
one batch with the function evaluations it spent (losses.LossOutput); the training loop (eam/loop.py) never asks
which method it runs.

    AM   (docs/method.md §3): `am_loss` on a fresh SDE trajectory, with the official loss clipping if set;
    EAM  (§4, §5):           `eam_loss` on a few-step ODE sample, with its base-score variant (residual,
                             corrected, endpoint, exact, bridge).
"""
from __future__ import annotations

import torch

from .losses import AMConfig, EAMConfig, LossOutput, QuantileClipper, am_loss, eam_loss
from .reference import LinearReference

METHODS = ("am", "eam")


class Method:
    """One batch's loss of a fine-tuning method; `state` / `load_state` carry what it keeps across iterations
    (AM's clipping quantile) through checkpoints."""

    name: str

    def loss(self, model, lam: float, x0: torch.Tensor, cond=None, generator=None) -> LossOutput:
        raise NotImplementedError

    def state(self):
        return None

    def load_state(self, state):
        pass


class AdjointMatching(Method):
    name = "am"

    def __init__(self, cfg: AMConfig, base, reward, gather=None):
        self.cfg, self.base, self.reward = cfg, base, reward
        self.clipper = QuantileClipper(cfg.clip_quantile, gather=gather) if cfg.clip_quantile else None

    def loss(self, model, lam, x0, cond=None, generator=None):
        return am_loss(model, self.base, self.reward, lam, x0, self.cfg, cond, clipper=self.clipper, generator=generator)

    def state(self):
        return (self.clipper.value, self.clipper.updates) if self.clipper else None

    def load_state(self, state):
        if self.clipper is not None:
            self.clipper.value, self.clipper.updates = state


class EfficientAdjointMatching(Method):
    """`correction`: the network u_ψ of `corrected` (§5.5); `exact_score`: the analytic base score of `exact`
    (benchmark bases only)."""

    name = "eam"

    def __init__(self, cfg: EAMConfig, base, reward, interpolant, correction=None, exact_score=None):
        self.cfg, self.base, self.reward = cfg, base, reward
        self.ref, self.correction, self.exact_score = LinearReference(interpolant), correction, exact_score

    def loss(self, model, lam, x0, cond=None, generator=None):
        return eam_loss(model, self.base, self.reward, lam, x0, self.ref, self.cfg, cond, exact_score=self.exact_score,
                        generator=generator, correction=self.correction)


def make_method(name: str, am: AMConfig, eam: EAMConfig, base, reward, correction=None, exact_score=None,
                gather=None) -> Method:
    """The method `name` with its settings section; `gather` (a tensor's concatenation over processes) makes AM's
    clipping quantile global in a data-parallel run."""
    if name == "am":
        return AdjointMatching(am, base, reward, gather)
    if name == "eam":
        return EfficientAdjointMatching(eam, base, reward, base.interpolant, correction, exact_score)
    raise ValueError(f"unknown method {name!r}; expected one of {', '.join(METHODS)}")
