"""A transformers CLIP model scoring images against prompts: the common part of PickScore and
CLIPScore. Image and text embeddings are the projected, L2-normalised CLIP features."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from .image import TextImageReward, clip_preprocess


def _get(size, key):
    """A field of an image processor's size (a dict in older transformers, a SizeDict in newer)."""
    return size.get(key) if isinstance(size, dict) else getattr(size, key, None)


class HFCLIPReward(TextImageReward):
    """`scale(cos)` of a CLIPModel's image and prompt embeddings. The differentiable path resizes
    with torch to the processor's crop size and normalises with its mean and std; `score_pil` runs
    the processor itself on PIL images (the authors' evaluation path)."""

    def __init__(self, model, processor):
        super().__init__()
        self.model = model.requires_grad_(False).eval()
        self.processor = processor
        ip = processor.image_processor
        self.resize = int(_get(ip.size, "shortest_edge") or _get(ip.size, "height"))
        self.size = int(_get(ip.crop_size, "height")) if ip.do_center_crop else self.resize
        self.mean, self.std = tuple(ip.image_mean), tuple(ip.image_std)

    def scale(self, cos: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def image_embeds(self, pixel_values: torch.Tensor) -> torch.Tensor:
        pooled = self.model.vision_model(pixel_values=pixel_values).pooler_output
        return F.normalize(self.model.visual_projection(pooled), dim=-1)

    def text_embeds(self, prompts: list[str], device) -> torch.Tensor:
        tok = self.processor.tokenizer(prompts, padding="max_length", truncation=True, return_tensors="pt",
                                       max_length=self.processor.tokenizer.model_max_length).to(device)
        pooled = self.model.text_model(input_ids=tok.input_ids, attention_mask=tok.attention_mask).pooler_output
        return F.normalize(self.model.text_projection(pooled), dim=-1)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Unit CLIP image embeddings (for the distance to the base and the diversity fallback)."""
        dtype = self.model.visual_projection.weight.dtype
        return self.image_embeds(clip_preprocess(images.to(dtype), self.size, self.mean, self.std, resize=self.resize, crop="floor")).float()

    def forward(self, images, cond=None):
        dtype = self.model.visual_projection.weight.dtype
        pixels = clip_preprocess(images.to(dtype), self.size, self.mean, self.std, resize=self.resize, crop="floor")
        cos = (self.image_embeds(pixels) * self.text_embeds(self.texts(cond), images.device)).sum(-1)
        return self.scale(cos).to(images.dtype)

    @torch.no_grad()
    def score_pil(self, images, prompts):
        dev, dtype = self.model.visual_projection.weight.device, self.model.visual_projection.weight.dtype
        pixels = self.processor(images=images, return_tensors="pt").pixel_values.to(dev, dtype)
        return self.scale((self.image_embeds(pixels) * self.text_embeds(list(prompts), dev)).sum(-1)).float()

    @staticmethod
    def load_parts(model_dir: Path, processor_dir: Path):
        from transformers import CLIPModel, CLIPProcessor

        model = CLIPModel.from_pretrained(model_dir, local_files_only=True)
        processor = CLIPProcessor.from_pretrained(processor_dir, local_files_only=True)
        return model, processor
