"""Named phases of a training iteration (sampling, reward VJP, base VJPs, base forwards, training
forward and backward): a torch.profiler range each, and, while `recording` is on, wall-clock per
phase (the device synchronised at each boundary; one dictionary lookup when off)."""
from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager

import torch
from torch.profiler import record_function

NAMES = ("sample", "reward_vjp", "base_vjp", "base_fwd", "train_fwd", "train_bwd")
_record: dict = {}


@contextmanager
def phase(name: str):
    with record_function(name):
        if not _record:
            yield
            return
        sync = _record["sync"]
        sync()
        t0 = time.perf_counter()
        yield
        sync()
        _record["seconds"][name] += time.perf_counter() - t0


@contextmanager
def recording(device: torch.device):
    """Collect seconds per phase into the yielded dict while the block runs."""
    seconds = defaultdict(float)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    _record.update(seconds=seconds, sync=sync)
    try:
        yield seconds
    finally:
        _record.clear()
