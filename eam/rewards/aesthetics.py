"""LAION Aesthetics predictor v2 (github christophschuhmann/improved-aesthetic-predictor): the
linear MLP of `sac+logos+ava1-l14-linearMSE.pth` on the L2-normalised image embedding of OpenAI
CLIP ViT-L/14, a score of about 1–10. Prompts are ignored.

CLIP ViT-L/14 is the transformers `CLIPModel` of `openai/clip-vit-large-patch14` (its projected
pooled image features are OpenAI clip's `encode_image`). The authors' evaluation path is OpenAI
clip's PIL preprocess (resize the shorter side bicubic, centre-crop, to tensor, CLIP mean/std),
reproduced here with torchvision on PIL images rather than with transformers' image processor,
whose default in transformers 5 resizes tensors, not PIL images. The authors ran CLIP in fp16 on
GPU and the MLP in fp32; this runs both in the models' dtype.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import MissingWeights, load_state
from ..registry import register
from .image import CLIP_MEAN, CLIP_STD, TextImageReward, clip_preprocess, find_weights

REPO = "camenduru/improved-aesthetic-predictor"  # a Hugging Face mirror of the authors' GitHub repo
WEIGHTS = "sac+logos+ava1-l14-linearMSE.pth"
CLIP_REPO = "openai/clip-vit-large-patch14"


class AestheticMLP(nn.Module):
    """The authors' head: five linear layers, no activations (the ReLUs are commented out in their
    code), dropout between the first four (inactive in eval). State-dict keys `layers.{0,2,4,6,7}.*`."""

    def __init__(self, input_size: int = 768):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(input_size, 1024), nn.Dropout(0.2),
            nn.Linear(1024, 128), nn.Dropout(0.2),
            nn.Linear(128, 64), nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, x):
        return self.layers(x)


def _rgb(image):
    return image.convert("RGB")


def openai_clip_transform(size: int):
    """OpenAI clip's `_transform(n_px)` on PIL images."""
    from torchvision import transforms as T

    return T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(size),
                      _rgb, T.ToTensor(), T.Normalize(CLIP_MEAN, CLIP_STD)])


@register("reward", "aesthetics", domain="image", weights=True, features=False)
class Aesthetics(TextImageReward):
    """MLP(normalise(CLIP ViT-L/14 image embedding))."""

    def __init__(self, clip, mlp: AestheticMLP):
        super().__init__()
        self.clip = clip.requires_grad_(False).eval()
        self.mlp = mlp.requires_grad_(False).eval()
        self.eval()
        self.size = int(clip.config.vision_config.image_size)
        self.transform = openai_clip_transform(self.size)

    def train(self, mode: bool = True):
        """Frozen: stays in eval mode (no dropout) whatever a parent module asks."""
        return super().train(False)

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        pooled = self.clip.vision_model(pixel_values=pixel_values).pooler_output
        return F.normalize(self.clip.visual_projection(pooled), dim=-1)

    def forward(self, images, cond=None):
        dtype = self.clip.visual_projection.weight.dtype
        pixels = clip_preprocess(images.to(dtype), self.size)
        return self.mlp(self.embed(pixels).to(self.mlp.layers[0].weight.dtype)).squeeze(-1).to(images.dtype)

    @torch.no_grad()
    def score_pil(self, images, prompts=None):
        w = self.clip.visual_projection.weight
        pixels = torch.stack([self.transform(im) for im in images]).to(w.device, w.dtype)
        return self.mlp(self.embed(pixels).to(self.mlp.layers[0].weight.dtype)).squeeze(-1).float()

    @classmethod
    def load(cls, path=None) -> "Aesthetics":
        """`path`: a folder with `sac+logos+ava1-l14-linearMSE.pth` (None: the Hugging Face cache of
        camenduru/improved-aesthetic-predictor, a copy of the authors' file). CLIP ViT-L/14 from
        `path/clip/` (a `save_pretrained` folder) if that exists, else from the Hugging Face cache of
        openai/clip-vit-large-patch14; nothing is downloaded."""
        from transformers import CLIPModel

        d = find_weights("LAION aesthetics MLP", path, REPO, [WEIGHTS],
                         f"download it with `hf download {REPO} {WEIGHTS} --local-dir DIR` (or from "
                         f"github christophschuhmann/improved-aesthetic-predictor) and pass DIR")
        clip_dir = Path(d, "clip") if Path(d, "clip").is_dir() else None
        c = find_weights("LAION aesthetics CLIP ViT-L/14", clip_dir, CLIP_REPO, ["config.json"],
                         f"download it with `hf download {CLIP_REPO} config.json model.safetensors "
                         f"--local-dir {Path(d, 'clip')}`")
        try:
            clip, info = CLIPModel.from_pretrained(c, local_files_only=True, output_loading_info=True)
        except (OSError, ValueError) as e:  # no weight file next to config.json, or a foreign one
            raise MissingWeights(f"LAION aesthetics CLIP ViT-L/14: cannot load {c} ({type(e).__name__}: "
                                 f"{str(e).splitlines()[0]}); download {CLIP_REPO} again") from None
        if info.get("missing_keys") or info.get("mismatched_keys"):
            raise MissingWeights(f"LAION aesthetics CLIP ViT-L/14: the weights in {c} do not fit its config "
                                 f"({len(info.get('missing_keys', []))} missing, "
                                 f"{len(info.get('mismatched_keys', []))} mismatched tensors)")
        try:
            state = torch.load(Path(d, WEIGHTS), map_location="cpu", weights_only=True)
        except Exception as e:  # a truncated or foreign file: say which one
            raise MissingWeights(f"LAION aesthetics MLP: cannot read {Path(d, WEIGHTS)} ({type(e).__name__}: {e}); "
                                 f"download {WEIGHTS} again") from None
        mlp = load_state(AestheticMLP(clip.config.projection_dim), state, d, "LAION aesthetics MLP")
        return cls(clip, mlp)
