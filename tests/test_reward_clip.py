"""PickScore and CLIPScore on tiny CLIP checkpoints saved in the real layout: loading, the
torch training path against the processor's PIL path, gradients, missing files."""
import pytest
import torch

from eam.checkpoint import MissingWeights
from eam.prompts import PromptBatch
from eam.rewards import load_reward
from eam.rewards.image import to_pil
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
    x = smooth_images(2, 40, 40, seed=2).double()
    cond = PromptBatch(PROMPTS[:2])
    x.requires_grad_(True)
    (g,) = torch.autograd.grad(reward(x, cond).sum(), x)
    d = torch.randn_like(x)
    eps = 1e-5
    with torch.no_grad():
        fd = (reward(x + eps * d, cond).sum() - reward(x - eps * d, cond).sum()) / (2 * eps)
    assert g.abs().sum() > 0
    torch.testing.assert_close((g * d).sum(), fd, rtol=1e-6, atol=1e-8)


def test_missing_weights_name_the_file(tmp_path):
    with pytest.raises(MissingWeights, match=r"config\.json not found in .*empty.*hf download"):
        load_reward("clipscore", tmp_path / "empty")
