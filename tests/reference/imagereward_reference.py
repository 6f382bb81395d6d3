"""ImageReward: the project's `score_pil` against the authors' `ImageReward.load(...).score(prompt, pil_image)`
(package `image-reward` 1.5, github THUDM/ImageReward).

Weights: the authors' own `ImageReward.ImageReward.ImageReward(med_config)` module, built by their
code (BLIP ViT-L/16 at 224 px from `create_vit('large', 224)`, full size: 24 blocks of width 1024;
med BERT from a small `med_config.json`: 2 layers, width 768 (their head is `MLP(768)`), 12 heads),
every tensor then set to random values of a sensible scale, and its `state_dict()` saved as
`ImageReward.pt` with `med_config.json` next to it, as the files of THUDM/ImageReward. The
tokenizer is a small WordPiece vocabulary (whole words for part of the prompts, characters for the
rest, so the long prompt is truncated at 35 tokens and the short one padded) laid out as a fake
offline Hugging Face cache snapshot of `bert-base-uncased`, which both sides read: the authors'
`init_tokenizer()` calls `BertTokenizer.from_pretrained('bert-base-uncased')` and adds [DEC] and
[ENC]; the project's `load_tokenizer` finds the same snapshot.

Authors' code exercised, unchanged: `ImageReward.load("ImageReward-v1.0", device="cpu",
download_root=DIR)` (their `hf_hub_download(..., local_dir=DIR)` finds both files there offline;
`torch.load`, `ImageReward(device, med_config)`, `load_state_dict(strict=False)`, `eval()`), then
`model.score(prompt, pil_image)` per image: their tokenizer call (max_length 35), `_transform(224)`,
`blip.visual_encoder`, `blip.text_encoder` with cross-attention, `mlp`, (r - mean) / std. As their
`load` uses strict=False, the script also checks that every tensor of their loaded model equals the
checkpoint's (nothing left at its random init).

Project side: `eam.rewards.load_reward("imagereward", DIR).score_pil(images, prompts)`, in this
venv (transformers 4.x, which image-reward needs) and, when `--project-scores` gives the output of
a `--project-only` run in the project's pinned environment (transformers 5.23), that as well.

Steps (run.sh runs them): `--build-only` (authors' venv) writes the weights into --workdir;
`--project-only OUT.json` (any venv with eam) scores with the project only; the default run scores
with both and prints the table.
"""
from __future__ import annotations

import gc
import json
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

N_IMAGES = 2
# THUDM/ImageReward's med_config.json (BERT-base with cross-attention), shrunk in depth and MLP width;
# the width stays 768, the input of the authors' MLP(768) head. vocab_size is set from the tokenizer.
MED = {"architectures": ["BertModel"], "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu",
       "hidden_dropout_prob": 0.1, "hidden_size": 768, "initializer_range": 0.02, "intermediate_size": 1536,
       "layer_norm_eps": 1e-12, "max_position_embeddings": 512, "model_type": "bert",
       "num_attention_heads": 12, "num_hidden_layers": 2, "pad_token_id": 0, "type_vocab_size": 2,
       "vocab_size": None, "encoder_width": 768, "add_cross_attention": True}
WORDS = ["red", "fox", "in", "the", "snow", "an", "astronaut", "on", "mars"]  # the rest goes char by char


def vocab() -> list[str]:
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789") + list(",.!?-'")
    return ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + ["##" + c for c in chars] + WORDS


def setup_cache(work: Path) -> Path:
    """The fake offline Hugging Face cache with bert-base-uncased (idempotent)."""
    cache = work / "hf" / "hub"
    C.offline_hf(cache)
    if not (cache / "models--bert-base-uncased").exists():
        from transformers import BertTokenizer

        tmp = work / "bert_vocab"
        tmp.mkdir(parents=True, exist_ok=True)
        (tmp / "vocab.txt").write_text("\n".join(vocab()) + "\n")
        tok = BertTokenizer(str(tmp / "vocab.txt"), do_lower_case=True, model_max_length=512)
        tok.save_pretrained(tmp / "saved")
        files = {p.name: p for p in (tmp / "saved").iterdir()}
        files["config.json"] = json.dumps({"model_type": "bert", "vocab_size": len(vocab())})
        C.fake_hf_snapshot(cache, "bert-base-uncased", files)
    return cache


def images_for(k, hw):
    return C.smooth_pil_images(N_IMAGES, *hw, seed=20 + k)


def build(work: Path):
    """The authors' module with random tensors, saved as ImageReward.pt + med_config.json in `work`."""
    import torch
    from ImageReward.ImageReward import ImageReward as AuthorsImageReward
    from transformers import BertTokenizer

    n_vocab = len(BertTokenizer.from_pretrained("bert-base-uncased")) + 2  # + [DEC], [ENC] (blip.init_tokenizer)
    med = dict(MED, vocab_size=n_vocab)
    (work / "med_config.json").write_text(json.dumps(med, indent=1))
    torch.manual_seed(0)
    model = AuthorsImageReward(med_config=str(work / "med_config.json"), device="cpu")
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name.lower() and name.endswith("weight"):     # LayerNorm gains near 1
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif name.startswith("mlp.") and p.dim() == 2:             # the head: large enough to tell images apart
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[1] ** 0.5)
            else:                                                      # the init's own scale (0.02), values redrawn
                p.copy_(0.02 * torch.randn(p.shape, generator=g))
    state = model.state_dict()
    torch.save(state, work / "ImageReward.pt")
    print(f"built the authors' ImageReward module: {sum(v.numel() for v in state.values()) / 1e6:.1f} M numbers, "
          f"{len(state)} tensors -> {work / 'ImageReward.pt'}; med_config: {json.dumps(med)}")
    del model, state
    gc.collect()


def project_scores(work: Path) -> dict:
    import torch
    from eam.rewards import load_reward

    reward = load_reward("imagereward", work)
    out = {}
    for k, hw in enumerate(C.SIZES):
        images = images_for(k, hw)
        for p, prompt in enumerate(C.PROMPTS):
            with torch.no_grad():
                s = reward.score_pil(images, [prompt] * len(images))
            for i in range(len(images)):
                out[f"{C.label(hw)}/{i}/{p}"] = float(s[i])
    return {"scores": out, "images_sha1": C.image_digest(images_for)}


def main() -> int:
    args, work = C.split_run_args(__doc__, "only build the weights (needs image-reward)", "imagereward_ref_")
    setup_cache(work)
    import torch
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")

    if args.project_only:
        print(C.versions(["torch", "torchvision", "transformers", "huggingface_hub", "pillow", "numpy"]))
        return C.write_project_scores(args.project_only, project_scores(work))

    print(C.versions(["image-reward", "torch", "torchvision", "transformers", "timm", "fairscale",
                      "huggingface_hub", "tokenizers", "pillow", "numpy"]))
    if not (work / "ImageReward.pt").exists():
        build(work)
    if args.build_only:
        return 0

    import ImageReward as RM

    model = RM.load("ImageReward-v1.0", device="cpu", download_root=str(work))
    ckpt = torch.load(work / "ImageReward.pt", map_location="cpu", weights_only=True)
    own = model.state_dict()
    not_loaded = [k for k in own if k not in ckpt or not torch.equal(own[k], ckpt[k])]
    unused = [k for k in ckpt if k not in own]
    print(f"authors' model: {len(own)} tensors, all equal to the checkpoint's: {not not_loaded} "
          f"(differing {not_loaded[:3]}), checkpoint keys unused: {unused[:3]}")
    del ckpt
    if not_loaded:
        return 1

    ours = project_scores(work)
    here, extra, columns = C.score_columns(args, ours)

    from eam.rewards.imagereward import pil_transform

    rows, pix = [], {}
    for k, hw in enumerate(C.SIZES):
        images = images_for(k, hw)
        pix[C.label(hw)] = max(float((pil_transform(224)(im) - model.preprocess(im)).abs().max()) for im in images)
        for p, prompt in enumerate(C.PROMPTS):
            for i, im in enumerate(images):
                ref = model.score(prompt, im)
                key = f"{C.label(hw)}/{i}/{p}"
                scores = {here: ours["scores"][key], "reference": ref}
                scores.update({name: extra[name][key] for name in extra})
                rows.append((C.label(hw), i, p, scores))
    tok = model.blip.tokenizer(C.PROMPTS, padding="max_length", truncation=True, max_length=35)
    lengths = [sum(m) for m in tok["attention_mask"]]
    note = (f"prompt lengths in tokens (of 35): {lengths}\n"
            + C.transform_note(pix, rows, "authors'", "these images and prompts"))
    return C.report("ImageReward: eam score_pil vs ImageReward.load(...).score(prompt, pil_image)", rows,
                    columns=tuple(columns + ["reference"]), extra_note=note)


if __name__ == "__main__":
    sys.exit(main())
