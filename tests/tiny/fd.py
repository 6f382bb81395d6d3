"""The finite-difference check every gradient test shares: a gradient against the central difference of
the function along a random direction."""
import torch


def assert_matches_central_difference(f, x, grad, rtol, atol, eps=1e-5, seed=0, per_sample=False):
    """⟨grad, d⟩ against (f(x + εd) − f(x − εd)) / 2ε for d ~ N(0, I) (fixed seed); f returns one value per
    sample, compared summed over the batch or, with `per_sample`, sample by sample. The directional
    derivative must not vanish, or the check would hold for any gradient."""
    x = x.detach()
    d = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed), dtype=x.dtype).to(x.device)
    with torch.no_grad():
        fd = (f(x + eps * d) - f(x - eps * d)) / (2 * eps)
    dot = (grad * d).flatten(1).sum(1)
    if not per_sample:
        dot, fd = dot.sum(), fd.sum()
    assert dot.abs().max() > 10 * atol, "the directional derivative vanishes: the check would be empty"
    torch.testing.assert_close(dot, fd, rtol=rtol, atol=atol)


def assert_reward_gradient(reward, x, cond=None, **check):
    """∇_x Σ r(x, cond) by autograd against the central difference (`check`: the tolerances, seed)."""
    x = x.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(reward(x, cond).sum(), x)
    assert_matches_central_difference(lambda y: reward(y, cond), x, g, **check)
