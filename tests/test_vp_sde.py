"""AM's sampler on variance-preserving (DDPM) models: the DDPM posterior step, against diffusers'
DDIMScheduler with η = 1 (what the official AM code samples SD1.5 with), and the lean adjoint as the exact
adjoint of that chain."""
import pytest
import torch

from eam.gmm import GaussianMixture, GMMVelocity
from eam.interpolants import RectifiedFlow, VariancePreserving
from eam.losses import AMConfig, am_loss, lean_adjoint
from eam.rewards import LinearReward
from eam.samplers import sde_sample, time_grid

F64 = torch.float64


@pytest.mark.parametrize("betas", [(0.00085, 0.012), (0.002, 0.009)], ids=["sd15", "official-am"])
def test_ddpm_step_is_diffusers_ddim_with_eta_one(betas):
    """37 steps put every grid time on a training timestep (τ_k = 999 - 27k) and diffusers' step goes from
    τ to τ - 1000 // 37 = τ - 27: the same chain, down to ᾱ_0 at t = 1. Equal to float32 rounding, std
    included; at the last step Euler–Maruyama's noise is over 3x the posterior's."""
    from diffusers import DDIMScheduler

    sched = DDIMScheduler(num_train_timesteps=1000, beta_start=betas[0], beta_end=betas[1],
                          beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False)
    N = 37
    sched.set_timesteps(N)
    vp = VariancePreserving(*betas, "scaled_linear", 1000)
    ts = time_grid(N, dtype=F64)
    g = torch.Generator().manual_seed(0)
    for k in range(N):
        tau = 999 - 27 * k
        x, eps, z = (torch.randn(3, 4, 8, 8, generator=g, dtype=F64) for _ in range(3))
        ref = sched.step(eps.float(), tau, x.float(), eta=1.0, variance_noise=z.float()).prev_sample.double()
        D, Nn = vp.to_posterior_means(eps, x, ts[k], "epsilon")
        A, C, s = vp.sde_step(ts[k], ts[k + 1], 1.0 / N, "ddpm")
        ours = A * x + C * vp.velocity(D, Nn, ts[k]) + s * z
        torch.testing.assert_close(ours, ref, rtol=1e-4, atol=2e-5, msg=f"step {k}")
        std = sched._get_variance(torch.tensor(tau), torch.tensor(tau - 27)).sqrt().item()
        assert s.item() == pytest.approx(std, rel=1e-4)
    em = vp.sde_step(ts[N - 1], ts[N], 1.0 / N, "euler")[2]
    assert em.item() > 3 * s.item()


def _vp_mixture():
    mix = GaussianMixture([0.3, 0.7], [[-1.0, 0.5], [1.0, -0.5]],
                          [[[0.3, 0.1], [0.1, 0.2]], [[0.2, 0.0], [0.0, 0.4]]])
    return GMMVelocity(mix, VariancePreserving())


def test_lean_adjoint_is_the_exact_adjoint_of_the_ddpm_chain():
    """ã_0 from the recursion equals ∂⟨g, X_N⟩/∂X_0 by autograd through the sampler with its noise fixed."""
    base, N = _vp_mixture(), 6
    x0, gvec = torch.randn(16, 2, dtype=F64), torch.randn(16, 2, dtype=F64)
    traj, ts, _ = sde_sample(base, x0, N, generator=torch.Generator().manual_seed(1), step="ddpm")
    adj, _ = lean_adjoint(base, traj, ts, gvec, 1.0 / N, step="ddpm")
    x = x0.clone().requires_grad_(True)
    with torch.enable_grad():
        xN = sde_sample.__wrapped__(base, x, N, generator=torch.Generator().manual_seed(1), step="ddpm")[0][-1]
        (grad,) = torch.autograd.grad((gvec * xN).sum(), x)
    torch.testing.assert_close(traj[-1], xN.detach())
    torch.testing.assert_close(adj[0], grad, rtol=1e-9, atol=1e-12)
    assert grad.abs().max() > 1e-3


def test_am_samples_vp_models_with_the_ddpm_step_and_flows_with_euler():
    """sde_step: auto picks the posterior step on a VP model, so the loss of the base against itself is 0
    only with the matching adjoint; on a rectified flow `ddpm` is refused with one line."""
    base, reward, x0 = _vp_mixture(), LinearReward([1.0, -0.5]), torch.randn(32, 2, dtype=F64)
    outs = {}
    for step in ("auto", "ddpm", "euler"):
        cfg = AMConfig(n_steps=8, time_subset="all", sde_step=step)
        outs[step] = am_loss(base, base, reward, 1.0, x0, cfg, generator=torch.Generator().manual_seed(0)).loss.item()
    assert outs["auto"] == outs["ddpm"] != outs["euler"]
    rf = GMMVelocity(_vp_mixture().mixture, RectifiedFlow())
    with pytest.raises(ValueError, match="variance-preserving"):
        am_loss(rf, rf, reward, 1.0, x0, AMConfig(n_steps=4, sde_step="ddpm"))
