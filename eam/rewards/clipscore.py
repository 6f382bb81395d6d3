"""CLIPScore, the variant used in every table of this project: 100 · cos(image, prompt) of OpenAI
CLIP ViT-L/14 (`openai/clip-vit-large-patch14`). A prompt longer than CLIP's 77 tokens keeps its first
75 and the end-of-text token, where CLIP pools, as OpenAI CLIP's `clip.tokenize(truncate=True)` does
(the official AM code's metric); torchmetrics cuts the ids without the end token and differs on such
prompts. Unlike torchmetrics it is not clamped at zero, so that it stays differentiable; otherwise the
two agree (`tests/test_reward_clip.py`, torchmetrics as the reference)."""
from __future__ import annotations

from ..registry import register
from .hf_clip import HFCLIPReward
from ..checkpoint import MissingWeights
from .image import find_weights, has_processor

MODEL_REPO = "openai/clip-vit-large-patch14"


@register("reward", "clipscore", domain="image", weights=True, features=True)
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
