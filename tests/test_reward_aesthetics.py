"""LAION Aesthetics v2 on a tiny transformers CLIP saved with `save_pretrained` in `clip/` and an
MLP head saved as `sac+logos+ava1-l14-linearMSE.pth` with the authors' key names (input width =
the tiny projection dim): loading, the score against a computation by hand, the torch training path
against the PIL path, gradients, missing files."""
import pytest
import torch

from eam.checkpoint import MissingWeights
from eam.rewards import load_reward
from eam.rewards.aesthetics import WEIGHTS
from eam.rewards.image import to_pil
from tiny.fd import assert_reward_gradient
from tiny.hf import clip_model
from tiny.images import smooth_images

PROJ = 16
KEYS = [f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias")]  # as in the authors' .pth


def tiny_mlp_state(width, seed=1):
    """The authors' head, shrunk at the input only, with weights large enough that random images
    get clearly different scores (default init would squeeze them into ±0.01)."""
    g = torch.Generator().manual_seed(seed)
    dims = [width, 1024, 128, 64, 16, 1]
    state = {}
    for i, (a, b) in zip((0, 2, 4, 6, 7), zip(dims, dims[1:])):
        state[f"layers.{i}.weight"] = torch.randn(b, a, generator=g) * 2 / a ** 0.5
        state[f"layers.{i}.bias"] = torch.randn(b, generator=g) * 0.1
    state["layers.7.bias"] += 5.0
    return state


@pytest.fixture(scope="module")
def aes(tmp_path_factory):
    """(folder, the CLIPModel object saved in folder/clip)."""
    d = tmp_path_factory.mktemp("aesthetics")
    model, _ = clip_model(d / "clip", image_size=32, projection_dim=PROJ)
    torch.save(tiny_mlp_state(PROJ), d / WEIGHTS)
    return d, model



def test_loads_the_saved_weights(aes):
    d, ref = aes
    reward = load_reward("aesthetics", d)
    saved = torch.load(d / WEIGHTS, map_location="cpu", weights_only=True)
    assert sorted(saved) == sorted(KEYS) and sorted(reward.mlp.state_dict()) == sorted(KEYS)
    for k, v in reward.mlp.state_dict().items():
        assert torch.equal(v, saved[k]), k
    ref_state = ref.state_dict()
    for k, v in reward.clip.state_dict().items():
        assert torch.equal(v, ref_state[k]), k
    assert not any(p.requires_grad for p in reward.parameters())
    reward.train()  # frozen: a parent's .train() leaves the dropouts off
    assert not any(m.training for m in reward.modules())


def test_score_by_hand(aes):
    """score_pil = the MLP by plain matmuls from the raw tensors of the .pth, on the normalised
    `image_embeds` of the saved CLIPModel object's own forward, with pixels from transformers' PIL
    CLIP image processor saved with the model (an implementation independent of ours)."""
    try:
        from transformers.models.clip import CLIPImageProcessorPil as Processor  # transformers ≥ 5: the PIL one
    except ImportError:
        from transformers import CLIPImageProcessor as Processor
    from transformers import CLIPTokenizer

    d, ref = aes
    reward = load_reward("aesthetics", d)
    pil = to_pil(smooth_images(2, 48, 48)) + to_pil(smooth_images(2, 40, 72, seed=5))
    pixels = Processor.from_pretrained(d / "clip").preprocess(pil, return_tensors="pt").pixel_values
    ids = CLIPTokenizer.from_pretrained(d / "clip")(["x"] * len(pil), return_tensors="pt").input_ids
    with torch.no_grad():
        e = ref(input_ids=ids, pixel_values=pixels).image_embeds  # projected, L2-normalised
    s = torch.load(d / WEIGHTS, map_location="cpu", weights_only=True)
    h = e
    for i in (0, 2, 4, 6, 7):
        h = h @ s[f"layers.{i}.weight"].T + s[f"layers.{i}.bias"]
    torch.testing.assert_close(reward.score_pil(pil), h[:, 0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(64, 64), (48, 80), (90, 50), (93, 50), (200, 300)])
def test_torch_path_matches_pil_path(aes, shape):
    """Tolerance 0.1 score points, against a spread of more than 1 point between the images: the
    paths differ by 8-bit rounding and by PIL's bicubic (on uint8, rounded) against torch's
    antialiased bicubic (measured ≤ 0.05 over six seeds). Both paths place the crop as torchvision's
    CenterCrop (OpenAI's transform) does, a half-pixel offset rounded to even, including where the
    resized long side exceeds the crop by 4k+3 pixels (93×50 → 59 px; a floored offset would move the
    crop by one pixel: 0.7 points on this 32-px model)."""
    reward = load_reward("aesthetics", aes[0])
    x = smooth_images(4, *shape, seed=1)
    with torch.no_grad():
        ours = reward(x, None)
    torch.testing.assert_close(ours, reward.score_pil(to_pil(x)), rtol=0, atol=0.1)
    assert ours.max() - ours.min() > 1.0


def test_gradient_matches_finite_differences(aes):
    reward = load_reward("aesthetics", aes[0]).double()
    assert_reward_gradient(reward, smooth_images(2, 40, 56, seed=2).double(), rtol=1e-6, atol=1e-9, seed=3)


def test_missing_weights_name_the_file(aes, tmp_path):
    with pytest.raises(MissingWeights, match=r"sac\+logos\+ava1-l14-linearMSE\.pth not found in .*empty.*"
                                             r"hf download camenduru/improved-aesthetic-predictor") as e:
        load_reward("aesthetics", tmp_path / "empty")
    assert "\n" not in str(e.value)
    # the head without its CLIP (no clip/ folder, and nothing in an empty Hugging Face cache)
    import huggingface_hub.constants as hc

    lone = tmp_path / "lone"
    lone.mkdir()
    torch.save(tiny_mlp_state(PROJ), lone / WEIGHTS)
    mp = pytest.MonkeyPatch()
    mp.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    try:
        with pytest.raises(MissingWeights, match=r"config\.json not found in .*openai/clip-vit-large-patch14.*"
                                                 r"--local-dir .*lone/clip") as e:
            load_reward("aesthetics", lone)
    finally:
        mp.undo()
    assert "\n" not in str(e.value)


def test_head_of_another_width_is_refused(aes, tmp_path):
    """The real 768-wide head next to a tiny CLIP: a one-line error, not a crash at scoring time."""
    d = tmp_path / "wide"
    d.mkdir()
    (d / "clip").symlink_to(aes[0] / "clip", target_is_directory=True)
    torch.save(tiny_mlp_state(768), d / WEIGHTS)
    with pytest.raises(MissingWeights, match="do not fit this model"):
        load_reward("aesthetics", d)
