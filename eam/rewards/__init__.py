"""Rewards, registered by name: one file each, found by `eam.registry.discover` (a new module here registers
itself with `@register("reward", NAME, domain=..., weights=..., features=...)`)."""
from .base import Reward, reward_grad
from .toy import LinearReward, QuadraticReward

__all__ = ["Reward", "reward_grad", "LinearReward", "QuadraticReward", "load_reward"]


def load_reward(name: str, path=None) -> Reward:
    """A registered reward by name, its weights from `path` where it has any."""
    from ..registry import lookup

    return lookup("reward", name).load(path)
