"""What the text-to-image rewards share: the image interface, torch preprocessing for the
differentiable path, PIL conversion for the authors' evaluation path, and finding weight files
locally or in the Hugging Face cache (never downloading)."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ..checkpoint import MissingWeights
from .base import Reward

# The CLIP image normalisation (OpenAI CLIP, open_clip, PickScore, HPSv2, ImageReward's BLIP).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class TextImageReward(Reward):
    """A reward on RGB images in [0, 1], shape [B, 3, H, W], and their prompts (`cond.texts`).

    `forward` is the differentiable training path (torch resize/crop/normalise, no PIL);
    `score_pil` is the evaluation path of the reward's authors, on PIL images.
    """

    def score_pil(self, images, prompts: list[str]) -> torch.Tensor:
        raise NotImplementedError

    @staticmethod
    def texts(cond) -> list[str]:
        texts = getattr(cond, "texts", cond)
        if not isinstance(texts, (list, tuple)) or not all(isinstance(t, str) for t in texts):
            raise ValueError("this reward scores images against prompts: pass a PromptBatch (or a list of prompts)")
        return list(texts)


class OnDecoded(Reward):
    """A reward on images applied to latents: r(decode(x), cond), differentiable through the decoder."""

    def __init__(self, reward: Reward, decode):
        super().__init__()
        self.reward, self.decode = reward, decode

    def forward(self, x, cond=None):
        return self.reward(self.decode(x), cond)


def clip_preprocess(images: torch.Tensor, size: int, mean=CLIP_MEAN, std=CLIP_STD, resize: int | None = None,
                    crop: str = "torchvision"):
    """Resize the shorter side to `resize` (default `size`; bicubic, antialiased; the longer side
    int(resize · long / short), as torchvision and transformers compute it), centre-crop size×size,
    normalise: CLIP's transform in torch, differentiable in the pixels. The crop's offset is
    round((h - size) / 2) as torchvision's CenterCrop (`crop="torchvision"`: OpenAI CLIP, ImageReward's
    ReFL) or (h - size) // 2 as transformers' image processors (`crop="floor"`)."""
    H, W = images.shape[-2:]
    resize = resize or size
    short = min(H, W)
    h, w = (resize, int(resize * W / short)) if H <= W else (int(resize * H / short), resize)
    x = F.interpolate(images, size=(h, w), mode="bicubic", align_corners=False, antialias=True)
    if crop == "torchvision":
        top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    elif crop == "floor":
        top, left = (h - size) // 2, (w - size) // 2
    else:
        raise ValueError(f"unknown crop {crop!r}; expected torchvision or floor")
    x = x[..., top:top + size, left:left + size]
    m = torch.tensor(mean, dtype=x.dtype, device=x.device)[:, None, None]
    s = torch.tensor(std, dtype=x.dtype, device=x.device)[:, None, None]
    return (x - m) / s


def to_pil(images: torch.Tensor) -> list:
    """[B, 3, H, W] in [0, 1] → PIL RGB images, rounded to 8 bits as a saved PNG would be."""
    from PIL import Image

    arr = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in arr]


def find_weights(what: str, path, repo_id: str | None, files: list[str], how: str) -> Path:
    """The directory holding `files`: `path` if given, else the Hugging Face cache snapshot of
    `repo_id` (offline). A missing file is a one-line `MissingWeights` naming it, where it was
    looked for and how to provide it."""
    if path is not None:
        where, root = str(path), Path(path)
    else:
        where, root = f"the Hugging Face cache ({repo_id})", None
        if repo_id is not None:
            from huggingface_hub import snapshot_download

            try:
                root = Path(snapshot_download(repo_id, local_files_only=True))
            except Exception:  # noqa: BLE001  (huggingface_hub raises several kinds for "not cached")
                root = None
    for name in files:
        if root is None or not (root / name).exists():
            raise MissingWeights(f"{what}: {name} not found in {where}; {how}")
    return root


def has_processor(directory) -> bool:
    """Whether a folder holds a saved transformers processor (older and newer file names)."""
    return any(Path(directory, f).exists() for f in ("preprocessor_config.json", "processor_config.json"))
