"""The published architectures `eam random-weights` builds for the benchmark: parameter counts equal
to the released checkpoints', and the saved folders load through the real adapters and rewards."""
import subprocess
import sys

import pytest
import torch

from eam import architectures as arch
from eam.prompts import PromptBatch
from eam.registry import lookup
from eam.rewards import load_reward

# Parameter counts of the released checkpoints (stabilityai/stable-diffusion-3-medium-diffusers,
# runwayml/stable-diffusion-v1-5, openai/clip-vit-large-patch14, laion/CLIP-ViT-H-14-laion2B-s32B-b79K).
RELEASED = {
    ("sd3-medium", "transformer"): 2_028_328_000, ("sd3-medium", "vae"): 83_819_683,
    ("sd3-medium", "text_encoder"): 123_650_304, ("sd3-medium", "text_encoder_2"): 694_659_840,
    ("sd3-medium", "text_encoder_3"): 4_762_310_656,
    ("sd15", "unet"): 859_520_964, ("sd15", "vae"): 83_653_863, ("sd15", "text_encoder"): 123_060_480,
}


def test_parameter_counts_are_the_released_models():
    with torch.device("meta"):
        for name in ("sd3-medium", "sd15"):
            for part, module in arch.build_components(name, with_t5=True).items():
                if module is not None:
                    assert sum(p.numel() for p in module.parameters()) == RELEASED[(name, part)], (name, part)
        from transformers import CLIPModel

        assert sum(p.numel() for p in CLIPModel(arch.clip_config("clipscore")).parameters()) == 427_616_513
        assert sum(p.numel() for p in CLIPModel(arch.clip_config("pickscore")).parameters()) == 986_109_441


def _shrink(monkeypatch):
    """The same builders on narrow, shallow versions of the published configs (fast on a CPU)."""
    sd3, sd15 = arch.PIPELINES["sd3-medium"], arch.PIPELINES["sd15"]
    small_text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    small_vae = dict(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
                     down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
    monkeypatch.setitem(arch.PIPELINES, "sd3-medium", {
        "transformer": dict(sd3["transformer"], num_layers=1, attention_head_dim=8, num_attention_heads=2,
                            caption_projection_dim=16, joint_attention_dim=64, pooled_projection_dim=48),
        "vae": dict(sd3["vae"], **small_vae),
        "text_encoder": dict(sd3["text_encoder"], **small_text, projection_dim=16),
        "text_encoder_2": dict(sd3["text_encoder_2"], **small_text, projection_dim=32),
        "text_encoder_3": dict(sd3["text_encoder_3"], d_model=64, d_ff=64, num_layers=1, num_heads=2, d_kv=8)})
    monkeypatch.setitem(arch.PIPELINES, "sd15", {
        "unet": dict(sd15["unet"], block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8,
                     cross_attention_dim=32, attention_head_dim=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                     up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")),
        "vae": dict(sd15["vae"], **small_vae),
        "text_encoder": dict(sd15["text_encoder"], **small_text, projection_dim=32)})
    monkeypatch.setitem(arch.REWARDS, "clipscore", dict(
        arch.REWARDS["clipscore"], text=small_text, projection_dim=16,
        vision=dict(arch.REWARDS["clipscore"]["vision"], **small_text)))


@pytest.mark.parametrize("name,with_t5", [("sd3-medium", True), ("sd3-medium", False), ("sd15", False)])
def test_random_pipelines_load_through_the_adapters(name, with_t5, tmp_path, monkeypatch):
    _shrink(monkeypatch)
    path = arch.random_pipeline(name, tmp_path / name, with_t5=with_t5)
    model = lookup("model", arch.ADAPTER_OF[name]).load(path, resolution=16, drop_t5=not with_t5)  # 2-block VAE: factor 2
    assert model.sample_shape == ((16 if name == "sd3-medium" else 4), 8, 8)
    assert model.pipe.vae.dtype == torch.float32  # saved in bf16, loaded in `precision`
    x = torch.randn(2, *model.sample_shape)
    v = model(x, torch.tensor([0.3, 0.7]), PromptBatch(["a cat", "two dogs on a sofa"]))
    assert v.shape == x.shape and torch.isfinite(v).all() and v.std() > 0
    images = model.decode(x)
    assert images.shape == (2, 3, 16, 16)
    reward = load_reward("clipscore", arch.random_reward("clipscore", tmp_path / "clip"))
    assert torch.isfinite(reward(images, PromptBatch(["a cat", "two dogs on a sofa"]))).all()


def test_random_weights_cli_rejects_an_unknown_architecture(tmp_path):
    p = subprocess.run([sys.executable, "-m", "eam.cli", "random-weights", "--arch", "sdxl", "--out", str(tmp_path)],
                       capture_output=True, text=True)
    assert p.returncode == 2 and "invalid choice: 'sdxl'" in p.stderr
