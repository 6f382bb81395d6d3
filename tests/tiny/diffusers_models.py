"""Tiny Stable Diffusion 3 and 1.5 pipelines, randomly initialised from configs and saved with
`save_pretrained` in the diffusers layout (model_index.json + one folder per component), so the
adapters load them exactly as they load the real checkpoints."""
from __future__ import annotations

from pathlib import Path

import torch

from eam.architectures import clip_tokenizer, t5_tokenizer


def _clip_text(cls, tok, hidden, projection, seed):
    from transformers import CLIPTextConfig

    torch.manual_seed(seed)
    return cls(CLIPTextConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                              num_attention_heads=2, max_position_embeddings=77, projection_dim=projection,
                              bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_act="gelu")).eval()


def _vae(latent_channels, seed, **kw):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=latent_channels, block_out_channels=(8, 16),
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         layers_per_block=1, norm_num_groups=4, sample_size=32, **kw).eval()


def sd3_pipeline(directory, with_t5: bool = True, seed: int = 0) -> Path:
    """A tiny SD3 pipeline: SD3Transformer2DModel, AutoencoderKL (16 latent channels, scale 2),
    two CLIP text encoders with projection, optionally T5, FlowMatchEulerDiscreteScheduler."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection, T5Config, T5EncoderModel

    directory = Path(directory)
    tmp = directory.parent / (directory.name + ".tok")
    tok = clip_tokenizer(tmp / "clip", max_length=77)
    te1 = _clip_text(CLIPTextModelWithProjection, tok, 16, 16, seed)
    te2 = _clip_text(CLIPTextModelWithProjection, tok, 24, 16, seed + 1)
    t5 = t5tok = None
    if with_t5:
        t5tok = t5_tokenizer(tmp / "t5")
        torch.manual_seed(seed + 2)
        t5 = T5EncoderModel(T5Config(vocab_size=len(t5tok), d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=2,
                                     decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)).eval()
    torch.manual_seed(seed + 3)
    transformer = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=16, num_layers=2, attention_head_dim=8,
                                        num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=16,
                                        pooled_projection_dim=32, out_channels=16, pos_embed_max_size=16).eval()
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_vae(16, seed + 4, shift_factor=0.0609, scaling_factor=1.5305, use_quant_conv=False, use_post_quant_conv=False),
        text_encoder=te1, tokenizer=tok, text_encoder_2=te2, tokenizer_2=tok, text_encoder_3=t5, tokenizer_3=t5tok)
    pipe.save_pretrained(directory)
    return directory


def sd15_pipeline(directory, seed: int = 0) -> Path:
    """A tiny SD1.5 pipeline: UNet2DConditionModel (ε-prediction), AutoencoderKL (4 latent channels),
    a CLIP text encoder, and the DDPM scaled-linear schedule of SD1.5 (PNDM scheduler config)."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    directory = Path(directory)
    tok = clip_tokenizer(directory.parent / (directory.name + ".tok"), max_length=77)
    te = _clip_text(CLIPTextModel, tok, 16, 16, seed)
    torch.manual_seed(seed + 1)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(16, 32), norm_num_groups=8, cross_attention_dim=16,
                                attention_head_dim=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")).eval()
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                              skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(unet=unet, scheduler=scheduler, vae=_vae(4, seed + 2, scaling_factor=0.18215),
                                   text_encoder=te, tokenizer=tok, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(directory)
    return directory
