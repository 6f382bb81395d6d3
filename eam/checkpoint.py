"""Saving and loading: pretrained modules as `config.json` + `model.safetensors` (the Hugging Face
layout), and training checkpoints (weights, optimiser, RNG states, step, log position) written
atomically and loaded with `torch.load(weights_only=True)`."""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .io import atomic_path, write_json

WEIGHTS, CONFIG = "model.safetensors", "config.json"


class MissingWeights(FileNotFoundError):
    """A model or reward whose weight file is not where it was looked for; the message says how to get it."""


def save_pretrained(directory: str | Path, module: torch.nn.Module, config: dict):
    """Write `config.json` and `model.safetensors` (contiguous, de-duplicated tensors) atomically."""
    directory = Path(directory)
    state = {k: v.detach().contiguous().clone() for k, v in module.state_dict().items()}
    with atomic_path(directory / WEIGHTS) as tmp:
        save_file(state, tmp)
    write_json(directory / CONFIG, config)


def load_pretrained(directory: str | Path, what: str, how: str) -> tuple[dict, dict]:
    """(config, state_dict) from a `save_pretrained` folder; `what` names the model, `how` says how to make it."""
    if directory is None:
        raise MissingWeights(f"{what}: no weights folder given; {how}")
    directory = Path(directory)
    for name in (CONFIG, WEIGHTS):
        if not (directory / name).is_file():
            raise MissingWeights(f"{what}: {name} not found in {directory}; {how}")
    try:
        config = json.loads((directory / CONFIG).read_text())
        state = load_file(directory / WEIGHTS)
    except Exception as e:  # a truncated or foreign file: say which one
        raise MissingWeights(f"{what}: cannot read {directory} ({type(e).__name__}: {e}); {how}") from None
    return config, state


def load_state(module: torch.nn.Module, state: dict, directory, what: str) -> torch.nn.Module:
    """`module.load_state_dict(state)`, with a one-line error where the weights belong to another model."""
    try:
        module.load_state_dict(state)
    except RuntimeError:
        raise MissingWeights(f"{what}: the weights in {directory} do not fit this model (another model's folder?)") from None
    return module


def rng_state() -> dict:
    """torch, numpy and Python RNG states as tensors and plain containers (loadable with weights_only)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(), "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
            "python": random.getstate(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict):
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])


def weights_stamp(path) -> float:
    """The newest modification time of the weight and config files under a model folder (a local
    folder, or a Hugging Face repo id resolved in the offline cache): a resume must see the same base."""
    root = Path(str(path))
    if not root.exists() and str(path).count("/") == 1:
        from huggingface_hub import snapshot_download

        try:
            root = Path(snapshot_download(str(path), local_files_only=True))
        except Exception:  # noqa: BLE001  (not cached: the loader raises the one-line error)
            return 0.0
    files = [f for pat in ("*.safetensors", "*.bin", "*.json", "*.pt", "*.pth") for f in root.rglob(pat)]
    return max((f.stat().st_mtime for f in files), default=0.0)


def save_training_state(path: str | Path, **state):
    """One file with everything a resume needs; tensors and plain containers only."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_training_state(path: str | Path) -> dict | None:
    """The state saved by `save_training_state`, or None where there is none or it is unreadable."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return torch.load(path, weights_only=True)
    except Exception as e:
        print(f"warning: skipping unreadable checkpoint {path} ({type(e).__name__}); starting over")
        return None
