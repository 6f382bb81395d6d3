"""ImageReward v1.0 (Xu et al. 2023, THUDM/ImageReward) on transformers' own BLIP modules.

The `image-reward` package (1.5) no longer runs under transformers 5, so its checkpoint
`ImageReward.pt` and `med_config.json` (Hugging Face repo THUDM/ImageReward) are loaded here into
`transformers.BlipVisionModel` (the BLIP ViT) and `BlipTextModel` (BLIP's BERT with cross-attention,
"med") plus the reward head, through an explicit table of state-dict renames (`port_key`).

What the authors' scoring path does, and this port reproduces (read in THUDM/ImageReward @ c1392c6:
ImageReward/ImageReward.py `ImageReward.score`, `inference_rank`, `score_gard`, `MLP`, `_transform`;
models/BLIP/blip.py `init_tokenizer`, `create_vit`; blip_pretrain.py; vit.py; med.py):

* Tokenizer: `bert-base-uncased` with BLIP's special tokens added in this order, bos `[DEC]`
  (id 30522) then the additional special token `[ENC]` (id 30523), so 30524 ids, the med vocab.
  Prompts are padded to and truncated at 35 tokens (`padding="max_length"`). The reward does NOT
  put `[ENC]` in place of `[CLS]` at position 0 (BLIP's ITM head does; ImageReward's `score`,
  `inference_rank` and `score_gard` pass the tokenizer's ids unchanged), so neither does this port.
* Image: ViT-L/16 at 224 px (width 1024, 24 blocks, 16 heads, MLP 4096, qkv bias, exact-erf GELU,
  pre-norm blocks, LayerNorm eps 1e-6, final LayerNorm on all tokens). All 197 tokens are the
  cross-attention memory, with an all-ones mask.
* Text: med BERT (12 layers, width 768, 12 heads, post-norm, LayerNorm eps 1e-12 from
  med_config.json, absolute positions, no token-type embedding), bidirectional self-attention over
  the padding mask and cross-attention to the image tokens in every layer. The authors set the
  cross-attention input width to the ViT's width (1024), overriding med_config's `encoder_width`
  (blip_pretrain.py), and so does this port. Features = `last_hidden_state[:, 0]`.
* Head: Linear 768→1024→128→64→16→1 with Dropout(0.2), (0.2), (0.1) after the first three and no
  nonlinearity (the authors' ReLUs are commented out), so an affine map at inference.
* Reward = (head(features) − 0.16717362830052426) / 1.0333394966054072.
* `score_pil`: the authors' transform on PIL images, Resize(224, bicubic) of the shorter side,
  CenterCrop(224), RGB, ToTensor, Normalize(CLIP mean, CLIP std). `forward` does the same in torch
  (`clip_preprocess`: antialiased bicubic), differentiable in the pixels, and equal, value and
  gradient, to the authors' ReFL tensor transform (torchvision Resize, CenterCrop, Normalize on
  tensors; tests, square and non-square images); it differs from `score_pil` by the 8-bit rounding
  of PIL images and PIL's bicubic kernel (tests: < 0.02 in reward).

Differences that do not change the numbers: padding is masked with −10000 by the authors and with
the dtype's minimum by transformers (both give exp(·) = 0 in float32); dropouts are set to zero
(the authors score in eval mode); `blip.vision_proj` and `blip.text_proj` (BLIP's contrastive
projections, stored in the checkpoint but not on the reward's path) are read and dropped. The
image size follows `vision_config.json` when the weights folder has one (tests use a tiny ViT).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from torch import nn

from ..registry import register
from .image import CLIP_MEAN, CLIP_STD, TextImageReward, clip_preprocess, find_weights

REPO = "THUDM/ImageReward"
TOKENIZER_REPO = "bert-base-uncased"
CHECKPOINT, MED_CONFIG, VISION_CONFIG = "ImageReward.pt", "med_config.json", "vision_config.json"
HOW = (f"download them with `hf download {REPO} {CHECKPOINT} {MED_CONFIG} --local-dir DIR` "
       f"and pass DIR as the reward's path")

REWARD_MEAN = 0.16717362830052426  # ImageReward.__init__: self.mean
REWARD_STD = 1.0333394966054072    # ImageReward.__init__: self.std
MAX_LENGTH = 35                    # tokenizer max_length in ImageReward.score
SPECIAL_TOKENS = ({"bos_token": "[DEC]"}, {"additional_special_tokens": ["[ENC]"]})  # blip.init_tokenizer
HEAD_WIDTHS = (1024, 128, 64, 16, 1)  # the MLP's Linear outputs; Dropouts sit at indices 1, 3, 5

# BLIP ViT-L/16 at 224 px (blip.create_vit('large', 224)); vision_config.json may override fields.
VIT_L = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
             patch_size=16, image_size=224, hidden_act="gelu", layer_norm_eps=1e-6, attention_dropout=0.0)

# Authors' checkpoint names → this module's names. The vision encoder is timm-style in the authors'
# code; the text encoder was adapted from the same med.py by transformers, so its names carry over.
# No tensor needs reshaping: both ViTs keep q, k, v fused in one [3D, D] Linear split as
# (3, heads, head_dim), and both keep the class token [1, 1, D] and positions [1, N + 1, D].
_RENAMES = [(re.compile("^" + a + "$"), b) for a, b in [
    (r"blip\.visual_encoder\.cls_token", r"vision.embeddings.class_embedding"),
    (r"blip\.visual_encoder\.pos_embed", r"vision.embeddings.position_embedding"),
    (r"blip\.visual_encoder\.patch_embed\.proj\.(weight|bias)", r"vision.embeddings.patch_embedding.\1"),
    (r"blip\.visual_encoder\.blocks\.(\d+)\.norm1\.(weight|bias)", r"vision.encoder.layers.\1.layer_norm1.\2"),
    (r"blip\.visual_encoder\.blocks\.(\d+)\.attn\.qkv\.(weight|bias)", r"vision.encoder.layers.\1.self_attn.qkv.\2"),
    (r"blip\.visual_encoder\.blocks\.(\d+)\.attn\.proj\.(weight|bias)",
     r"vision.encoder.layers.\1.self_attn.projection.\2"),
    (r"blip\.visual_encoder\.blocks\.(\d+)\.norm2\.(weight|bias)", r"vision.encoder.layers.\1.layer_norm2.\2"),
    (r"blip\.visual_encoder\.blocks\.(\d+)\.mlp\.(fc[12])\.(weight|bias)", r"vision.encoder.layers.\1.mlp.\2.\3"),
    (r"blip\.visual_encoder\.norm\.(weight|bias)", r"vision.post_layernorm.\1"),
    (r"blip\.text_encoder\.(.+)", r"text.\1"),
    (r"mlp\.layers\.(\d+)\.(weight|bias)", r"head.\1.\2"),
]]
POSITION_IDS = "blip.text_encoder.embeddings.position_ids"  # a buffer in med.py, a non-persistent one here
DROPPED = re.compile(r"^blip\.(vision_proj|text_proj)\.(weight|bias)$")  # BLIP's ITC projections, unused


def port_key(key: str) -> str | None:
    """This port's name for an authors' checkpoint key; None for one the reward does not use."""
    if DROPPED.match(key) or key == POSITION_IDS:
        return None
    for pattern, target in _RENAMES:
        if pattern.match(key):
            return pattern.sub(target, key)
    raise KeyError(key)


def convert_state_dict(state: dict) -> dict:
    """The authors' state dict under this port's names (the position-id buffer and the dropped ITC
    projections left out); an unknown key is an error, not silently skipped."""
    unknown = []
    out = {}
    for key, value in state.items():
        try:
            new = port_key(key)
        except KeyError:
            unknown.append(key)
            continue
        if new is not None:
            out[new] = value
    if unknown:
        raise ValueError(f"ImageReward checkpoint: {len(unknown)} unknown key(s), e.g. {unknown[:3]}")
    return out


def reward_head(width: int) -> nn.Sequential:
    """The authors' MLP: Linear layers at indices 0, 2, 4, 6, 7 (so the checkpoint's indices apply);
    their Dropouts, inactive at inference, are identities here; no nonlinearity anywhere."""
    a, b, c, d, e = HEAD_WIDTHS
    return nn.Sequential(nn.Linear(width, a), nn.Identity(), nn.Linear(a, b), nn.Identity(),
                         nn.Linear(b, c), nn.Identity(), nn.Linear(c, d), nn.Linear(d, e))


def _rgb(image):
    return image.convert("RGB")


def pil_transform(size: int):
    """The authors' `_transform(size)` on PIL images."""
    from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Normalize, Resize, ToTensor

    return Compose([Resize(size, interpolation=InterpolationMode.BICUBIC), CenterCrop(size), _rgb, ToTensor(),
                    Normalize(CLIP_MEAN, CLIP_STD)])


@register("reward", "imagereward", domain="image", weights=True, features=False)
class ImageReward(TextImageReward):
    """ImageReward v1.0 on images in [0, 1] and their prompts; frozen, gradients reach the images only."""

    def __init__(self, vision, text, tokenizer):
        super().__init__()
        self.vision, self.text = vision, text
        self.head = reward_head(text.config.hidden_size)
        self.tokenizer = tokenizer
        self.image_size = int(vision.config.image_size)

    def tokens(self, prompts: list[str], device):
        tok = self.tokenizer(list(prompts), padding="max_length", truncation=True, max_length=MAX_LENGTH,
                             return_tensors="pt")
        return tok.input_ids.to(device), tok.attention_mask.to(device)

    def features(self, pixels: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """The text encoder's [CLS] state, cross-attending to the image tokens: [B, 768]."""
        if len(prompts) != pixels.shape[0]:
            raise ValueError(f"ImageReward scores one prompt per image: got {len(prompts)} prompts for "
                             f"{pixels.shape[0]} images")
        image_tokens = self.vision(pixel_values=pixels).last_hidden_state
        ids, mask = self.tokens(prompts, pixels.device)
        out = self.text(input_ids=ids, attention_mask=mask, encoder_hidden_states=image_tokens, is_decoder=False)
        return out.last_hidden_state[:, 0]

    def score_pixels(self, pixels: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """The normalised reward [B] of preprocessed pixels [B, 3, S, S]."""
        return ((self.head(self.features(pixels, prompts)) - REWARD_MEAN) / REWARD_STD).squeeze(-1)

    def _dtype(self):
        return self.head[0].weight.dtype

    def forward(self, images, cond=None):
        pixels = clip_preprocess(images.to(self._dtype()), self.image_size)
        return self.score_pixels(pixels, self.texts(cond)).to(images.dtype)

    @torch.no_grad()
    def score_pil(self, images, prompts):
        transform = pil_transform(self.image_size)
        pixels = torch.stack([transform(im) for im in images]).to(self.head[0].weight.device, self._dtype())
        return self.score_pixels(pixels, list(prompts)).float()

    @classmethod
    def load(cls, path=None) -> "ImageReward":
        """`path`: a folder with ImageReward.pt and med_config.json (None: the Hugging Face cache of
        THUDM/ImageReward); optional `vision_config.json` (BlipVisionConfig fields over ViT-L) and
        `tokenizer/` (else bert-base-uncased from the Hugging Face cache)."""
        from transformers import BlipTextConfig, BlipVisionConfig, BlipVisionModel
        from transformers.models.blip.modeling_blip_text import BlipTextModel

        root = find_weights("ImageReward", path, REPO, [CHECKPOINT, MED_CONFIG], HOW)
        tokenizer = load_tokenizer(root)
        med = json.loads((root / MED_CONFIG).read_text())
        vision_fields = dict(VIT_L)
        if (root / VISION_CONFIG).exists():
            override = json.loads((root / VISION_CONFIG).read_text())
            vision_fields.update(override)
            if "intermediate_size" not in override:  # the authors' ViT MLP ratio is 4
                vision_fields["intermediate_size"] = 4 * vision_fields["hidden_size"]
        vision_config = BlipVisionConfig(**vision_fields)
        text_config = text_config_from_med(med, vision_config.hidden_size, tokenizer, BlipTextConfig)
        if len(tokenizer) != text_config.vocab_size:
            raise ValueError(f"ImageReward: the tokenizer has {len(tokenizer)} tokens with [DEC] and [ENC], "
                             f"{MED_CONFIG} says vocab_size {text_config.vocab_size}")

        with torch.device("meta"):  # built without memory or init; every tensor comes from the checkpoint
            reward = cls(BlipVisionModel(vision_config), BlipTextModel(text_config, add_pooling_layer=False),
                         tokenizer)
        state = torch.load(root / CHECKPOINT, map_location="cpu", weights_only=True)
        reward.load_authors_state(state)
        return reward.float().requires_grad_(False).eval()

    def load_authors_state(self, state: dict):
        """Copy the authors' checkpoint in, checking that it fills every tensor of the port exactly."""
        ported = convert_state_dict(state)
        own = self.state_dict()
        missing = sorted(set(own) - set(ported))
        extra = sorted(set(ported) - set(own))
        wrong = [k for k in set(own) & set(ported) if own[k].shape != ported[k].shape]
        if missing or extra or wrong:
            raise ValueError(f"ImageReward checkpoint does not fit the model: missing {missing[:3]}, "
                             f"unexpected {extra[:3]}, wrong shape {[(k, tuple(ported[k].shape)) for k in wrong[:3]]} "
                             f"({len(missing)}, {len(extra)}, {len(wrong)} in all)")
        self.load_state_dict(ported, strict=True, assign=True)
        emb = self.text.embeddings
        n = emb.position_embeddings.num_embeddings
        ids = state.get(POSITION_IDS, torch.arange(n).expand(1, -1))
        if tuple(ids.shape) != (1, n):
            raise ValueError(f"ImageReward checkpoint: {POSITION_IDS} has shape {tuple(ids.shape)}, expected (1, {n})")
        emb.position_ids = ids.to(torch.long).clone()
        left = [name for name, t in [*self.named_parameters(), *self.named_buffers()] if t.is_meta]
        if left:
            raise ValueError(f"ImageReward: tensors not set from the checkpoint: {left[:3]}")


def text_config_from_med(med: dict, encoder_width: int, tokenizer, config_cls):
    """BlipTextConfig for the authors' med BERT config; the cross-attention width is the ViT's, as
    the authors set it (med_config's `encoder_width` is overridden), and dropouts are zero."""
    if med.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(f"ImageReward: {MED_CONFIG} asks for {med['position_embedding_type']} positions; "
                         f"only absolute ones are ported")
    if not med.get("add_cross_attention", False):
        raise ValueError(f"ImageReward: {MED_CONFIG} has no cross-attention (add_cross_attention is not true)")
    return config_cls(
        vocab_size=med["vocab_size"], hidden_size=med["hidden_size"], intermediate_size=med["intermediate_size"],
        num_hidden_layers=med["num_hidden_layers"], num_attention_heads=med["num_attention_heads"],
        max_position_embeddings=med["max_position_embeddings"], hidden_act=med.get("hidden_act", "gelu"),
        layer_norm_eps=med.get("layer_norm_eps", 1e-12), pad_token_id=med.get("pad_token_id", 0),
        encoder_hidden_size=encoder_width, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        is_decoder=True,  # transformers builds the cross-attention layers only for a "decoder" config
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.sep_token_id, sep_token_id=tokenizer.sep_token_id,
        use_cache=False)


def load_tokenizer(root: Path):
    """BLIP's BERT tokenizer: `root/tokenizer/` if present, else bert-base-uncased from the Hugging
    Face cache (offline), with `[DEC]` and `[ENC]` added as the authors do."""
    from transformers import BertTokenizer

    where = root / "tokenizer"
    if not where.is_dir():
        where = find_weights("ImageReward tokenizer", None, TOKENIZER_REPO, ["vocab.txt"],
                             f"download it with `hf download {TOKENIZER_REPO} vocab.txt "
                             f"tokenizer_config.json` or put a BertTokenizer in {root / 'tokenizer'}")
    tokenizer = BertTokenizer.from_pretrained(str(where), local_files_only=True)
    for tokens in SPECIAL_TOKENS:
        tokenizer.add_special_tokens(tokens)
    return tokenizer
