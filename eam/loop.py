"""The one training loop, shared by fine-tuning (eam/finetune.py), the Gaussian-mixture benchmark
(eam/bench_gmm.py) and `eam bench`'s timed iterations (eam/bench.py). Plain and linear:

    for it in start + 1 .. iters:
        with ledger:                                  # training wall-clock and NFEs (evaluation excluded)
            stats = trainer.step(lambda: grads(it))   # zero grads; grads(it) backpropagates the method's loss;
            ledger.add(stats["nfe"])                  # then the anchor (§5.6), gradient clipping, Adam, the
                                                      # cosine schedule and the weight EMA
        after(it, stats)                              # the caller's evaluation, log row, checkpoint, signals
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from tqdm import tqdm

from .train import EMA, Anchor, Ledger


def cosine(lr_final: float, iters: int) -> Callable[[int], float]:
    """The learning-rate factor at step i: cosine decay from 1 to lr_final over `iters` steps, then flat."""
    return lambda i: lr_final + (1 - lr_final) * 0.5 * (1 + math.cos(math.pi * min(i / iters, 1.0)))


class Trainer:
    """Adam on `params` with a cosine schedule, optional gradient clipping (max norm), the anchor of `corrected`
    (set by `fit_anchor` or assigned) and optional weight EMA of `model` (`ema.model` is the averaged copy)."""

    def __init__(self, model: torch.nn.Module, params, lr: float, lr_final: float, iters: int,
                 grad_clip: float | None = None, ema: float | None = None):
        self.model, self.params, self.grad_clip = model, list(params), grad_clip
        self.opt = torch.optim.Adam(self.params, lr=lr)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, cosine(lr_final, iters))
        self.ema = EMA(model, ema) if ema is not None else None
        self.anchor: Anchor | None = None

    def step(self, grads: Callable[[], dict]) -> dict:
        """One optimiser step on the gradients that `grads()` leaves in the parameters; returns what it returns."""
        self.opt.zero_grad(set_to_none=True)
        stats = grads()
        if self.anchor is not None:
            self.anchor.apply(self.params)
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.opt.step()
        self.sched.step()
        if self.ema is not None:
            self.ema.update(self.model)
        return stats

    def fit_anchor(self, grads: Callable[[int], object], n: int) -> Anchor:
        """docs/method.md §5.6: the mean of the gradients that `grads(i)` (batch i's λ = 0 loss) leaves at the
        current (pretrained) weights, i = 0..n-1, subtracted from every later step."""
        def batch(i):
            self.opt.zero_grad(set_to_none=True)
            grads(i)

        self.anchor = Anchor.fit(self.params, batch, n)
        return self.anchor

    def state_dict(self) -> dict:
        return {"opt": self.opt.state_dict(), "sched": self.sched.state_dict()}

    def load_state_dict(self, state: dict):
        self.opt.load_state_dict(state["opt"])
        self.sched.load_state_dict(state["sched"])


def run(trainer: Trainer, ledger: Ledger, grads: Callable[[int], dict], iters: int, start: int = 0,
        after: Callable[[int, dict], None] | None = None, desc: str = "", progress: bool = True):
    """Iterations start + 1 .. iters: `grads(it)` backpropagates iteration it's loss and returns its statistics
    with the NFEs it spent under "nfe"; `after(it, stats)` runs outside the timed block."""
    for it in tqdm(range(start + 1, iters + 1), desc=desc, disable=not progress, initial=start, total=iters):
        with ledger:
            stats = trainer.step(lambda: grads(it))
            ledger.add(stats["nfe"])
        if after is not None:
            after(it, stats)
