"""LAION aesthetics v2: the project's `score_pil` against the authors' inference pipeline
(simple_inference.py of github christophschuhmann/improved-aesthetic-predictor) run with the
installed packages it uses: OpenAI's `clip` (PyPI `openai-clip` 1.0.1) and the authors' `MLP` head
class as packaged in `image-reward` 1.5 (`ImageReward.models.AestheticScore.MLP`, "based on
improved-aesthetic-predictor": the same nn.Sequential of five Linear layers and three Dropouts).

Weights: a small CLIP ViT of OpenAI's layout (ViT-L/14's patch 14 at 224 px, QuickGELU, embedding
width 768 as ViT-L/14's so the head is the authors' MLP(768); 2 blocks of width 128, text tower 2
blocks of width 64) built and randomly initialised by `clip.model.CLIP`, saved as OpenAI ships its
models: a TorchScript archive `ViT-L-14.pt` (traced; values that fp16 holds exactly, as OpenAI's). Converted for the project into the Hugging Face layout
of `openai/clip-vit-large-patch14` by transformers' own conversion script (transformers 4.46.3,
`transformers.models.clip.convert_clip_original_pytorch_to_hf.convert_clip_checkpoint`, the script
that made that repository; it loads the .pt through `clip.load` and checks its own logits against
OpenAI's), saved to `clip/` next to the head `sac+logos+ava1-l14-linearMSE.pth` (the authors' key
names `layers.{0,2,4,6,7}.*`).

Authors' pipeline, as simple_inference.py: `model = MLP(768); model.load_state_dict(torch.load(pth));
model.eval()`; `model2, preprocess = clip.load(<ViT-L-14.pt>, device="cpu")` (OpenAI's `load` with a
checkpoint path, as its docstring allows, instead of the name "ViT-L/14", which would download;
on CPU it returns the fp32 model and `_transform(224)`); `image = preprocess(pil).unsqueeze(0)`;
`image_features = model2.encode_image(image)` under no_grad; `normalized(...)` (their numpy L2
normalisation, a / ||a||, a zero norm left as 1); `model(torch.from_numpy(emb).type(torch.FloatTensor))`.

Project side: `eam.rewards.load_reward("aesthetics", DIR).score_pil(images)`, here (transformers 4.x)
and, with `--project-scores`, from a `--project-only` run in the project's pinned environment.
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

N_IMAGES = 3
HEAD = "sac+logos+ava1-l14-linearMSE.pth"
OPENAI = "ViT-L-14.pt"
# clip.model.CLIP arguments: heads are width // 64 in OpenAI's code (here 2 for the image, 1 for text)
ARCH = dict(embed_dim=768, image_resolution=224, vision_layers=2, vision_width=128, vision_patch_size=14,
            context_length=77, vocab_size=49408, transformer_width=64, transformer_heads=1, transformer_layers=2)
# The same architecture as a transformers CLIPConfig, the fields of openai/clip-vit-large-patch14's config.json
HF_CONFIG = dict(
    projection_dim=768,
    text_config=dict(vocab_size=49408, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                     num_attention_heads=1, max_position_embeddings=77, hidden_act="quick_gelu",
                     layer_norm_eps=1e-5, projection_dim=768, bos_token_id=0, eos_token_id=2, pad_token_id=1),
    vision_config=dict(hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=2,
                       image_size=224, patch_size=14, hidden_act="quick_gelu", layer_norm_eps=1e-5,
                       projection_dim=768))


def images_for(k, hw):
    return C.smooth_pil_images(N_IMAGES, *hw, seed=30 + k)


def build(work: Path):
    import torch
    from clip.model import CLIP
    from ImageReward.models.AestheticScore import MLP
    from transformers import CLIPConfig
    from transformers.models.clip.convert_clip_original_pytorch_to_hf import convert_clip_checkpoint

    torch.manual_seed(0)
    model = CLIP(**ARCH)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # LayerNorms and biases off their constant init
        for name, p in model.named_parameters():
            if name.startswith("visual.") and ("ln_" in name) and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            elif name.startswith("visual.") and (name.endswith("bias") or "ln_" in name):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
        for p in model.parameters():  # values that fp16 holds exactly: OpenAI's weights are fp16, and
            p.copy_(p.half().float())  # clip.load casts to fp16 and back (convert_weights, then .float() on CPU)
    # OpenAI's file format: a TorchScript archive (clip.load reads its state_dict and rebuilds the model
    # with build_model when jit=False). (A plain state dict file does not load in openai-clip 1.0.1: after
    # torch.jit.load fails on it, torch.load reads on from where the failed attempt left the file.)
    model.eval()
    example = (torch.zeros(1, 3, ARCH["image_resolution"], ARCH["image_resolution"]),
               torch.zeros(1, ARCH["context_length"], dtype=torch.long))
    torch.jit.save(torch.jit.trace(model, example, check_trace=False), str(work / OPENAI))

    (work / "hf_config").mkdir(exist_ok=True)
    CLIPConfig(**HF_CONFIG).save_pretrained(work / "hf_config")
    weights = work / "weights"
    weights.mkdir(exist_ok=True)
    convert_clip_checkpoint(str(work / OPENAI), str(weights / "clip"), str(work / "hf_config"))

    head = MLP(768)
    with torch.no_grad():  # weights large enough that random images get clearly different scores
        for name, p in head.named_parameters():
            if name.endswith("weight"):
                p.copy_(torch.randn(p.shape, generator=g) * 2 / p.shape[1] ** 0.5)
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
        head.layers[7].bias += 5.0
    torch.save(head.state_dict(), weights / HEAD)
    print(f"built {work / OPENAI} (clip.model.CLIP{tuple(ARCH.values())}), converted to {weights / 'clip'}, "
          f"head {weights / HEAD}")


def project_scores(work: Path) -> dict:
    from eam.rewards import load_reward

    reward = load_reward("aesthetics", work / "weights")
    out = {}
    for k, hw in enumerate(C.SIZES):
        s = reward.score_pil(images_for(k, hw))
        for i in range(len(s)):
            out[f"{C.label(hw)}/{i}"] = float(s[i])
    return {"scores": out, "images_sha1": C.image_digest(images_for)}


def main() -> int:
    args, work = C.split_run_args(__doc__, "only build the weights (needs clip, image-reward, transformers 4.x)", "aesthetics_ref_")
    C.offline_hf(work / "hf" / "hub")  # nothing is fetched from the hub; make sure of it
    import torch
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")

    if args.project_only:
        print(C.versions(["torch", "torchvision", "transformers", "pillow", "numpy"]))
        return C.write_project_scores(args.project_only, project_scores(work))

    print(C.versions(["openai-clip", "image-reward", "torch", "torchvision", "transformers", "pillow", "numpy"]))
    if not (work / "weights" / HEAD).exists():
        build(work)
    if args.build_only:
        return 0

    import clip
    import numpy as np
    from ImageReward.models.AestheticScore import MLP

    def normalized(a, axis=-1, order=2):  # simple_inference.py's helper, numpy
        l2 = np.atleast_1d(np.linalg.norm(a, order, axis))
        l2[l2 == 0] = 1
        return a / np.expand_dims(l2, axis)

    device = "cpu"
    model = MLP(768)
    model.load_state_dict(torch.load(work / "weights" / HEAD))  # strict, as simple_inference.py
    model.to(device)
    model.eval()
    model2, preprocess = clip.load(str(work / OPENAI), device=device)
    print(f"clip.load: {type(model2).__module__}.{type(model2).__name__}, "
          f"input_resolution {model2.visual.input_resolution}, dtype {model2.visual.conv1.weight.dtype}; "
          f"preprocess: {preprocess}")

    ours = project_scores(work)
    here, extra, columns = C.score_columns(args, ours)

    from eam.rewards.aesthetics import openai_clip_transform

    rows, pix = [], {}
    for k, hw in enumerate(C.SIZES):
        images = images_for(k, hw)
        pix[C.label(hw)] = max(float((openai_clip_transform(224)(im) - preprocess(im)).abs().max()) for im in images)
        for i, pil_image in enumerate(images):
            image = preprocess(pil_image).unsqueeze(0).to(device)
            with torch.no_grad():
                image_features = model2.encode_image(image)
            im_emb_arr = normalized(image_features.cpu().detach().numpy())
            with torch.no_grad():
                prediction = model(torch.from_numpy(im_emb_arr).to(device).type(torch.FloatTensor))
            key = f"{C.label(hw)}/{i}"
            scores = {here: ours["scores"][key], "reference": float(prediction.item())}
            scores.update({name: extra[name][key] for name in extra})
            rows.append((C.label(hw), i, "-", scores))
    note = C.transform_note(pix, rows, "clip's", "these images")
    return C.report("LAION aesthetics: eam score_pil vs simple_inference.py's pipeline (clip + MLP)", rows,
                    columns=tuple(columns + ["reference"]), extra_note=note)


if __name__ == "__main__":
    sys.exit(main())
