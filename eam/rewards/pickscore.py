"""PickScore (Kirstain et al. 2023): the CLIP-H model `yuvalkirstain/PickScore_v1` with the processor
of `laion/CLIP-ViT-H-14-laion2B-s32B-b79K`; score = logit_scale · cos(image, prompt) (≈ 100 · cos).
Images are scored as the authors' README code did, through the processor's PIL backend."""
from __future__ import annotations

from pathlib import Path

from ..registry import register
from .hf_clip import HFCLIPReward
from .image import find_weights, has_processor

MODEL_REPO = "yuvalkirstain/PickScore_v1"
PROCESSOR_REPO = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"


@register("reward", "pickscore", domain="image", weights=True, features=True)
class PickScore(HFCLIPReward):
    def scale(self, cos):
        return self.model.logit_scale.exp() * cos

    @classmethod
    def load(cls, path=None) -> "PickScore":
        """`path`: a folder with the PickScore_v1 files (config.json + weights); the processor from
        `path/processor/`, else `path` itself, else the Hugging Face cache of the LAION CLIP-H repo."""
        model_dir = find_weights("PickScore model", path, MODEL_REPO, ["config.json"],
                                 f"download it with `hf download {MODEL_REPO}` or set its path")
        proc = next((d for d in (Path(model_dir, "processor"), Path(model_dir))
                     if has_processor(d)), None)
        if proc is None:
            proc = find_weights("PickScore processor", None, PROCESSOR_REPO, ["preprocessor_config.json"],
                                f"download it with `hf download {PROCESSOR_REPO} preprocessor_config.json "
                                f"tokenizer.json tokenizer_config.json vocab.json merges.txt special_tokens_map.json` "
                                f"or put the processor files in {Path(model_dir, 'processor')}")
        from transformers import CLIPImageProcessorPil

        model, processor = cls.load_parts(model_dir, proc)
        # The authors' README code ran transformers 4's CLIPImageProcessor, which resized PIL images
        # with PIL; transformers 5's resizes tensors with torchvision (up to 0.009 apart in PickScore).
        processor.image_processor = CLIPImageProcessorPil.from_pretrained(proc, local_files_only=True)
        return cls(model, processor)
