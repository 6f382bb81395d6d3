"""HPSv2.1: the project's `score_pil` against the authors' `hpsv2.score(image, prompt, hps_version="v2.1")`
(package `hpsv2x` 1.2.0, the PyPI build of github tgxs002/HPSv2 that ships its BPE vocabulary).

Weights: a tiny CLIP in the ViT-H-14 layout (2+2 layers, 224 px, patch 14, context 77, the real
49408-token BPE vocabulary), built and randomly initialised by the authors' own open_clip fork
(`hpsv2.src.open_clip.create_model`), saved as the authors' checkpoint `HPS_v2.1_compressed.pt`
(a dict with a 'state_dict' entry) in a fake offline Hugging Face cache snapshot of xswu/HPSv2,
next to the architecture as `open_clip_config.json` (which the project reads instead of ViT-H-14).

Authors' code exercised, unchanged: `hpsv2.score` → `hpsv2.img_score.score`, which resolves the
checkpoint with `huggingface_hub.hf_hub_download("xswu/HPSv2", "HPS_v2.1_compressed.pt")` (offline,
from the fake cache), `torch.load`s it and loads its 'state_dict' strictly into the model, takes
the tokenizer from `get_tokenizer('ViT-H-14')` (their `tokenize`, context 77), preprocesses each PIL
image with their `preprocess_val` (`image_transform(..., resize_longest_max=True)`: ToTensor,
`ResizeMaxSize` (longer side → 224, bicubic on the tensor, zero padding), `MaskAwareNormalize`),
runs `model(image, text)` under `torch.cuda.amp.autocast()` (disabled on a CPU-only machine) and
returns the diagonal of image_features @ text_features.T.

The one thing replaced: `img_score.initialize_model()` hard-codes
`create_model_and_transforms('ViT-H-14', 'laion2B-s32B-b79K', ...)`, a 4 GB download whose weights
`score` then overwrites with the checkpoint anyway. Instead `img_score.model_dict` (the cache that
`initialize_model` fills and skips when full) is filled beforehand by the same
`create_model_and_transforms` call with the same keyword arguments (precision='amp', jit=False,
light_augmentation=True, aug_cfg={}, output_dict=True, ...) except the architecture name (the tiny
config, registered with the fork's `add_model_config`) and pretrained=None.

Project side: `eam.rewards.load_reward("hpsv2")` (no path: the same offline Hugging Face cache),
`.score_pil(images, prompts)`.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

TINY = "ViT-H-14-tiny-reference"
# ViT-H-14's layout (head_width, patch 14, 224 px, context 77, the BPE vocabulary), shrunk in width and depth.
CFG = {"embed_dim": 32,
       "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "head_width": 16, "patch_size": 14},
       "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 2}}
REPO, WEIGHTS = "xswu/HPSv2", "HPS_v2.1_compressed.pt"
N_IMAGES = 2
# + a prompt longer than the 77-token context, so both tokenizers' truncation (eot kept last) is compared too
PROMPTS = C.PROMPTS + ["a detailed oil painting of " + ", ".join(["a quiet harbour at dawn with fishing boats"] * 12)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", help="where the tiny weights go (default: a fresh temporary folder)")
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="hpsv2_ref_"))
    work.mkdir(parents=True, exist_ok=True)
    cache = work / "hf" / "hub"
    C.offline_hf(cache)
    import os
    os.environ["HPS_ROOT"] = str(work / "hps_root")  # hpsv2 creates this folder; keep it out of ~/.cache

    import torch
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", category=FutureWarning)
    import hpsv2
    import hpsv2.img_score as authors
    from hpsv2.src import open_clip as fork

    print(C.versions(["hpsv2x", "torch", "torchvision", "open_clip_torch", "huggingface_hub", "pillow", "numpy"]))
    print(f"tiny config: {json.dumps(CFG)}")
    print(f"weights in {work}\n")

    # -- the tiny weights, built by the authors' fork, saved in the authors' checkpoint layout
    cfg_dir = work / "open_clip_configs"
    cfg_dir.mkdir(exist_ok=True)
    (cfg_dir / f"{TINY}.json").write_text(json.dumps(CFG))
    fork.add_model_config(cfg_dir)
    torch.manual_seed(0)
    source = fork.create_model(TINY, None, precision="fp32", device="cpu")
    with torch.no_grad():  # open_clip's init leaves some tensors at exact constants; make every one random
        g = torch.Generator().manual_seed(1)
        for name, p in source.named_parameters():
            if name == "logit_scale":
                continue
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    ckpt = work / WEIGHTS
    torch.save({"state_dict": source.state_dict()}, ckpt)
    C.fake_hf_snapshot(cache, REPO, {WEIGHTS: ckpt, "open_clip_config.json": json.dumps(CFG)})

    # -- the authors' model cache, filled as initialize_model() fills it (see the module docstring)
    torch.manual_seed(123)  # another random init: the scores below depend on the checkpoint being loaded
    model, _, preprocess_val = fork.create_model_and_transforms(
        TINY, None, precision="amp", device=authors.device, jit=False, force_quick_gelu=False,
        force_custom_text=False, force_patch_dropout=False, force_image_size=None, pretrained_image=False,
        image_mean=None, image_std=None, light_augmentation=True, aug_cfg={}, output_dict=True,
        with_score_predictor=False, with_region_predictor=False)
    authors.model_dict["model"] = model
    authors.model_dict["preprocess_val"] = preprocess_val
    print(f"authors' device: {authors.device}; preprocess_val: {preprocess_val}\n")

    # -- the project
    from eam.rewards import load_reward
    reward = load_reward("hpsv2")  # no path: the (fake, offline) Hugging Face cache, as the benchmark does

    from importlib.metadata import version
    col = f"eam/oc{version('open_clip_torch')}"  # the project's score_pil, under open_clip X
    rows = []
    for k, hw in enumerate(C.SIZES):
        images = C.smooth_pil_images(N_IMAGES, *hw, seed=10 + k)
        for p, prompt in enumerate(PROMPTS):
            ref = hpsv2.score(images, prompt, hps_version="v2.1")
            ours = reward.score_pil(images, [prompt] * len(images))
            for i in range(len(images)):
                rows.append((C.label(hw), i, p, {col: float(ours[i]), "reference": float(ref[i])}))
    scores = [r[3]["reference"] for r in rows]
    spread = max(scores) - min(scores)

    # pixels: the project's letterbox_pil against the authors' preprocess_val, on every image
    from eam.rewards.hpsv2 import letterbox_pil
    pix = {C.label(hw): max(float((letterbox_pil(im, 224) - preprocess_val(im)).abs().max())
                            for im in C.smooth_pil_images(N_IMAGES, *hw, seed=10 + k))
           for k, hw in enumerate(C.SIZES)}

    # not compared (informational): an image whose longer side is already 224 px. The authors'
    # ResizeMaxSize neither resizes nor pads it (scale == 1), so their model gets a non-square input.
    edge = C.smooth_pil_images(1, 160, 224, seed=99)
    try:
        edge_ref = f"{hpsv2.score(edge, C.PROMPTS[0], hps_version='v2.1')[0]:.6f}"
    except Exception as e:  # noqa: BLE001
        edge_ref = f"raises {type(e).__name__}: {str(e).splitlines()[0][:160]}"
    edge_ours = float(reward.score_pil(edge, C.PROMPTS[:1])[0])
    lengths = [int((fork.tokenize([t])[0] != 0).sum()) for t in PROMPTS]
    note = (f"prompt lengths in tokens (of 77, after truncation): {lengths}\n"
            f"max |project letterbox_pil - authors' preprocess_val| on the pixels, per size: "
            + ", ".join(f"{s} {d:.1e}" for s, d in pix.items())
            + f"\nspread of the reference scores over these images and prompts: {spread:.4f}"
            + "\nnot compared, 224x160 (longer side already 224): authors' preprocess_val gives shape "
            + f"{tuple(preprocess_val(edge[0]).shape)} and hpsv2.score {edge_ref}; the project pads it to "
            + f"224x224 and scores {edge_ours:.6f}")
    return C.report("HPSv2.1: eam score_pil vs hpsv2.score(image, prompt, hps_version='v2.1')", rows,
                    columns=(col, "reference"), extra_note=note)


if __name__ == "__main__":
    sys.exit(main())
