"""HPSv2.1 (Wu et al. 2023, github tgxs002/HPSv2): an open_clip ViT-H-14 fine-tuned on human
preferences, checkpoint `HPS_v2.1_compressed.pt` of `xswu/HPSv2`. The score is that of
`hpsv2.score(..., hps_version="v2.1")`: the cosine of the normalised image and prompt features
(no logit_scale; the benchmark tables of the paper print 100 × this).

The model is built by open_clip 3.x from the ViT-H-14 config without pretrained weights, then the
checkpoint's `state_dict` entry is loaded strictly (the state-dict layout of the authors' open_clip
fork and of open_clip 3.x coincide for this architecture). Prompts go through open_clip's BPE
tokenizer, which ships its vocabulary, so everything works offline.

The authors' evaluation transform (their fork, `light_augmentation=True`) is not CLIP's
resize-and-crop: it converts to a tensor first, resizes the *longer* side to 224 (torchvision's
bicubic on the tensor, antialiased since torchvision 0.17) and pads the shorter one with zeros
(black, before normalising) on both sides; a non-square image is letterboxed, never cropped.
`forward` does the same with torch ops, differentiably; `score_pil` runs it on PIL images through
torchvision. The authors ran the model under CUDA autocast (fp16); this runs in the model's dtype.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from ..checkpoint import MissingWeights, load_state
from ..registry import register
from .image import CLIP_MEAN, CLIP_STD, TextImageReward, find_weights

REPO = "xswu/HPSv2"
WEIGHTS = "HPS_v2.1_compressed.pt"
ARCH = "ViT-H-14"
CONFIG = "open_clip_config.json"  # optional, in the weights folder: another open_clip architecture (tests)


def letterbox_size(H: int, W: int, size: int) -> tuple[int, int]:
    """The resized shape with the longer side = size, rounded as the authors do."""
    scale = size / float(max(H, W))
    return round(H * scale), round(W * scale)


def letterbox_preprocess(images: torch.Tensor, size: int, mean=CLIP_MEAN, std=CLIP_STD) -> torch.Tensor:
    """[B, 3, H, W] in [0, 1] → [B, 3, size, size]: longer side resized to `size` (bicubic,
    antialiased), zero padding split evenly (the extra pixel right/bottom), then normalised. (A
    non-square image whose longer side is already `size` is padded too; the authors' transform
    would leave it non-square, which their model cannot take.)"""
    H, W = images.shape[-2:]
    h, w = letterbox_size(H, W, size)
    x = images
    if (h, w) != (H, W):
        x = F.interpolate(x, size=(h, w), mode="bicubic", align_corners=False, antialias=True)
    ph, pw = size - h, size - w
    x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=0.0)
    m = torch.tensor(mean, dtype=x.dtype, device=x.device)[:, None, None]
    s = torch.tensor(std, dtype=x.dtype, device=x.device)[:, None, None]
    return (x - m) / s


def letterbox_pil(image, size: int, mean=CLIP_MEAN, std=CLIP_STD) -> torch.Tensor:
    """The authors' evaluation transform on one PIL image, with torchvision as they run it:
    to tensor, resize the tensor (bicubic) so the longer side is `size`, pad with 0, normalise."""
    import torchvision.transforms.functional as TF
    from torchvision.transforms import InterpolationMode

    x = TF.to_tensor(image.convert("RGB"))
    H, W = x.shape[-2:]
    h, w = letterbox_size(H, W, size)
    if (h, w) != (H, W):
        # antialias: torchvision's default for tensors since 0.17 (the authors pass none)
        x = TF.resize(x, [h, w], interpolation=InterpolationMode.BICUBIC, antialias=True)
    ph, pw = size - h, size - w
    x = TF.pad(x, [pw // 2, ph // 2, pw - pw // 2, ph - ph // 2], fill=0)
    return TF.normalize(x, mean, std)


@register("reward", "hpsv2", domain="image", weights=True, features=False)
class HPSv2(TextImageReward):
    """HPSv2.1: cos(image features, prompt features) of the HPS-tuned open_clip model."""

    def __init__(self, model, tokenizer):
        super().__init__()
        self.model = model.requires_grad_(False).eval()
        self.tokenizer = tokenizer
        self.eval()
        size = model.visual.image_size  # open_clip keeps it as an (h, w) pair
        h, w = (size, size) if isinstance(size, int) else size
        if h != w:
            raise ValueError(f"HPSv2: a square image size is expected, got {h}×{w}")
        self.size = int(h)

    def train(self, mode: bool = True):
        """Frozen: stays in eval mode (no dropout) whatever a parent module asks."""
        return super().train(False)

    def _param(self) -> torch.Tensor:
        """A parameter of the model: its device and dtype."""
        return self.model.logit_scale

    def text_features(self, prompts: list[str], device) -> torch.Tensor:
        return self.model.encode_text(self.tokenizer(list(prompts)).to(device), normalize=True)

    def forward(self, images, cond=None):
        p = self._param()
        pixels = letterbox_preprocess(images.to(p.dtype), self.size)
        img = self.model.encode_image(pixels, normalize=True)
        return (img * self.text_features(self.texts(cond), images.device)).sum(-1).to(images.dtype)

    @torch.no_grad()
    def score_pil(self, images, prompts):
        p = self._param()
        pixels = torch.stack([letterbox_pil(im, self.size) for im in images]).to(p.device, p.dtype)
        img = self.model.encode_image(pixels, normalize=True)
        return (img @ self.text_features(prompts, p.device).T).diagonal().float()

    @classmethod
    def load(cls, path=None) -> "HPSv2":
        """`path`: a folder with `HPS_v2.1_compressed.pt` (None: the Hugging Face cache of
        xswu/HPSv2). An `open_clip_config.json` there (an open_clip model config: embed_dim,
        vision_cfg, text_cfg, bare or under "model_cfg") replaces the ViT-H-14 architecture."""
        import open_clip

        d = find_weights("HPSv2.1", path, REPO, [WEIGHTS],
                         f"download it with `hf download {REPO} {WEIGHTS} --local-dir DIR` and pass DIR")
        if (d / CONFIG).exists():
            cfg = json.loads((d / CONFIG).read_text())
            cfg = cfg.get("model_cfg", cfg)
        else:
            cfg = open_clip.get_model_config(ARCH)
        model = open_clip.model.CLIP(**cfg)
        try:
            ckpt = torch.load(Path(d, WEIGHTS), map_location="cpu", weights_only=True)
        except Exception as e:  # a truncated or foreign file: say which one
            raise MissingWeights(f"HPSv2.1: cannot read {Path(d, WEIGHTS)} ({type(e).__name__}: {e}); "
                                 f"download it again from {REPO}") from None
        if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
            raise MissingWeights(f"HPSv2.1: {Path(d, WEIGHTS)} has no 'state_dict' entry (not an HPS checkpoint); "
                                 f"download {WEIGHTS} from {REPO}")
        load_state(model, ckpt["state_dict"], d, "HPSv2.1")
        context = int(cfg.get("text_cfg", {}).get("context_length", 77))
        return cls(model, open_clip.tokenizer.SimpleTokenizer(context_length=context))
