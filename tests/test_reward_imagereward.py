"""ImageReward on a tiny random checkpoint written in the authors' format (their state-dict names,
med_config.json, a BERT tokenizer folder): every key lands in the port, the port equals an
independent re-computation from the raw tensors, the torch path agrees with the PIL path,
gradients match finite differences, missing files are one-line errors."""
import json
import shutil

import pytest
import torch
import torch.nn.functional as F

from eam.checkpoint import MissingWeights
from eam.prompts import PromptBatch
from eam.rewards import load_reward
from eam.rewards.image import to_pil
from eam.rewards.imagereward import port_key
from tiny.fd import assert_reward_gradient
from tiny.hf import bert_tokenizer
from tiny.images import smooth_images

# Tiny sizes: ViT width 48 ≠ text width 32, so the cross-attention key/value [32, 48] checks that
# the image width (not med_config's encoder_width) is used, as the authors do.
VISION = dict(hidden_size=48, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
              image_size=32, patch_size=8)
MED = {"architectures": ["BertModel"], "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu",
       "hidden_dropout_prob": 0.1, "hidden_size": 32, "initializer_range": 0.02, "intermediate_size": 64,
       "layer_norm_eps": 1e-12, "max_position_embeddings": 40, "model_type": "bert", "num_attention_heads": 4,
       "num_hidden_layers": 2, "pad_token_id": 0, "type_vocab_size": 2, "vocab_size": None,
       "encoder_width": 768, "add_cross_attention": True}
PROMPTS = ["a red fox in the snow", "an astronaut riding a horse on mars, highly detailed, trending",
           "fruit"]
MEAN, STD = 0.16717362830052426, 1.0333394966054072  # ImageReward.py, ImageReward.__init__


def authors_shapes(vis: dict, med: dict) -> dict:
    """Key → shape of `ImageReward(...).state_dict()` as the authors' modules define it
    (ImageReward.py MLP; blip_pretrain.py BLIP_Pretrain; vit.py VisionTransformer with mlp_ratio 4
    and qkv bias; med.py BertModel without pooler, with cross-attention)."""
    D, P, S = vis["hidden_size"], vis["patch_size"], vis["image_size"]
    H, I, V, L = med["hidden_size"], med["intermediate_size"], med["vocab_size"], med["max_position_embeddings"]
    s = {}
    v = "blip.visual_encoder."
    s.update({v + "cls_token": (1, 1, D), v + "pos_embed": (1, (S // P) ** 2 + 1, D),
              v + "patch_embed.proj.weight": (D, 3, P, P), v + "patch_embed.proj.bias": (D,)})
    for i in range(vis["num_hidden_layers"]):
        b = f"{v}blocks.{i}."
        for name, shape in [("norm1", (D,)), ("norm2", (D,))]:
            s[b + name + ".weight"], s[b + name + ".bias"] = shape, shape
        for name, (o, n) in [("attn.qkv", (3 * D, D)), ("attn.proj", (D, D)), ("mlp.fc1", (4 * D, D)),
                             ("mlp.fc2", (D, 4 * D))]:
            s[b + name + ".weight"], s[b + name + ".bias"] = (o, n), (o,)
    s[v + "norm.weight"], s[v + "norm.bias"] = (D,), (D,)
    t = "blip.text_encoder."
    s.update({t + "embeddings.word_embeddings.weight": (V, H), t + "embeddings.position_embeddings.weight": (L, H),
              t + "embeddings.LayerNorm.weight": (H,), t + "embeddings.LayerNorm.bias": (H,)})
    for i in range(med["num_hidden_layers"]):
        b = f"{t}encoder.layer.{i}."
        for part, kin in [("attention", H), ("crossattention", D)]:
            for name, (o, n) in [("self.query", (H, H)), ("self.key", (H, kin)), ("self.value", (H, kin)),
                                 ("output.dense", (H, H))]:
                s[f"{b}{part}.{name}.weight"], s[f"{b}{part}.{name}.bias"] = (o, n), (o,)
            s[f"{b}{part}.output.LayerNorm.weight"], s[f"{b}{part}.output.LayerNorm.bias"] = (H,), (H,)
        for name, (o, n) in [("intermediate.dense", (I, H)), ("output.dense", (H, I))]:
            s[b + name + ".weight"], s[b + name + ".bias"] = (o, n), (o,)
        s[b + "output.LayerNorm.weight"], s[b + "output.LayerNorm.bias"] = (H,), (H,)
    for name, width in [("vision_proj", D), ("text_proj", H)]:  # embed_dim 256
        s[f"blip.{name}.weight"], s[f"blip.{name}.bias"] = (256, width), (256,)
    for i, (o, n) in {0: (1024, H), 2: (128, 1024), 4: (64, 128), 6: (16, 64), 7: (1, 16)}.items():
        s[f"mlp.layers.{i}.weight"], s[f"mlp.layers.{i}.bias"] = (o, n), (o,)
    return s


def random_checkpoint(vis: dict, med: dict, seed: int = 0) -> dict:
    """Random values of a sensible scale for every authors' key (LayerNorm gains near 1, weights
    ~ 1/sqrt(fan-in)), plus med.py's persistent position-id buffer."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in authors_shapes(vis, med).items():
        x = torch.randn(shape, generator=g)
        if ("norm" in key.lower()) and key.endswith(".weight"):
            x = 1 + 0.1 * x
        elif key.endswith(".bias"):
            x = 0.1 * x
        elif len(shape) >= 2 and "embed" not in key and "cls_token" not in key:
            x = x / (torch.tensor(shape[1:]).prod().float().sqrt())
        else:
            x = 0.5 * x
        state[key] = x
    state["blip.text_encoder.embeddings.position_ids"] = torch.arange(med["max_position_embeddings"])[None]
    return state


@pytest.fixture(scope="module")
def ir_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("imagereward")
    tok = bert_tokenizer(d / "tokenizer")
    med = dict(MED, vocab_size=len(tok) + 2)  # + [DEC], [ENC]
    (d / "med_config.json").write_text(json.dumps(med))
    (d / "vision_config.json").write_text(json.dumps(VISION))
    torch.save(random_checkpoint(VISION, med), d / "ImageReward.pt")
    return d


def checkpoint(d):
    return torch.load(d / "ImageReward.pt", weights_only=True)



# ---------------------------------------------------------------------------------------------
# An independent re-computation from the raw checkpoint tensors, following the authors' modules.

def ref_vit(sd, px, vis):
    W = lambda n: sd["blip.visual_encoder." + n]  # noqa: E731
    D, h = vis["hidden_size"], vis["num_attention_heads"]
    x = F.conv2d(px, W("patch_embed.proj.weight"), W("patch_embed.proj.bias"), stride=vis["patch_size"])
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([W("cls_token").expand(len(px), -1, -1), x], 1)
    x = x + W("pos_embed")[:, :x.shape[1]]
    B, N, _ = x.shape
    for i in range(vis["num_hidden_layers"]):
        b = f"blocks.{i}."
        y = F.layer_norm(x, (D,), W(b + "norm1.weight"), W(b + "norm1.bias"), 1e-6)
        q, k, v = F.linear(y, W(b + "attn.qkv.weight"), W(b + "attn.qkv.bias")).view(B, N, 3, h, D // h).unbind(2)
        a = (torch.einsum("bnhd,bmhd->bhnm", q, k) * (D // h) ** -0.5).softmax(-1)
        y = torch.einsum("bhnm,bmhd->bnhd", a, v).reshape(B, N, D)
        x = x + F.linear(y, W(b + "attn.proj.weight"), W(b + "attn.proj.bias"))
        y = F.layer_norm(x, (D,), W(b + "norm2.weight"), W(b + "norm2.bias"), 1e-6)
        y = F.linear(F.gelu(F.linear(y, W(b + "mlp.fc1.weight"), W(b + "mlp.fc1.bias"))),
                     W(b + "mlp.fc2.weight"), W(b + "mlp.fc2.bias"))
        x = x + y
    return F.layer_norm(x, (D,), W("norm.weight"), W("norm.bias"), 1e-6)


def ref_text_cls(sd, ids, mask, memory, med):
    W = lambda n: sd["blip.text_encoder." + n]  # noqa: E731
    H, h, eps = med["hidden_size"], med["num_attention_heads"], med["layer_norm_eps"]
    lin = lambda x, n: F.linear(x, W(n + ".weight"), W(n + ".bias"))  # noqa: E731
    ln = lambda x, n: F.layer_norm(x, (H,), W(n + ".weight"), W(n + ".bias"), eps)  # noqa: E731

    def attention(prefix, x, kv, additive):
        split = lambda t: t.view(t.shape[0], t.shape[1], h, H // h).transpose(1, 2)  # noqa: E731
        q = split(lin(x, prefix + "self.query"))
        k, v = split(lin(kv, prefix + "self.key")), split(lin(kv, prefix + "self.value"))
        a = (q @ k.transpose(-1, -2) / (H // h) ** 0.5 + additive).softmax(-1)
        y = (a @ v).transpose(1, 2).reshape(x.shape)
        return ln(lin(y, prefix + "output.dense") + x, prefix + "output.LayerNorm")

    L = ids.shape[1]
    x = ln(W("embeddings.word_embeddings.weight")[ids] + W("embeddings.position_embeddings.weight")[:L],
           "embeddings.LayerNorm")
    pad = (1 - mask[:, None, None, :].to(x.dtype)) * -10000.0  # med.py's extended attention mask
    for i in range(med["num_hidden_layers"]):
        b = f"encoder.layer.{i}."
        x = attention(b + "attention.", x, x, pad)
        x = attention(b + "crossattention.", x, memory, 0.0)
        x = ln(lin(F.gelu(lin(x, b + "intermediate.dense")), b + "output.dense") + x, b + "output.LayerNorm")
    return x[:, 0]


def ref_head(sd, f):
    for i in (0, 2, 4, 6, 7):
        f = F.linear(f, sd[f"mlp.layers.{i}.weight"], sd[f"mlp.layers.{i}.bias"])
    return ((f - MEAN) / STD).squeeze(-1)


def ref_tokens(d, prompts):
    from transformers import BertTokenizer

    tok = BertTokenizer.from_pretrained(str(d / "tokenizer"))
    tok.add_special_tokens({"bos_token": "[DEC]"})
    tok.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    t = tok(prompts, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
    return tok, t.input_ids, t.attention_mask


# ---------------------------------------------------------------------------------------------

def test_every_checkpoint_key_lands_in_the_port(ir_dir):
    """Each port tensor equals the raw checkpoint tensor it is mapped from (the random values are
    all distinct, so a swapped or mis-indexed rename fails), every port tensor is set, and the only
    keys left out are BLIP's contrastive projections."""
    reward = load_reward("imagereward", ir_dir)
    sd = checkpoint(ir_dir)
    own = reward.state_dict()
    mapped = {port_key(k): k for k in sd if port_key(k) is not None}
    assert set(mapped) == set(own), (set(mapped) ^ set(own))
    for name, key in mapped.items():
        assert torch.equal(own[name], sd[key]), (name, key)
    left_out = {k for k in sd if port_key(k) is None}
    assert left_out == {"blip.vision_proj.weight", "blip.vision_proj.bias", "blip.text_proj.weight",
                        "blip.text_proj.bias", "blip.text_encoder.embeddings.position_ids"}
    assert torch.equal(reward.text.embeddings.position_ids, sd["blip.text_encoder.embeddings.position_ids"])
    assert not any(p.requires_grad for p in reward.parameters()) and not reward.training
    # LayerNorm eps as the authors': ViT 1e-6 (transformers' BLIP default is 1e-5), BERT 1e-12.
    assert reward.vision.encoder.layers[0].layer_norm1.eps == 1e-6 and reward.vision.post_layernorm.eps == 1e-6
    assert reward.text.encoder.layer[0].output.LayerNorm.eps == 1e-12


@pytest.mark.parametrize("change", ["extra", "missing", "shape"])
def test_checkpoint_that_does_not_fit_is_an_error(ir_dir, tmp_path, change):
    d = tmp_path / "ir"
    shutil.copytree(ir_dir, d)
    sd = checkpoint(d)
    if change == "extra":
        sd["blip.itm_head.weight"] = torch.zeros(2, 32)
    elif change == "missing":
        del sd["blip.visual_encoder.blocks.1.norm2.bias"]
    else:
        sd["mlp.layers.7.weight"] = torch.zeros(1, 17)
    torch.save(sd, d / "ImageReward.pt")
    expected = {"extra": r"unknown key.*blip\.itm_head\.weight",
                "missing": r"missing \['vision\.encoder\.layers\.1\.layer_norm2\.bias'\]",
                "shape": r"wrong shape \[\('head\.7\.weight', \(1, 17\)\)\]"}[change]
    with pytest.raises(ValueError, match=expected):
        load_reward("imagereward", d)


def test_tokenizer_as_the_authors(ir_dir):
    """[DEC] then [ENC] appended to the BERT vocabulary, 35 tokens, [CLS] kept at position 0."""
    from transformers import BertTokenizer

    reward = load_reward("imagereward", ir_dir)
    base = len(BertTokenizer.from_pretrained(str(ir_dir / "tokenizer")))
    tok = reward.tokenizer
    assert len(tok) == base + 2 == reward.text.config.vocab_size
    assert tok.convert_tokens_to_ids("[DEC]") == base == tok.bos_token_id
    assert tok.convert_tokens_to_ids("[ENC]") == base + 1
    ids, mask = reward.tokens(PROMPTS, "cpu")
    assert ids.shape == (3, 35) and (ids[:, 0] == tok.cls_token_id).all()
    assert mask[1].all() and ids[1, -1] == tok.sep_token_id  # the long prompt is truncated, [SEP] last
    assert not mask[2].all()  # the short one is padded


def test_port_equals_independent_computation(ir_dir):
    """ViT tokens, the text encoder's [CLS] feature and the reward, each against a re-computation
    from the raw checkpoint tensors (float64, so 1e-10 separates a correct port from any mistake)."""
    reward = load_reward("imagereward", ir_dir).double()
    sd = {k: (v.double() if v.is_floating_point() else v) for k, v in checkpoint(ir_dir).items()}
    med = json.loads((ir_dir / "med_config.json").read_text())
    g = torch.Generator().manual_seed(3)
    px = torch.randn(3, 3, 32, 32, generator=g, dtype=torch.float64)
    with torch.no_grad():
        tokens = reward.vision(pixel_values=px).last_hidden_state
        expect_tokens = ref_vit(sd, px, VISION)
        torch.testing.assert_close(tokens, expect_tokens, rtol=0, atol=1e-10)
        _, ids, mask = ref_tokens(ir_dir, PROMPTS)
        expect_feat = ref_text_cls(sd, ids, mask, expect_tokens, med)
        torch.testing.assert_close(reward.features(px, PROMPTS), expect_feat, rtol=0, atol=1e-10)
        torch.testing.assert_close(reward.score_pixels(px, PROMPTS), ref_head(sd, expect_feat), rtol=0, atol=1e-10)
        # the rewards are not degenerate: they differ between prompts and images
        r = ref_head(sd, expect_feat)
        assert r.std() > 0.05


def test_score_pil_is_the_authors_transform(ir_dir):
    """score_pil = reward of torchvision's Resize(bicubic)/CenterCrop/ToTensor/Normalize pixels."""
    from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Normalize, Resize, ToTensor

    reward = load_reward("imagereward", ir_dir)
    pil = to_pil(smooth_images(3, 48, 80, seed=4))
    t = Compose([Resize(32, interpolation=InterpolationMode.BICUBIC), CenterCrop(32), ToTensor(),
                 Normalize((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))])
    px = torch.stack([t(im) for im in pil])
    with torch.no_grad():
        torch.testing.assert_close(reward.score_pil(pil, PROMPTS), reward.score_pixels(px, PROMPTS))


@pytest.mark.parametrize("shape", [(64, 64), (48, 80), (200, 120), (96, 72)])  # 96x72: the long side truncates
def test_torch_path_matches_pil_path(ir_dir, shape):
    """Tolerance 0.02 reward units, against a spread of 0.65-0.9 between the rewards of different
    images here (the authors normalise the reward to std ~1 over images). The paths differ by the
    8-bit rounding of the PIL images (<= 0.5/255 per pixel; measured <= 0.003 in reward) and by
    torch's antialiased bicubic against PIL's bicubic (measured <= 0.006 in total at 32 px)."""
    reward = load_reward("imagereward", ir_dir)
    x = smooth_images(3, *shape, seed=1)
    with torch.no_grad():
        ours = reward(x, PromptBatch(PROMPTS))
    theirs = reward.score_pil(to_pil(x), PROMPTS)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0.02)
    with torch.no_grad():  # the tolerance is small against what the reward tells apart
        other = reward(smooth_images(3, *shape, seed=7), PromptBatch(PROMPTS))
    assert (other - ours).abs().max() > 10 * 0.02


@pytest.mark.parametrize("shape", [(64, 64), (48, 80), (32, 35), (39, 32), (49, 98), (96, 72)])
def test_torch_path_is_refls_tensor_transform(ir_dir, shape):
    """The differentiable path equals the authors' ReFL transform, torchvision's Resize(bicubic),
    CenterCrop and Normalize applied to tensors, in value and in gradient (to float rounding), on
    square and non-square images: odd crop margins (32x35, 39x32: torchvision rounds the offset half
    to even) and a long side that the scale-first product truncates a pixel short (49x98 → 63, not 64)."""
    from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Normalize, Resize

    reward = load_reward("imagereward", ir_dir).double()
    refl = Compose([Resize(32, interpolation=InterpolationMode.BICUBIC, antialias=True), CenterCrop(32),
                    Normalize((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))])
    x = smooth_images(2, *shape, seed=6).double().requires_grad_(True)
    ours = reward(x, PromptBatch(PROMPTS[:2]))
    theirs = reward.score_pixels(refl(x), PROMPTS[:2])
    torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-9)
    g_ours, g_theirs = (torch.autograd.grad(v.sum(), x, retain_graph=True)[0] for v in (ours, theirs))
    assert g_theirs.abs().max() > 0
    torch.testing.assert_close(g_ours, g_theirs, rtol=1e-7, atol=1e-10)


def test_gradient_matches_finite_differences(ir_dir):
    reward = load_reward("imagereward", ir_dir).double()
    assert_reward_gradient(reward, smooth_images(2, 40, 40, seed=2).double(), PromptBatch(PROMPTS[:2]),
                           rtol=1e-6, atol=1e-9, seed=5)


@pytest.mark.parametrize("name", ["ImageReward.pt", "med_config.json"])
def test_missing_file_is_a_one_line_error(ir_dir, tmp_path, name):
    d = tmp_path / "ir"
    shutil.copytree(ir_dir, d)
    (d / name).unlink()
    with pytest.raises(MissingWeights) as err:
        load_reward("imagereward", d)
    msg = str(err.value)
    assert "\n" not in msg and f"{name} not found in {d}" in msg and "hf download THUDM/ImageReward" in msg


def test_missing_tokenizer_is_a_one_line_error(ir_dir, tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    d = tmp_path / "ir"
    shutil.copytree(ir_dir, d)
    shutil.rmtree(d / "tokenizer")
    with pytest.raises(MissingWeights) as err:
        load_reward("imagereward", d)
    msg = str(err.value)
    assert "\n" not in msg and "vocab.txt not found" in msg and "bert-base-uncased" in msg
