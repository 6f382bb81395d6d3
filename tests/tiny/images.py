"""Test images for the reward models."""
import torch


def smooth_images(n, h, w, seed=0):
    """Low-frequency random images (as decoded latents are), so resizing them is well posed."""
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.interpolate(torch.rand(n, 3, 6, 6, generator=g), size=(h, w), mode="bilinear",
                                           align_corners=False).clamp(0, 1)
