"""sklearn's bundled digits (1797 images of 8x8, values 0..16) as images in [-1, 1], with fixed,
disjoint splits: the generator and the training reward learn from `train`, the held-out classifier
from `heldout`, and accuracies are measured on `test`."""
from __future__ import annotations

import torch

SHAPE = (1, 8, 8)
N_CLASSES = 10
# fixed permutation (seed 0) of the 1797 images, cut into disjoint parts
SPLITS = {"train": (0, 900), "heldout": (900, 1400), "test": (1400, 1797)}


def load(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(images [N, 1, 8, 8] in [-1, 1], labels [N]) of one split."""
    from sklearn.datasets import load_digits

    if split not in SPLITS:
        raise ValueError(f"unknown digits split {split!r}; expected one of {', '.join(SPLITS)}")
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 8.0 - 1.0
    y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    lo, hi = SPLITS[split]
    return x[perm[lo:hi]], y[perm[lo:hi]]


def augment(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random shifts by up to one pixel (with -1 = background fill), for robust classifiers."""
    B = x.shape[0]
    pad = torch.nn.functional.pad(x, (1, 1, 1, 1), value=-1.0)
    dx, dy = torch.randint(0, 3, (2, B), generator=generator)
    rows = (dy[:, None] + torch.arange(8))[:, :, None].expand(B, 8, 8)
    cols = (dx[:, None] + torch.arange(8))[:, None, :].expand(B, 8, 8)
    return pad[torch.arange(B)[:, None, None], 0, rows, cols][:, None]
