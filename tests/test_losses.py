"""AM's loss-time subsets, the official code's EMA-quantile clipping and loss scale, and where gradients go."""
import json
import os
import subprocess
import sys

import pytest
import torch

from eam.gmm import GaussianMixture, GMMVelocity
from eam.interpolants import RectifiedFlow
from eam.losses import AMConfig, EAMConfig, QuantileClipper, am_loss, am_time_subset, eam_loss
from eam.models import MLP, ResidualVelocity, VelocityModel
from eam.prompts import PromptBatch
from eam.reference import LinearReference
from eam.rewards import LinearReward, QuadraticReward


def test_last_random_subset_is_the_last_steps_plus_distinct_others():
    cfg = AMConfig(n_steps=40, n_last=10, n_random=10)
    ks = am_time_subset(cfg, torch.Generator().manual_seed(0))
    assert ks[-10:].tolist() == list(range(30, 40))
    others = ks[:-10]
    assert len(set(others.tolist())) == 10 and others.max() < 30


def test_stratified_subset_splits_at_sixty_percent():
    cfg = AMConfig(n_steps=40, time_subset="stratified", n_stratified=4)
    for seed in range(20):
        ks = am_time_subset(cfg, torch.Generator().manual_seed(seed)).tolist()
        assert ks == sorted(ks) and len(set(ks)) == 4
        assert sum(k < 24 for k in ks) == 2 and sum(k >= 24 for k in ks) == 2


def test_quantile_clipper_follows_the_official_ema():
    """Worked by hand: sqrt(losses) = 1..10 has 0.9-quantile 9.1 (linear interpolation), so the first update sets
    the threshold to 9.1 and keeps the 9 entries below it; x4 and x9 losses (quantiles 18.2, 27.3) give a running
    mean 13.65 for the second update (fewer than 1/decay updates so far), then the EMA 0.9·13.65 + 0.1·27.3 = 15.015."""
    clip = QuantileClipper(0.9, decay=0.9)
    k = torch.arange(1, 11, dtype=torch.float64)
    for scale, value, kept in ((1, 9.1, 9), (4, 13.65, 6), (9, 15.015, 5)):
        mask = clip.update(scale * k**2)
        assert clip.value == pytest.approx(value, abs=1e-5)  # the quantile is taken in float32
        assert mask.tolist() == [1.0] * kept + [0.0] * (10 - kept)


def _models():
    mix = GaussianMixture([0.5, 0.5], [[-1.0, 0.0], [1.0, 0.5]], [[[0.3, 0.0], [0.0, 0.2]]] * 2)
    interp = RectifiedFlow()
    base = GMMVelocity(mix, interp)
    model = ResidualVelocity(GMMVelocity(mix, interp), MLP(2, hidden=32, depth=2))
    torch.nn.init.normal_(model.residual.head.weight, std=0.1)
    return mix, base, model


def test_gradients_reach_only_the_trainable_residual():
    mix, base, model = _models()
    reward = LinearReward([1.0, -0.5])
    x0 = torch.randn(16, 2)
    outs = [am_loss(model, base, reward, 1.0, x0, AMConfig(n_steps=10, n_last=3, n_random=3)),
            eam_loss(model, base, reward, 1.0, x0, LinearReference(RectifiedFlow()), EAMConfig(ode_steps=4))]
    for out in outs:
        model.zero_grad()
        out.loss.backward()
        assert torch.isfinite(out.loss)
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.residual.parameters())
    assert not any(p.requires_grad for p in base.parameters()) and not any(
        p.requires_grad for p in model.base.parameters())


class _Labelled(VelocityModel):
    """A velocity that depends on each row's label (cond: a PromptBatch), so rows and their
    conditioning must stay aligned when the loss is split into parts."""

    def __init__(self, inner):
        super().__init__(inner.interpolant)
        self.inner = inner

    def velocity(self, x, t, cond=None):
        return self.inner(x, t) * (1 + 0.5 * cond.labels.to(x.dtype)[:, None])


def test_eam_loss_by_parts_has_the_gradient_of_one_forward():
    """times_per_forward < M runs the M loss timesteps in several forwards, each backpropagated on
    its own: the same loss value and gradient as one forward of all B·M rows, the same NFE count."""
    mix, base, model = _models()
    base, model = _Labelled(base), _Labelled(model)
    cond = PromptBatch([str(i) for i in range(6)], torch.tensor([0, 1, 2, 0, 1, 2]))
    reward, ref, x0 = LinearReward([1.0, -0.5]), LinearReference(RectifiedFlow()), torch.randn(6, 2)
    grads, losses, nfes = [], [], []
    for n in (None, 3, 1):
        model.zero_grad()
        out = eam_loss(model, base, reward, 1.0, x0, ref, EAMConfig(ode_steps=4, n_times=8, times_per_forward=n),
                       cond, generator=torch.Generator().manual_seed(0))
        assert (out.loss is None) == (n is not None) and len(out.parts) == {None: 0, 3: 3, 1: 8}[n]
        out.backward(0.5)
        losses.append(out.loss.item())
        grads.append(torch.cat([p.grad.flatten() for p in model.inner.residual.parameters()]))
        nfes.append(out.nfe)
    assert grads[0].abs().sum() > 0 and all(nfe == nfes[0] for nfe in nfes)
    for loss, grad in zip(losses[1:], grads[1:]):
        assert abs(loss - losses[0]) < 1e-5 * abs(losses[0])
        torch.testing.assert_close(grad, grads[0], rtol=1e-5, atol=1e-7)
    with torch.no_grad():  # without autograd the parts are summed at once
        out = eam_loss(model, base, reward, 1.0, x0, ref, EAMConfig(ode_steps=4, n_times=8, times_per_forward=3),
                       cond, generator=torch.Generator().manual_seed(0))
    assert not out.parts and abs(out.loss.item() - losses[0]) < 1e-5 * abs(losses[0])


class _TwoForwards:
    """Costs two forwards per evaluation while its guidance scale is not 1, as a guided model does."""

    guidance_scale = 3.0

    @property
    def cost(self) -> int:
        return 1 if self.guidance_scale == 1.0 else 2


class _Guided(_TwoForwards, GMMVelocity):
    pass


class _GuidedResidual(_TwoForwards, ResidualVelocity):
    pass


@torch.no_grad()
def test_nfe_per_sample_equals_what_the_losses_count():
    """`nfe_per_sample` (the equal-compute budget's unit) against the losses' own NFE ledgers, for every AM
    time subset and EAM base-score estimator, Euler and Heun, with and without a two-forward model; and the ledgers
    against the rows that actually reached the networks (each VelocityModel counts the rows it is called on)."""
    mix = GaussianMixture([0.5, 0.5], [[-1.0, 0.0], [1.0, 0.5]], [[[0.3, 0.0], [0.0, 0.2]]] * 2)
    reward, ref, B = LinearReward([1.0, -0.5]), LinearReference(RectifiedFlow()), 8
    for cls, residual in ((GMMVelocity, ResidualVelocity), (_Guided, _GuidedResidual)):
        base = cls(mix, RectifiedFlow())
        model = residual(cls(mix, RectifiedFlow()), MLP(2, hidden=8, depth=1))
        model_cost = base.cost
        for am in (AMConfig(n_steps=10, n_last=3, n_random=4), AMConfig(n_steps=3, n_last=2, n_random=5),
                   AMConfig(n_steps=10, time_subset="stratified", n_stratified=5), AMConfig(n_steps=6, time_subset="all"),
                   AMConfig(n_steps=10, n_last=3, n_random=4, guidance_in_adjoint=True)):
            rows = model.nfe + base.nfe
            out = am_loss(model, base, reward, 1.0, torch.randn(B, 2), am)
            assert sum(out.nfe.values()) == B * am.nfe_per_sample(model_cost), am
            if model_cost == 1:  # the rows that reached the networks (VelocityModel counts them), + B reward VJPs
                assert model.nfe + base.nfe - rows + B == sum(out.nfe.values()), am
        for bs in ("residual", "corrected", "endpoint", "exact", "bridge"):
            for method in ("euler", "heun"):
                for sampler in ("model", "base"):
                    eam = EAMConfig(ode_steps=3, ode_method=method, n_times=5, base_score=bs, sampler=sampler)
                    rows = model.nfe + base.nfe
                    out = eam_loss(model, base, reward, 1.0, torch.randn(B, 2), ref, eam, exact_score=mix.score,
                                   correction=base)
                    assert sum(out.nfe.values()) == B * eam.nfe_per_sample(model_cost), (bs, method, sampler)
                    if model_cost == 1:
                        assert model.nfe + base.nfe - rows + B == sum(out.nfe.values()), (bs, method, sampler)


def test_am_guides_only_its_sampled_trajectory_by_default():
    """guidance_in_adjoint: false (the official recipe): with CFG scale 3 the network is run on 2B rows per
    sampling step and on B rows per base VJP and per loss step, counted on the networks themselves; true
    guides all three. The ledger agrees, and the guidance scale is restored afterwards."""
    from eam.adapters.digits_flow import DigitsFlow, FlowNet

    torch.manual_seed(0)
    net = FlowNet(channels=8, emb=16)
    model, base = DigitsFlow(net, 3.0), DigitsFlow(FlowNet(channels=8, emb=16), 3.0).requires_grad_(False)
    base.net.load_state_dict(net.state_dict())
    rows = {"model": 0, "base": 0}
    model.net.register_forward_hook(lambda m, a, o: rows.__setitem__("model", rows["model"] + a[0].shape[0]))
    base.net.register_forward_hook(lambda m, a, o: rows.__setitem__("base", rows["base"] + a[0].shape[0]))

    class Mean:  # a differentiable reward on 8x8 images
        def __call__(self, x, cond=None):
            return x.flatten(1).mean(1)

    B, N = 4, 6
    cond = PromptBatch(["3"] * B, torch.full((B,), 3))
    for guided in (False, True):
        rows.update(model=0, base=0)
        cfg = AMConfig(n_steps=N, time_subset="stratified", n_stratified=2, guidance_in_adjoint=guided)
        out = am_loss(model, base, Mean(), 1.0, torch.randn(B, 1, 8, 8), cfg, cond)
        out.loss.backward()
        g = 2 if guided else 1
        assert rows == {"model": N * 2 * B + 2 * g * B, "base": N * g * B}, (guided, rows)
        assert sum(out.nfe.values()) == B * cfg.nfe_per_sample(2)
        assert model.guidance_scale == base.guidance_scale == 3.0


def test_am_terms_match_the_autograd_adjoint_of_the_unrolled_sde():
    """Independent of `lean_adjoint` and the term's assembly: the trajectory rebuilt from the SDE as written,
    X' = X + h (2v - X/(t + o)) + σ(t + o) √h ξ (rectified flow, offset o, the sampler's noise stream), the adjoint
    ã_k = ∂[-λ r(X_N)]/∂X_k by autograd through the unrolled steps after k (noise fixed; the control c is a
    constant, so this is the base's Jacobian along the model's path), and each term h‖(2/σ_k) c + σ_k ã_k‖²."""
    mix = GaussianMixture([0.5, 0.5], [[-1.0, 0.0], [1.0, 0.5]], [[[0.3, 0.0], [0.0, 0.2]]] * 2)
    base = GMMVelocity(mix, RectifiedFlow())
    c, lam, N, B = torch.tensor([0.3, -0.2]), 1.5, 6, 16
    model, reward = _Shifted(base, c), QuadraticReward([0.5, 0.25], 0.7)  # v_θ - v_base = c everywhere
    x0 = torch.randn(B, 2, generator=torch.Generator().manual_seed(1))
    out = am_loss(model, base, reward, lam, x0, AMConfig(n_steps=N, time_subset="all"),
                  generator=torch.Generator().manual_seed(3))
    h = 1.0 / N
    g = torch.Generator().manual_seed(3)
    noise = [torch.randn(B, 2, generator=g) for _ in range(N)]
    sigma = [float(base.interpolant.sigma(torch.tensor(k * h), h)) for k in range(N)]

    def step(k, x):
        t = torch.full((B,), k * h)
        return x + h * (2 * model(x, t) - x / (k * h + h)) + sigma[k] * h**0.5 * noise[k]

    xs = [x0]
    with torch.no_grad():
        for k in range(N):
            xs.append(step(k, xs[-1]))
    terms = []
    for k in range(N):
        xk = xs[k].clone().requires_grad_(True)
        x = xk
        for j in range(k, N):
            x = step(j, x)
        (adj,) = torch.autograd.grad(-lam * reward(x).sum(), xk)
        terms.append(h * ((2 / sigma[k]) * c + sigma[k] * adj).pow(2).sum(1))
    expected = torch.stack(terms).mean()
    assert float(out.loss) == pytest.approx(float(expected), rel=1e-4)
    assert torch.allclose(out.reward, reward(xs[-1]), atol=1e-5)  # the same path


class _Spy(QuantileClipper):
    """Records what the loss hands the clipper and the mask it gets back."""

    def update(self, losses):
        mask = super().update(losses)
        self.seen = (losses.detach().clone(), mask)
        return mask


def test_am_loss_is_the_official_mean_of_dt_weighted_terms_each_clipped():
    """The official code's loss: each (loss step, sample) term h_k‖u + σ ã‖² (h_k = 1/N on the uniform
    grid), clipped term by term, averaged over all |K|·B terms, the dropped ones included; `loss_scale:
    unit` is N times larger; `clip_per: sample` clips the per-sample means."""
    mix, base, model = _models()
    reward, x0, N, B = LinearReward([1.0, -0.5]), torch.randn(64, 2), 8, 64
    runs = {}
    for scale in ("dt", "unit"):
        for per in ("entry", "sample"):
            cfg = AMConfig(n_steps=N, time_subset="stratified", n_stratified=4, clip_per=per, loss_scale=scale,
                           clip_quantile=0.5)
            spy = _Spy(0.5)
            out = am_loss(model, base, reward, 1.0, x0, cfg, clipper=spy, generator=torch.Generator().manual_seed(0))
            runs[scale, per] = (out.loss.item(), *spy.seen)
    loss, terms, mask = runs["dt", "entry"]
    assert terms.shape == (4, B) and mask.shape == (4, B)
    assert 0.4 < mask.mean().item() < 0.6  # the first update's threshold is this call's median
    assert loss == pytest.approx((terms * mask).sum().item() / terms.numel(), rel=1e-6)
    assert runs["unit", "entry"][1] == pytest.approx(N * terms, rel=1e-5)
    loss_s, terms_s, mask_s = runs["dt", "sample"]
    assert terms_s.shape == mask_s.shape == (B,) and terms_s == pytest.approx(terms.mean(0), rel=1e-6)
    assert loss_s == pytest.approx((terms_s * mask_s).mean().item(), rel=1e-6)
    assert runs["unit", "sample"][0] == pytest.approx(N * loss_s, rel=1e-5)


_GATHER = """
import json, sys, torch
from eam.distributed import Group
from eam.losses import QuantileClipper
group = Group()
losses = torch.load(sys.argv[1])
half = losses[group.rank * 30:(group.rank + 1) * 30]
clip = QuantileClipper(0.9, gather=group.gathered)
masks = [clip.update(half * (i + 1)).tolist() for i in range(3)]
json.dump({"value": clip.value, "masks": masks}, open(sys.argv[2] + str(group.rank), "w"))
group.close()
"""


def test_clipping_quantile_is_gathered_over_processes(tmp_path):
    """Two gloo processes holding 30 terms each update the EMA with the quantile of all 60, as one
    process holding all 60 does (the official code gathers the losses over GPUs)."""
    losses = torch.rand(60, generator=torch.Generator().manual_seed(0))
    torch.save(losses, tmp_path / "losses.pt")
    (tmp_path / "gather.py").write_text(_GATHER)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        str(tmp_path / "gather.py"), str(tmp_path / "losses.pt"), str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    one = QuantileClipper(0.9)
    masks = [one.update(losses * (i + 1)) for i in range(3)]
    for rank in (0, 1):
        got = json.loads((tmp_path / f"out{rank}").read_text())
        assert got["value"] == pytest.approx(one.value, rel=1e-6)
        for m, g in zip(masks, got["masks"]):
            assert g == m[rank * 30:(rank + 1) * 30].tolist()


class _Shifted(VelocityModel):
    """v(x, t) + c: a velocity model moved by a constant vector."""

    def __init__(self, inner: VelocityModel, c: torch.Tensor):
        super().__init__(inner.interpolant)
        self.inner, self.c = inner, c

    def velocity(self, x, t, cond=None):
        return self.inner(x, t, cond) + self.c


def test_corrected_adds_the_base_minus_its_correction_to_the_endpoint_target():
    """(5.5b) target_corr = target_endpoint + v_base - u: with u = the base, `corrected` is `endpoint`; with
    u = base + c, its loss is `endpoint`'s for the model moved by +c (x_1 from the frozen base in both, so
    nothing else moves). A correction that is loaded but ignored fails the second check."""
    mix = GaussianMixture([0.5, 0.5], [[-1.0, 0.0], [1.0, 0.5]], [[[0.3, 0.0], [0.0, 0.2]]] * 2)
    base = GMMVelocity(mix, RectifiedFlow())
    model = ResidualVelocity(GMMVelocity(mix, RectifiedFlow()), MLP(2, hidden=16, depth=2))
    for p in model.residual.parameters():
        torch.nn.init.normal_(p, std=0.3)  # a model away from the base
    reward, ref, c = LinearReward([1.0, -0.5]), LinearReference(RectifiedFlow()), torch.tensor([0.3, -0.2])
    x0 = torch.randn(64, 2, generator=torch.Generator().manual_seed(1))

    def loss(base_score, m, correction):
        cfg = EAMConfig(ode_steps=4, ode_method="euler", n_times=3, base_score=base_score, sampler="base")
        return eam_loss(m, base, reward, 2.0, x0, ref, cfg, generator=torch.Generator().manual_seed(2),
                        correction=correction).loss.detach()

    torch.testing.assert_close(loss("corrected", model, base), loss("endpoint", model, None), rtol=1e-6, atol=0)
    torch.testing.assert_close(loss("corrected", model, _Shifted(base, c)),
                               loss("endpoint", _Shifted(model, c), None), rtol=1e-5, atol=0)
    assert not torch.allclose(loss("corrected", model, _Shifted(base, c)), loss("endpoint", model, None), rtol=1e-3)
