"""Published model architectures with random weights, saved in the real layouts (diffusers pipeline
folders, transformers CLIP folders), so that `eam bench` times SD3-medium and SD1.5 shapes through
the real adapters and loading code without downloading any weights.

The networks take the published configs: SD3-medium (MMDiT, 24 joint blocks of width 1536, 16-channel
VAE, CLIP-L and OpenCLIP bigG text encoders; T5-XXL optional, else zeros of its shape, so the joint
sequence and the transformer's cost are the same) and SD1.5 (UNet 320-640-1280-1280 with CLIP-L
cross-attention, 4-channel VAE). Rewards: CLIP ViT-L/14 (CLIPScore, the Aesthetics backbone) and
ViT-H/14 (PickScore). Tokenizers are character-level vocabularies built offline (the real BPE files
cannot be downloaded here): prompts are padded or cut to the same 77 tokens, so shapes and cost are
those of the real models; the images are of course noise.
"""
from __future__ import annotations

import json
import string
import tempfile
from pathlib import Path

import torch

CHARS = string.ascii_lowercase + string.digits + ".,'!?-"

CLIP_L_TEXT = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                   num_attention_heads=12, max_position_embeddings=77, projection_dim=768, hidden_act="quick_gelu")
CLIP_G_TEXT = dict(vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                   num_attention_heads=20, max_position_embeddings=77, projection_dim=1280, hidden_act="gelu")
T5_XXL = dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
              feed_forward_proj="gated-gelu")
SD_VAE = dict(in_channels=3, out_channels=3, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
              down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
              norm_num_groups=32, act_fn="silu")
PIPELINES = {
    "sd3-medium": {
        "transformer": dict(sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64,
                            num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
                            pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=192),
        "vae": dict(SD_VAE, latent_channels=16, sample_size=1024, scaling_factor=1.5305, shift_factor=0.0609,
                    use_quant_conv=False, use_post_quant_conv=False),
        "text_encoder": CLIP_L_TEXT, "text_encoder_2": CLIP_G_TEXT, "text_encoder_3": T5_XXL,
    },
    "sd15": {
        "unet": dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                     block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
                     down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                     up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3),
        "vae": dict(SD_VAE, latent_channels=4, sample_size=512, scaling_factor=0.18215),
        "text_encoder": dict(CLIP_L_TEXT, projection_dim=768),
    },
}
ADAPTER_OF = {"sd3-medium": "sd3", "sd15": "sd15"}
REWARDS = {  # CLIPModel configs of the rewards' backbones
    "clipscore": dict(text=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12),
                      vision=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                                  patch_size=14, hidden_act="quick_gelu"), projection_dim=768, text_act="quick_gelu"),
    "pickscore": dict(text=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16),
                      vision=dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
                                  patch_size=14, hidden_act="gelu"), projection_dim=1024, text_act="gelu"),
}


def clip_tokenizer(directory, max_length: int = 77):
    """A CLIPTokenizer with a character-level BPE vocabulary (no merges), saved to `directory`."""
    from transformers import CLIPTokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab = {}
    for tok in ["<|startoftext|>", "<|endoftext|>"] + list(CHARS) + [c + "</w>" for c in CHARS]:
        vocab.setdefault(tok, len(vocab))
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"), model_max_length=max_length,
                        pad_token="<|endoftext|>")
    tok.save_pretrained(directory)
    return tok


def t5_tokenizer(directory):
    """A T5 tokenizer (fast, tokenizers-backed) with a character-level unigram vocabulary."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [(c, -2.0) for c in CHARS] + [("▁" + c, -1.0) for c in CHARS]
    tk = Tokenizer(models.Unigram(pieces, unk_id=2))
    tk.pre_tokenizer = pre_tokenizers.Metaspace()
    tk.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tok = T5TokenizerFast(tokenizer_object=tk, eos_token="</s>", pad_token="<pad>", unk_token="<unk>", extra_ids=0)
    tok.save_pretrained(directory)
    return tok


def _clip_text(cls, spec: dict):
    from transformers import CLIPTextConfig

    return cls(CLIPTextConfig(**spec, bos_token_id=0, eos_token_id=1, pad_token_id=1))


def build_components(arch: str, with_t5: bool = False) -> dict:
    """The networks of a pipeline architecture, randomly initialised on the current default device."""
    from diffusers import AutoencoderKL, SD3Transformer2DModel, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    if arch not in PIPELINES:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(PIPELINES)}")
    spec = PIPELINES[arch]
    parts = {"vae": AutoencoderKL(**spec["vae"])}
    if arch == "sd3-medium":
        parts["transformer"] = SD3Transformer2DModel(**spec["transformer"])
        parts["text_encoder"] = _clip_text(CLIPTextModelWithProjection, spec["text_encoder"])
        parts["text_encoder_2"] = _clip_text(CLIPTextModelWithProjection, spec["text_encoder_2"])
        parts["text_encoder_3"] = (T5EncoderModel(T5Config(**spec["text_encoder_3"], decoder_start_token_id=0,
                                                           pad_token_id=0, eos_token_id=1)) if with_t5 else None)
    else:
        parts["unet"] = UNet2DConditionModel(**spec["unet"])
        parts["text_encoder"] = _clip_text(CLIPTextModel, spec["text_encoder"])
    return parts


def random_pipeline(arch: str, directory, seed: int = 0, with_t5: bool = False, dtype=torch.bfloat16,
                    device: str = "cpu") -> Path:
    """Save a pipeline of the named architecture with random weights (in `dtype`) to `directory`."""
    from diffusers import (FlowMatchEulerDiscreteScheduler, PNDMScheduler, StableDiffusion3Pipeline,
                           StableDiffusionPipeline)

    directory = Path(directory)
    torch.manual_seed(seed)
    with torch.device(device):
        parts = {k: (v.to(dtype).eval() if v is not None else None) for k, v in build_components(arch, with_t5).items()}
    with tempfile.TemporaryDirectory() as tmp:  # the pipeline saves its own copy of the tokenizers
        tok = clip_tokenizer(Path(tmp, "clip"))
        t5tok = t5_tokenizer(Path(tmp, "t5")) if with_t5 else None
    if arch == "sd3-medium":
        pipe = StableDiffusion3Pipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), tokenizer=tok,
                                        tokenizer_2=tok, tokenizer_3=t5tok, **parts)
    else:
        scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                  num_train_timesteps=1000, skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1)
        pipe = StableDiffusionPipeline(scheduler=scheduler, tokenizer=tok, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False, **parts)
    pipe.save_pretrained(directory)
    return directory


def clip_config(name: str):
    """The transformers CLIPConfig of a reward backbone (`clipscore`: ViT-L/14, `pickscore`: ViT-H/14)."""
    from transformers import CLIPConfig

    if name not in REWARDS:
        raise ValueError(f"no random-weights architecture for reward {name!r}; known: {', '.join(REWARDS)}")
    spec = REWARDS[name]
    text = dict(spec["text"], vocab_size=49408, max_position_embeddings=77, hidden_act=spec["text_act"],
                bos_token_id=0, eos_token_id=1, pad_token_id=1)
    return CLIPConfig(text_config=text, vision_config=dict(spec["vision"], image_size=224),
                      projection_dim=spec["projection_dim"])


def random_reward(name: str, directory, seed: int = 0, dtype=torch.float32, device: str = "cpu") -> Path:
    """Save a CLIP reward backbone with random weights and its processor (224 px) to `directory`."""
    from transformers import CLIPImageProcessor, CLIPModel, CLIPProcessor

    directory = Path(directory)
    torch.manual_seed(seed)
    with torch.device(device):
        model = CLIPModel(clip_config(name)).to(dtype).eval()
    model.save_pretrained(directory)
    with tempfile.TemporaryDirectory() as tmp:
        tok = clip_tokenizer(tmp)
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 224},
                                                                 crop_size={"height": 224, "width": 224}),
                              tokenizer=tok)
    processor.save_pretrained(directory)
    return directory
