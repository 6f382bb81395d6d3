"""Base model of the embedded default: a class-conditional rectified-flow conv net on 8x8 digits,
with a null class for classifier-free guidance."""
from __future__ import annotations

import torch
from torch import nn

from ..checkpoint import load_pretrained, load_state, save_pretrained
from ..interpolants import RectifiedFlow
from ..models import TimeEmbedding, VelocityModel
from ..registry import register


class ResBlock(nn.Module):
    """GroupNorm → SiLU → conv, modulated by the (time, class) embedding, twice, plus the skip."""

    def __init__(self, channels: int, emb: int):
        super().__init__()
        self.norm1, self.norm2 = nn.GroupNorm(8, channels), nn.GroupNorm(8, channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.film = nn.Linear(emb, 2 * channels)

    def forward(self, x, e):
        scale, shift = self.film(e)[:, :, None, None].chunk(2, dim=1)
        h = self.conv1(nn.functional.silu(self.norm1(x)))
        h = self.norm2(h) * (1 + scale) + shift
        return x + self.conv2(nn.functional.silu(h))


class FlowNet(nn.Module):
    """A two-level U-Net (8x8 and 4x4) predicting the velocity; label n_classes is the null class."""

    def __init__(self, channels: int = 48, emb: int = 96, n_classes: int = 10):
        super().__init__()
        C = channels
        self.n_classes = n_classes
        self.time = TimeEmbedding()
        self.embed_t = nn.Sequential(nn.Linear(self.time.dim, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.embed_c = nn.Embedding(n_classes + 1, emb)
        self.conv_in = nn.Conv2d(1, C, 3, padding=1)
        self.enc = ResBlock(C, emb)
        self.down = nn.Conv2d(C, 2 * C, 3, stride=2, padding=1)
        self.mid = nn.ModuleList([ResBlock(2 * C, emb), ResBlock(2 * C, emb)])
        self.up = nn.Conv2d(2 * C, C, 3, padding=1)
        self.merge = nn.Conv2d(2 * C, C, 1)
        self.dec = ResBlock(C, emb)
        self.out = nn.Sequential(nn.GroupNorm(8, C), nn.SiLU(), nn.Conv2d(C, 1, 3, padding=1))

    def forward(self, x, t, labels):
        e = nn.functional.silu(self.embed_t(self.time(t)) + self.embed_c(labels))
        h1 = self.enc(self.conv_in(x), e)
        h = self.down(h1)
        for block in self.mid:
            h = block(h, e)
        h = self.up(nn.functional.interpolate(h, scale_factor=2, mode="nearest"))
        return self.out(self.dec(self.merge(torch.cat([h, h1], dim=1)), e))


@register("model", "digits_flow", domain="digits")
class DigitsFlow(VelocityModel):
    """v(x, t, cond) with classifier-free guidance in diffusers' convention: v = v_∅ + g (v_c - v_∅),
    g = `guidance_scale` (g = 1: the conditional model alone, one forward). `cond` is a PromptBatch."""

    sample_shape = (1, 8, 8)

    def __init__(self, net: FlowNet, guidance_scale: float = 1.0):
        super().__init__(RectifiedFlow())
        self.net = net
        self.guidance_scale = float(guidance_scale)
        self.config = {}

    def velocity(self, x, t, cond=None):
        if cond is None or cond.labels is None:
            raise ValueError("digits_flow is class-conditional: pass a PromptBatch with labels")
        labels = cond.labels.to(x.device)
        return self.guided(self.net, x, t, labels, lambda: torch.full_like(labels, self.net.n_classes),
                           lambda c, u: torch.cat([c, u]))

    def save(self, directory):
        save_pretrained(directory, self.net, {"model": "digits_flow", **self.config})

    @classmethod
    def load(cls, directory, guidance_scale: float = 1.0) -> "DigitsFlow":
        config, state = load_pretrained(directory, "digits_flow base model",
                                        "train it with `eam digits-pretrain flow --out DIR` (rule digits_base)")
        net = FlowNet(**config["arch"])
        load_state(net, state, directory, "digits_flow base model")
        model = cls(net, guidance_scale)
        model.config = config
        return model
