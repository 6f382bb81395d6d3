"""Pieces of the training loop shared by every benchmark: weight EMA, a time/NFE ledger and the base-gradient
anchor of `corrected`."""
from __future__ import annotations

import copy
import json
import time

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .io import atomic_path
from .losses import NFE_KINDS


class Anchor:
    """docs/method.md §5.6: the mean gradient g_0 of the λ = 0 loss at the pretrained weights, over n
    batches; `apply` subtracts it from a step's gradient, so that the pretrained network is a stationary
    point of the update in expectation (up to g_0's sampling error, SE/√n)."""

    def __init__(self, grads: list[torch.Tensor]):
        self.grads = grads

    @classmethod
    def fit(cls, params, batch_grad, n: int) -> "Anchor":
        """`batch_grad(i)` leaves the gradient of batch i in each parameter's .grad (the parameters at the base)."""
        params = list(params)
        mean = [torch.zeros_like(p) for p in params]
        for i in range(n):
            batch_grad(i)
            for m, p in zip(mean, params):
                if p.grad is not None:
                    m.add_(p.grad, alpha=1 / n)
        return cls(mean)

    def save(self, path, meta: dict):
        """One safetensors file: g_0 per trainable tensor, in order, and `meta` (settings, cost) as JSON."""
        with atomic_path(path) as tmp:
            save_file({f"g{i}": g.detach().cpu().contiguous() for i, g in enumerate(self.grads)}, tmp,
                      metadata={"anchor": json.dumps(meta, sort_keys=True)})

    @classmethod
    def load(cls, path) -> tuple["Anchor", dict]:
        try:
            with safe_open(str(path), "pt") as f:
                meta = json.loads((f.metadata() or {}).get("anchor", "{}"))
            state = load_file(path)
        except (OSError, ValueError, SafetensorError) as e:
            raise ValueError(f"cannot read the anchor file {path} ({type(e).__name__}); write it with "
                             "`eam finetune ... --anchor-only --out FILE`") from None
        return cls([state[f"g{i}"] for i in range(len(state))]), meta

    @torch.no_grad()
    def apply(self, params):
        for p, g0 in zip(params, self.grads):
            if p.grad is None:
                p.grad = -g0.clone()
            else:
                p.grad.sub_(g0)


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
