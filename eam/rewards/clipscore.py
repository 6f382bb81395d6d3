"""CLIPScore, the variant used in every table of this project: 100 · cos(image, prompt) of OpenAI
CLIP ViT-L/14 (`openai/clip-vit-large-patch14`), prompts truncated to CLIP's 77 tokens. Unlike
torchmetrics' CLIPScore it is not clamped at zero, so that it stays differentiable; the two agree
whenever cos > 0, as for any real image–prompt pair."""
from __future__ import annotations

from ..registry import register
from .hf_clip import HFCLIPReward
from ..checkpoint import MissingWeights
from .image import find_weights, has_processor

MODEL_REPO = "openai/clip-vit-large-patch14"


@register("reward", "clipscore")
class CLIPScore(HFCLIPReward):
    def scale(self, cos):
        return 100 * cos

    @classmethod
    def load(cls, path=None) -> "CLIPScore":
        """`path`: a folder with the CLIP model and processor files (a snapshot of the repo)."""
        d = find_weights("CLIPScore model (CLIP ViT-L/14)", path, MODEL_REPO, ["config.json"],
                         f"download it with `hf download {MODEL_REPO}` or set its path")
        if not has_processor(d):
            raise MissingWeights(f"CLIPScore processor: preprocessor_config.json not found in {d}; download the whole "
                                 f"repo with `hf download {MODEL_REPO}`")
        return cls(*cls.load_parts(d, d))
