"""PickScore and CLIPScore on tiny CLIP checkpoints saved in the real layout: loading, the
torch training path against the processor's PIL path, gradients, missing files."""
import pytest
import torch

from eam.checkpoint import MissingWeights
from eam.prompts import PromptBatch
from eam.rewards import load_reward
from eam.rewards.image import to_pil
from tiny.fd import assert_reward_gradient
from tiny.hf import clip_model
from tiny.images import smooth_images

PROMPTS = ["a red fox in the snow", "an astronaut riding a horse", "a bowl of fruit"]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("clip")
    clip_model(d)
    return d



@pytest.mark.parametrize("name", ["pickscore", "clipscore"])
def test_score_equals_clip_forward(clip_dir, name):
    """The reward on PIL images equals transformers' own CLIPModel forward (logits_per_image), an
    independent route through the same checkpoint."""
    from transformers import CLIPModel, CLIPProcessor

    reward = load_reward(name, clip_dir)
    model, proc = CLIPModel.from_pretrained(clip_dir), CLIPProcessor.from_pretrained(clip_dir)
    if name == "pickscore":  # PickScore scores through the PIL backend its authors used
        from transformers import CLIPImageProcessorPil

        proc.image_processor = CLIPImageProcessorPil.from_pretrained(clip_dir)
    pil = to_pil(smooth_images(3, 40, 40))
    inputs = proc(text=PROMPTS, images=pil, return_tensors="pt", padding="max_length", max_length=16, truncation=True)
    with torch.no_grad():
        logits = model(**inputs).logits_per_image.diagonal()  # logit_scale · cos
    expected = logits if name == "pickscore" else 100 * logits / model.logit_scale.exp()
    torch.testing.assert_close(reward.score_pil(pil, PROMPTS), expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("name", ["pickscore", "clipscore"])
@pytest.mark.parametrize("shape", [(64, 64), (48, 80)])
def test_torch_path_matches_pil_path(clip_dir, name, shape):
    """Tolerance 1e-3 in cos (0.1 points of CLIPScore's 100 · cos, the scores of other images
    differ by several points): the paths differ by 8-bit rounding and by torch's antialiased bicubic
    against PIL's bicubic resampling."""
    reward = load_reward(name, clip_dir)
    x = smooth_images(3, *shape, seed=1)
    with torch.no_grad():
        ours = reward(x, PromptBatch(PROMPTS))
        per_cos = reward.scale(torch.ones(()))
    torch.testing.assert_close(ours / per_cos, reward.score_pil(to_pil(x), PROMPTS) / per_cos, rtol=0, atol=1e-3)


def test_gradient_matches_finite_differences(clip_dir):
    reward = load_reward("pickscore", clip_dir).double()
    assert_reward_gradient(reward, smooth_images(2, 40, 40, seed=2).double(), PromptBatch(PROMPTS[:2]),
                           rtol=1e-6, atol=1e-8)


def test_missing_weights_name_the_file(tmp_path):
    with pytest.raises(MissingWeights, match=r"config\.json not found in .*empty.*hf download"):
        load_reward("clipscore", tmp_path / "empty")


def _torchmetrics_clipscore(clip_dir, images_u8, prompts):
    """torchmetrics' CLIPScore, one image–prompt pair at a time (it averages over a batch). torchmetrics
    1.9 expects transformers 4's `get_*_features`, which returned the projected features as a tensor;
    transformers 5 returns them as `.pooler_output` of an output object, so the model is given that API."""
    from torchmetrics.functional.multimodal import clip_score
    from transformers import CLIPModel, CLIPProcessor

    class CLIP4(CLIPModel):
        def get_image_features(self, *args, **kwargs):
            return super().get_image_features(*args, **kwargs).pooler_output

        def get_text_features(self, *args, **kwargs):
            return super().get_text_features(*args, **kwargs).pooler_output

    def model():
        return CLIP4.from_pretrained(clip_dir), CLIPProcessor.from_pretrained(clip_dir)

    return torch.stack([clip_score(img, p, model_name_or_path=model).detach().float()
                        for img, p in zip(images_u8, prompts)])


@pytest.mark.parametrize("shape", [(40, 40), (48, 80), (96, 32)])
def test_clipscore_equals_torchmetrics(clip_dir, shape):
    """The evaluation path (8-bit images through the CLIP processor) equals torchmetrics' CLIPScore,
    clamped at 0 as torchmetrics is, on square and non-square images and prompts within CLIP's context."""
    reward = load_reward("clipscore", clip_dir)
    prompts = ["a red fox", "a bowl of fruit", "snow"]  # at most 16 tokens with BOS and EOS
    x = smooth_images(3, *shape, seed=3)
    u8 = (x * 255).round().to(torch.uint8)
    ours = reward.score_pil(to_pil(u8.float() / 255), prompts)
    ref = _torchmetrics_clipscore(clip_dir, u8, prompts)
    assert (ref > 0).sum() >= 1
    torch.testing.assert_close(ours.clamp(min=0), ref, rtol=1e-5, atol=1e-4)


def test_clipscore_truncates_long_prompts_keeping_the_end_token(clip_dir):
    """A prompt longer than CLIP's context (16 tokens in the tiny model, 77 in ViT-L/14) is cut to its
    first 14 (75) tokens followed by the end-of-text token, where CLIP pools: the prompt's own prefix
    scores the same. This is OpenAI CLIP's `clip.tokenize(truncate=True)`, which the official AM code
    scores with; torchmetrics instead cuts the ids without the end token, so CLIP pools elsewhere and
    its score differs (measured on ViT-L/14: up to 4.4 points)."""
    reward = load_reward("clipscore", clip_dir)
    prefix = "a red fox in the ox"  # 14 character tokens
    long = prefix + " jumps over the lazy dog"
    assert len(reward.processor.tokenizer(prefix).input_ids) == 16 < len(reward.processor.tokenizer(long).input_ids)
    x = smooth_images(1, 40, 40, seed=4)
    u8 = (x * 255).round().to(torch.uint8)
    pil = to_pil(u8.float() / 255)
    ours_long, ours_prefix = reward.score_pil(pil, [long]), reward.score_pil(pil, [prefix])
    torch.testing.assert_close(ours_long, ours_prefix)
    ref_prefix = _torchmetrics_clipscore(clip_dir, u8, [prefix])
    torch.testing.assert_close(ours_prefix.clamp(min=0), ref_prefix, rtol=1e-5, atol=1e-4)
    text = reward.text_embeds([long, "zzzz zzzz zzzz zzzz zzzz"], "cpu")
    assert (text[0] - text[1]).abs().max() > 1e-3  # two long prompts keep distinct embeddings


@pytest.mark.parametrize("shape", [(40, 40), (48, 80), (97, 33)])
def test_pickscore_equals_its_readme_code(clip_dir, shape):
    """PickScore's README code (processor(images=..., return_tensors="pt"), get_image_features and
    get_text_features, logit_scale · cosine) with the processor it ran with, transformers 4's PIL-based
    CLIPImageProcessor (`CLIPImageProcessorPil` in transformers 5), equals the evaluation path."""
    from transformers import CLIPImageProcessorPil, CLIPModel, CLIPProcessor

    reward = load_reward("pickscore", clip_dir)
    model = CLIPModel.from_pretrained(clip_dir)
    processor = CLIPProcessor.from_pretrained(clip_dir)
    processor.image_processor = CLIPImageProcessorPil.from_pretrained(clip_dir)
    prompts = ["a red fox", "a bowl of fruit"]
    pil = to_pil(smooth_images(2, *shape, seed=8))
    with torch.no_grad():
        image_inputs = processor(images=pil, padding=True, truncation=True, max_length=16, return_tensors="pt")
        text_inputs = processor(text=prompts, padding=True, truncation=True, max_length=16, return_tensors="pt")
        img = model.get_image_features(**image_inputs).pooler_output
        txt = model.get_text_features(**text_inputs).pooler_output
        img, txt = img / img.norm(dim=-1, keepdim=True), txt / txt.norm(dim=-1, keepdim=True)
        readme = model.logit_scale.exp() * (img * txt).sum(-1)
    torch.testing.assert_close(reward.score_pil(pil, prompts), readme, rtol=1e-5, atol=1e-5)
