"""HPSv2.1 on a tiny open_clip CLIP saved in the authors' checkpoint layout (a dict whose
'state_dict' entry is the CLIP state dict, plus an open_clip config replacing ViT-H-14): loading,
the score against a computation by hand, the letterbox transform, the torch training path
against the PIL path, gradients, missing files."""
import json

import pytest
import torch

from eam.checkpoint import MissingWeights
from eam.prompts import PromptBatch
from eam.rewards import load_reward
from eam.rewards.hpsv2 import WEIGHTS, letterbox_pil, letterbox_preprocess
from eam.rewards.image import CLIP_MEAN, CLIP_STD, clip_preprocess, to_pil
from tiny.fd import assert_reward_gradient
from tiny.images import smooth_images

import open_clip  # noqa: E402  (a pinned dependency)

PROMPTS = ["a red fox in the snow", "an astronaut riding a horse", "a bowl of fruit"]
# ViT-H-14's layout, shrunk; the real BPE vocabulary (49408) and a non-default context length,
# so that the tokenizer's context length has to come from the config
CFG = dict(embed_dim=16, vision_cfg=dict(image_size=32, layers=2, width=32, head_width=16, patch_size=8),
           text_cfg=dict(context_length=24, vocab_size=49408, width=32, heads=2, layers=2))


def save_hps(directory, model, cfg=CFG):
    directory.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": 1, "name": "tiny", "state_dict": model.state_dict()}, directory / WEIGHTS)
    (directory / "open_clip_config.json").write_text(json.dumps(cfg))
    return directory


@pytest.fixture(scope="module")
def hps(tmp_path_factory):
    """(folder, the open_clip model object whose state dict was saved there)."""
    torch.manual_seed(0)
    model = open_clip.model.CLIP(**CFG).eval()
    return save_hps(tmp_path_factory.mktemp("hps"), model), model



def test_loads_the_saved_weights(hps):
    d, _ = hps
    reward = load_reward("hpsv2", d)
    saved = torch.load(d / WEIGHTS, map_location="cpu", weights_only=True)["state_dict"]
    loaded = reward.model.state_dict()
    assert loaded.keys() == saved.keys()
    for k in saved:
        assert torch.equal(loaded[k], saved[k]), k
    assert not any(p.requires_grad for p in reward.parameters())
    reward.train()  # frozen: a parent's .train() leaves it in eval mode
    assert not any(m.training for m in reward.modules())


def test_score_is_cosine_by_hand(hps):
    """score_pil = cos(image features, prompt features) computed from the very model object that
    was saved (no logit_scale, as `hpsv2.score` does), with open_clip's own module-level tokenizer."""
    d, ref = hps
    reward = load_reward("hpsv2", d)
    pil = to_pil(smooth_images(3, 48, 80))
    pixels = torch.stack([letterbox_pil(im, 32) for im in pil])
    with torch.no_grad():
        img = ref.encode_image(pixels)
        txt = ref.encode_text(open_clip.tokenize(PROMPTS, context_length=24))
    expected = (img * txt).sum(-1) / (img.norm(dim=-1) * txt.norm(dim=-1))
    got = reward.score_pil(pil, PROMPTS)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert got.abs().max() <= 1


def test_letterbox_geometry():
    """The authors' eval transform resizes the longer side and pads with black (0 before
    normalising), the extra pixel of an odd padding going to the bottom/right; a constant image
    shows it exactly, on both paths. 24×48 → 16×32 + 8/8 rows; 20×48 → 13×32 + 9/10 rows;
    48×24 → 32×16 + 8/8 columns."""
    mean, std = torch.tensor(CLIP_MEAN)[:, None, None], torch.tensor(CLIP_STD)[:, None, None]
    colour = torch.tensor([51, 153, 204])[:, None, None] / 255  # exact in 8 bits
    for (H, W), (lo, hi), axis in [((24, 48), (8, 24), 1), ((20, 48), (9, 22), 1), ((48, 24), (8, 24), 2)]:
        img = colour.expand(1, 3, H, W)
        expected = (torch.zeros(3, 32, 32) - mean) / std
        inside = [slice(None)] * 3
        inside[axis] = slice(lo, hi)
        expected[tuple(inside)] = ((colour.expand(3, 32, 32) - mean) / std)[tuple(inside)]
        torch.testing.assert_close(letterbox_pil(to_pil(img)[0], 32), expected, rtol=0, atol=1e-5)
        torch.testing.assert_close(letterbox_preprocess(img, 32)[0], expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("shape", [(64, 64), (48, 80), (90, 50)])
def test_torch_path_matches_pil_path(hps, shape):
    """Tolerance 2e-3 on a cosine: both paths resize with the same antialiased bicubic kernel and
    pad alike, so they differ only by the PIL path's 8-bit rounding of the pixels (≤ 1/510;
    measured ≤ 3e-4 here). A centre-cropping transform is off by far more on non-square images."""
    reward = load_reward("hpsv2", hps[0])
    x = smooth_images(3, *shape, seed=1)
    with torch.no_grad():
        ours = reward(x, PromptBatch(PROMPTS))
        cropped = (reward.model.encode_image(clip_preprocess(x, 32), normalize=True)
                   * reward.text_features(PROMPTS, x.device)).sum(-1)
    pil = reward.score_pil(to_pil(x), PROMPTS)
    torch.testing.assert_close(ours, pil, rtol=0, atol=2e-3)
    assert ours.max() - ours.min() > 0.05  # the images are told apart, well beyond the tolerance
    if shape[0] != shape[1]:
        assert (cropped - pil).abs().max() > 1e-2


def test_gradient_matches_finite_differences(hps):
    reward = load_reward("hpsv2", hps[0]).double()
    x = smooth_images(2, 40, 56, seed=2).double()  # non-square: resize and padding both in the graph
    assert_reward_gradient(reward, x, PromptBatch(PROMPTS[:2]), rtol=1e-6, atol=1e-9, seed=3)


def test_model_cfg_wrapper_is_accepted(hps, tmp_path):
    """An open_clip_config.json as open_clip writes it ({"model_cfg": ...}) works as well."""
    d = save_hps(tmp_path / "wrapped", hps[1], cfg={"model_cfg": CFG, "preprocess_cfg": {}})
    pil = to_pil(smooth_images(2, 40, 40))
    torch.testing.assert_close(load_reward("hpsv2", d).score_pil(pil, PROMPTS[:2]),
                               load_reward("hpsv2", hps[0]).score_pil(pil, PROMPTS[:2]))


def test_missing_weights_name_the_file(tmp_path):
    with pytest.raises(MissingWeights, match=r"HPS_v2\.1_compressed\.pt not found in .*empty.*"
                                             r"hf download xswu/HPSv2 HPS_v2\.1_compressed\.pt") as e:
        load_reward("hpsv2", tmp_path / "empty")
    assert "\n" not in str(e.value)


def test_foreign_checkpoints_are_refused(hps, tmp_path):
    """A bare state dict (not the authors' layout) and a state dict missing a tensor are one-line
    errors, never a silently half-random model."""
    d, model = hps
    bare = tmp_path / "bare"
    bare.mkdir()
    torch.save(model.state_dict(), bare / WEIGHTS)
    (bare / "open_clip_config.json").write_text(json.dumps(CFG))
    with pytest.raises(MissingWeights, match="no 'state_dict' entry"):
        load_reward("hpsv2", bare)
    partial = tmp_path / "partial"
    save_hps(partial, model)
    state = {k: v for k, v in model.state_dict().items() if k != "ln_final.weight"}
    torch.save({"state_dict": state}, partial / WEIGHTS)
    with pytest.raises(MissingWeights, match="do not fit this model") as e:
        load_reward("hpsv2", partial)
    assert "\n" not in str(e.value)
