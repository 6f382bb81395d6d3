"""Shared test setup: one CPU thread, float64 where it matters, and a fixed seed per test."""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

torch.set_num_threads(1)
SEED = 1234


@pytest.fixture(autouse=True)
def _fixed_seed():
    """Every test starts from the same global RNG state (torch and numpy)."""
    torch.manual_seed(SEED)
    np.random.seed(SEED)
    yield


@pytest.fixture
def gen():
    """A seeded torch.Generator for explicit sampling."""
    return torch.Generator().manual_seed(SEED)
