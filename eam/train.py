"""Pieces of the training loop shared by every benchmark: weight EMA and a time/NFE ledger."""
from __future__ import annotations

import copy
import time

import torch

from .losses import NFE_KINDS


class EMA:
    """Exponential moving average of a model's weights; `model` is the averaged copy."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module):
        for p_ema, p in zip(self.model.parameters(), model.parameters()):
            p_ema.lerp_(p, 1 - self.decay)


class Ledger:
    """Training wall-clock (evaluation excluded) and cumulative function evaluations by kind, in
    sample-evaluations (a call on a batch of B counts B), so methods with different batch sizes compare."""

    def __init__(self):
        self.nfe = dict.fromkeys(NFE_KINDS, 0)
        self.seconds = 0.0
        self._start = None

    def __enter__(self):
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds += time.perf_counter() - self._start

    def add(self, nfe: dict):
        for k, v in nfe.items():
            self.nfe[k] += v

    def total(self) -> int:
        return sum(self.nfe.values())
