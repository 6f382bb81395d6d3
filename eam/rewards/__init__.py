"""Rewards, registered by name: one file each; importing this package registers them all."""
from . import (aesthetics, clipscore, digit_classifier, digit_clip, heldout_classifier, hpsv2, imagereward,  # noqa: F401
               pickscore, stroke_quality, toy)  # (registration)
from .base import Reward, reward_grad
from .toy import LinearReward, QuadraticReward

__all__ = ["Reward", "reward_grad", "LinearReward", "QuadraticReward", "load_reward"]


def load_reward(name: str, path=None) -> Reward:
    """A registered reward by name, its weights from `path` where it has any."""
    from ..registry import lookup

    return lookup("reward", name).load(path)
