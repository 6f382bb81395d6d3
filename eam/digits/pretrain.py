"""Pretraining on digits: the class-conditional rectified-flow base, the two classifiers and the
tiny CLIP. Each writes a `save_pretrained` folder that the registry loads by name."""
from __future__ import annotations

import math

import torch
from tqdm import tqdm

from ..adapters.digits_flow import DigitsFlow, FlowNet
from ..prompts import PromptBatch, load_prompt_set
from ..rewards.digit_classifier import DigitClassifierReward
from ..rewards.digit_clip import DigitCLIPScore, TinyCLIP, tokenize
from ..rewards.heldout_classifier import HeldoutClassifierReward
from ..samplers import ode_sample
from . import data


def _cosine(opt, iters):
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(i / iters, 1))))


def train_flow(out, iters: int = 3000, batch: int = 128, lr: float = 2e-3, p_uncond: float = 0.1,
               channels: int = 48, seed: int = 0, progress: bool = True) -> DigitsFlow:
    """Conditional flow matching on `train`: x_t = t x_1 + (1-t) x_0, target x_1 - x_0; the label is
    replaced by the null class with probability p_uncond (classifier-free guidance)."""
    torch.manual_seed(seed)
    x, y = data.load("train")
    arch = {"channels": channels, "emb": 2 * channels, "n_classes": data.N_CLASSES}
    net = FlowNet(**arch)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = _cosine(opt, iters)
    ema = FlowNet(**arch).requires_grad_(False)
    ema.load_state_dict(net.state_dict())
    for _ in tqdm(range(iters), desc="digits_flow", disable=not progress):
        idx = torch.randint(0, len(y), (batch,))
        x1, lab = data.augment(x[idx]), y[idx].clone()
        lab[torch.rand(batch) < p_uncond] = data.N_CLASSES
        x0 = torch.randn_like(x1)
        t = torch.sigmoid(torch.randn(batch))  # logit-normal times, as SD3
        xt = t[:, None, None, None] * x1 + (1 - t[:, None, None, None]) * x0
        loss = (net(xt, t, lab) - (x1 - x0)).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), net.parameters()):
                pe.lerp_(p, 0.002)
    model = DigitsFlow(ema)
    model.config = {"arch": arch, "iters": iters, "batch": batch, "lr": lr, "p_uncond": p_uncond, "seed": seed}
    model.save(out)
    return model


def train_classifier(name: str, out, epochs: int = 60, batch: int = 64, lr: float = 2e-3, seed: int = 0,
                     progress: bool = True):
    """`digit_classifier` on the `train` split or `heldout_classifier` on the disjoint `heldout` split,
    with one-pixel shifts as augmentation; returns the reward and its accuracy on `test`."""
    cls, split = {"digit_classifier": (DigitClassifierReward, "train"),
                  "heldout_classifier": (HeldoutClassifierReward, "heldout")}[name]
    torch.manual_seed(seed)
    x, y = data.load(split)
    net = cls.arch()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-3)
    steps = epochs * math.ceil(len(y) / batch)
    sched = _cosine(opt, steps)
    for _ in tqdm(range(steps), desc=name, disable=not progress):
        idx = torch.randint(0, len(y), (batch,))
        loss = torch.nn.functional.cross_entropy(net(data.augment(x[idx])), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    reward = cls(net)
    acc = accuracy(reward, *data.load("test"))
    reward.save(out, arch={}, split=split, epochs=epochs, test_accuracy=acc, seed=seed)
    return reward, acc


@torch.no_grad()
def accuracy(classifier: DigitClassifierReward, x, y) -> float:
    return float((classifier.net(x).argmax(-1) == y).float().mean())


def train_clip(out, prompts_path, epochs: int = 80, batch: int = 128, lr: float = 2e-3, seed: int = 0,
               progress: bool = True):
    """Contrastive pairs (image, a training prompt of its class), with a soft target that treats every
    same-class pair in the batch as a match; returns the reward and its zero-shot accuracy on `test`."""
    torch.manual_seed(seed)
    records = load_prompt_set(prompts_path)
    by_label = {}
    for r in records:
        by_label.setdefault(r["label"], []).append(r["prompt"])
    vocab = ["<unk>"] + sorted({w for r in records for w in tokenize(r["prompt"])})
    clip = TinyCLIP(vocab)
    x, y = data.load("train")
    opt = torch.optim.AdamW(clip.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * math.ceil(len(y) / batch)
    sched = _cosine(opt, steps)
    for _ in tqdm(range(steps), desc="digit_clip", disable=not progress):
        idx = torch.randint(0, len(y), (batch,))
        lab = y[idx]
        texts = [by_label[int(c)][torch.randint(len(by_label[int(c)]), ()).item()] for c in lab]
        logits = clip.logit_scale.exp().clamp(max=100) * clip.encode_image(data.augment(x[idx])) @ clip.encode_text(texts).T
        match = (lab[:, None] == lab[None, :]).float()
        loss = 0.5 * (torch.nn.functional.cross_entropy(logits, match / match.sum(1, keepdim=True))
                      + torch.nn.functional.cross_entropy(logits.T, match / match.sum(0, keepdim=True).T))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    reward = DigitCLIPScore(clip)
    xt, yt = data.load("test")
    with torch.no_grad():
        class_texts = [by_label[c][0] for c in range(data.N_CLASSES)]
        acc = float(((clip.encode_image(xt) @ clip.encode_text(class_texts).T).argmax(-1) == yt).float().mean())
    reward.save(out, arch={}, epochs=epochs, zero_shot_accuracy=acc, seed=seed)
    return reward, acc


@torch.no_grad()
def base_accuracy(model: DigitsFlow, classifier: DigitClassifierReward, n_per_class: int = 50, steps: int = 50,
                  seed: int = 0) -> float:
    """How often the classifier reads the prompted digit in the base model's samples."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(data.N_CLASSES).repeat_interleave(n_per_class)
    x0 = torch.randn(len(labels), *data.SHAPE, generator=g)
    x1 = ode_sample(model, x0, steps, "heun", PromptBatch([""] * len(labels), labels))
    return accuracy(classifier, x1, labels)
