"""Adjoint Matching (method.md §3) and Efficient Adjoint Matching (§4, §5) losses.

Each loss returns a `LossOutput`: the scalar to minimise (mean over samples and loss timesteps,
summed over coordinates), the training reward at the sampled endpoints, and the function
evaluations it spent by kind, in network forwards per sample (a batch of B counts B, twice that
under classifier-free guidance: `VelocityModel.cost`). Callers backpropagate with
`LossOutput.backward()`: a loss may defer its training forwards to run them part by part there.
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import torch

from .config import check_choices
from .interpolants import bcast
from .models import VelocityModel
from .phases import phase
from .reference import LinearReference
from .rewards import Reward, reward_grad
from .samplers import ode_sample, sde_sample

NFE_KINDS = ("model_fwd", "model_train", "base_fwd", "base_vjp", "reward_vjp")


@dataclass
class LossOutput:
    loss: torch.Tensor | None
    reward: torch.Tensor
    nfe: dict = field(default_factory=lambda: dict.fromkeys(NFE_KINDS, 0))
    parts: list = field(default_factory=list)  # deferred loss parts (callables); their sum is the loss

    def backward(self, scale: float = 1.0):
        """Backpropagate scale × loss. Deferred parts run one at a time, each freed after its backward
        (peak activation memory of one part); `loss` then holds the summed, detached value."""
        if not self.parts:
            with phase("train_bwd"):
                (self.loss * scale).backward()
            return
        total = 0.0
        for part in self.parts:
            value = part()
            with phase("train_bwd"):
                (value * scale).backward()
            total = total + value.detach()
        self.loss, self.parts = total, []


def _sqnorm(z: torch.Tensor) -> torch.Tensor:
    return z.flatten(1).pow(2).sum(1)


# ---------------------------------------------------------------------------------------------
# Adjoint Matching
# ---------------------------------------------------------------------------------------------
@dataclass
class AMConfig:
    n_steps: int = 40                 # N Euler–Maruyama steps
    offset: float | None = None       # σ offset h near t = 0 (default: one step, 1/N)
    time_subset: str = "last_random"  # "last_random" | "stratified" | "all"
    n_last: int = 10                  # last_random: the last n_last steps ...
    n_random: int = 10                # ... plus n_random others drawn uniformly
    n_stratified: int = 4             # stratified: half below 60% of the trajectory, half above
    clip_quantile: float | None = None  # drop losses above an EMA of this quantile (official: 0.9)
    clip_per: str = "entry"           # "entry" (official): each (sample, loss step) term; "sample": its mean over steps
    loss_scale: str = "dt"            # "dt" (official): each term times its step h, mean over terms; "unit": no h
    sde_step: str = "auto"            # "euler" (Euler–Maruyama) | "ddpm" (DDPM posterior, VP only) | "auto":
                                      # the interpolant's (ddpm for VP, the official SD1.5 code; euler otherwise)
    guidance_in_adjoint: bool = False  # False (the official code): CFG only in the sampled trajectory; the
                                       # base VJPs and the control u = 2(v_θ - v_base)/σ unguided

    def __post_init__(self):
        for name in ("n_steps", "n_last", "n_random", "n_stratified"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (1 if name == "n_steps" else 0):
                raise ValueError(f"AM {name} must be a {'positive' if name == 'n_steps' else 'non-negative'} integer, got {v!r}")
        if self.clip_quantile is not None and not 0 < self.clip_quantile < 1:
            raise ValueError(f"AM clip_quantile must lie in (0, 1), got {self.clip_quantile}")
        if not isinstance(self.guidance_in_adjoint, bool):
            raise ValueError(f"AM guidance_in_adjoint must be true or false, got {self.guidance_in_adjoint!r}")
        check_choices(self, "AM", clip_per=("entry", "sample"), sde_step=("auto", "euler", "ddpm"),
                      loss_scale=("dt", "unit"), time_subset=("last_random", "stratified", "all"))

    def nfe_per_sample(self, cost: int = 1) -> int:
        """Function evaluations per sample and iteration, as `am_loss` counts them (`cost`: forwards per
        model evaluation, 2 under classifier-free guidance)."""
        N = self.n_steps
        if self.time_subset == "all":
            k = N
        elif self.time_subset == "last_random":
            k = min(self.n_last, N) + min(self.n_random, max(N - self.n_last, 0))
        else:
            mid = round(0.6 * N)
            k = min(self.n_stratified // 2, mid) + min(self.n_stratified - self.n_stratified // 2, N - mid)
        adjoint_cost = cost if self.guidance_in_adjoint else 1
        return N * cost + (N + k) * adjoint_cost + 1  # N sampling forwards, N base VJPs, |K| training passes, 1 reward VJP


@contextmanager
def unguided(*models):
    """The models' classifier-free guidance switched off (scale 1, one forward per evaluation) inside."""
    held = [(m, m.guidance_scale) for m in models if hasattr(m, "guidance_scale")]
    try:
        for m, _ in held:
            m.guidance_scale = 1.0
        yield
    finally:
        for m, g in held:
            m.guidance_scale = g


class QuantileClipper:
    """The official AM code's loss clipping: an EMA (decay 0.9; a plain running average while fewer
    than 1/decay updates were made) of the q-quantile of sqrt(loss) over the terms of one loss call,
    gathered over the processes of a data-parallel run (`gather`: a tensor's concatenation over
    processes); terms at or above the updated EMA are dropped."""

    def __init__(self, quantile: float, decay: float = 0.9, gather=None):
        self.q, self.decay, self.updates, self.value = quantile, decay, 0, 0.0
        self.gather = gather

    def update(self, losses: torch.Tensor) -> torch.Tensor:
        root = losses.detach().sqrt()
        everyone = root.flatten() if self.gather is None else self.gather(root.flatten())
        q = torch.quantile(everyone.float(), self.q).item()
        if self.updates < 1 / self.decay:
            self.value += (q - self.value) / (self.updates + 1)
        else:
            self.value = self.decay * self.value + (1 - self.decay) * q
        self.updates += 1
        return (root < self.value).to(losses.dtype)


def am_time_subset(cfg: AMConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """Indices k of the loss steps in 0..N-1."""
    N = cfg.n_steps
    if cfg.time_subset == "all":
        return torch.arange(N)
    if cfg.time_subset == "last_random":
        last = torch.arange(max(N - cfg.n_last, 0), N)
        others = torch.randperm(max(N - cfg.n_last, 0), generator=generator)[: cfg.n_random]
        return torch.cat([others.sort().values, last])
    if cfg.time_subset == "stratified":
        mid = round(0.6 * N)
        lo = torch.randperm(mid, generator=generator)[: cfg.n_stratified // 2]
        hi = mid + torch.randperm(N - mid, generator=generator)[: cfg.n_stratified - cfg.n_stratified // 2]
        return torch.cat([lo, hi]).sort().values
    raise ValueError(f"unknown AM time subset {cfg.time_subset!r}; expected last_random, stratified or all")


def lean_adjoint(base: VelocityModel, traj: torch.Tensor, ts: torch.Tensor, a_final: torch.Tensor,
                 offset: float, cond=None, step: str = "euler"):
    """ã_N = a_final; ã_k = A_k ã_{k+1} + C_k ∇_x v_base(X_k, t_k)ᵀ ã_{k+1}: the exact adjoint of the
    sampler's step X' = A X + C v + s ξ (euler: A = 1 - hα̇/α, C = 2h), one base VJP per step.
    Returns ã_0..ã_N and v_base(X_k, t_k), k < N."""
    interp, N = base.interpolant, traj.shape[0] - 1
    adj, v_base = [None] * (N + 1), [None] * N
    adj[N] = a = a_final
    for k in range(N - 1, -1, -1):
        with torch.enable_grad():
            x = traj[k].detach().requires_grad_(True)
            v = base(x, ts[k], cond)
            (jv,) = torch.autograd.grad(v, x, a)
        A, C, _ = interp.sde_step(ts[k], ts[k + 1], offset, step)
        a = A * a + C * jv
        adj[k], v_base[k] = a, v.detach()
    return torch.stack(adj), torch.stack(v_base)


def am_loss(model: VelocityModel, base: VelocityModel, reward: Reward, lam: float, x0: torch.Tensor,
            cfg: AMConfig, cond=None, clipper: QuantileClipper | None = None,
            generator: torch.Generator | None = None) -> LossOutput:
    """L_AM = mean over (sample, k ∈ K) of ‖C_k (v_θ - v_base)(X_k, t_k) / s_k + s_k ã_k‖² on one fresh
    SDE trajectory, X' = A X + C v + s ξ its step (Euler–Maruyama: h_k ‖(2/σ_k)(v_θ - v_base) + σ_k ã_k‖²);
    `loss_scale: unit` divides each term by h_k; each term clipped by `clipper`."""
    B, N = x0.shape[0], cfg.n_steps
    offset = 1.0 / N if cfg.offset is None else cfg.offset
    out = LossOutput(None, None)
    step = model.interpolant.default_sde_step if cfg.sde_step == "auto" else cfg.sde_step
    with phase("sample"):
        traj, ts, _ = sde_sample(model, x0, N, offset, cond, generator, step)
    out.nfe["model_fwd"] += N * B * model.cost
    with phase("reward_vjp"):
        r, grad_r = reward_grad(reward, traj[-1], cond)
    out.nfe["reward_vjp"] += B
    ks = am_time_subset(cfg, generator)
    with nullcontext() if cfg.guidance_in_adjoint else unguided(model, base):
        with phase("base_vjp"):
            adj, v_base = lean_adjoint(base, traj, ts, -lam * grad_r, offset, cond, step)
        out.nfe["base_vjp"] += N * B * base.cost
        x_k, t_k = traj[ks].flatten(0, 1), ts[ks].repeat_interleave(B)
        with phase("train_fwd"):
            v_theta = model(x_k, t_k, _repeat_cond(cond, len(ks)))
        out.nfe["model_train"] += len(ks) * B * model.cost
    _, C, s = (bcast(c.repeat_interleave(B), x_k) for c in model.interpolant.sde_step(ts[ks], ts[ks + 1], offset, step))
    terms = _sqnorm(C / s * (v_theta - v_base[ks].flatten(0, 1)) + s * adj[ks].flatten(0, 1)).view(len(ks), B)
    if cfg.loss_scale == "unit":
        terms = terms / (ts[ks + 1] - ts[ks]).to(terms.dtype)[:, None]
    if cfg.clip_per == "sample":
        terms = terms.mean(0)
    if clipper is not None:
        terms = terms * clipper.update(terms)
    out.loss, out.reward = terms.mean(), r
    return out


# ---------------------------------------------------------------------------------------------
# Efficient Adjoint Matching
# ---------------------------------------------------------------------------------------------
BASE_SCORES = ("residual", "corrected", "endpoint", "exact", "bridge")


@dataclass
class EAMConfig:
    ode_steps: int = 8              # K steps of the few-step sampler for x_1
    ode_method: str = "heun"        # "euler" | "heun" (Heun: 2 NFEs per step) | "ddim" (SD1.5's pipeline step)
    n_times: int = 8                # M loss timesteps per x_1
    base_score: str = "residual"    # "residual" | "corrected" | "endpoint" | "exact" | "bridge" (§5)
    delta: float = 0.05             # residual, corrected, endpoint: evaluate the scores at t' = 1 - δ
    sampler: str = "model"          # the network whose ODE draws x_1: "model", or "base" (frozen: fits the
                                    # correction network of `corrected`, §5.5)
    correction: str | None = None   # corrected: the folder of its correction network (a fine-tuned output)
    anchor_batches: int | None = None  # corrected: subtract the mean λ = 0 gradient at the base over this many
                                       # batches from every step (§5.6); None: 400 for corrected, 0 otherwise
    anchor: str | None = None       # corrected: a file of that gradient (`eam finetune --anchor-only`), shared by
                                    # the runs of one base and settings, instead of fitting it in each run (both
                                    # ignored by the other variants)
    weighting: str = "u"            # "u": weight 4/σ² (u-space), "v": plain v-space regression
    t_min: float = 0.02             # loss times are stratified over [t_min, t_max]
    t_max: float = 0.98
    consistency: float = 0.0       # residual: weight γ of the endpoint target mixed in (§5.4); 0 = pure residual
    times_per_forward: int | None = None  # loss timesteps per training forward: None = all M in one
                                          # forward of B·M rows; fewer = ceil(M / n) forwards, each
                                          # backpropagated on its own (less activation memory)

    def __post_init__(self):
        check_choices(self, "EAM", base_score=BASE_SCORES, sampler=("model", "base"),
                      ode_method=("euler", "heun", "ddim"), weighting=("u", "v"))
        if not 0 < self.delta < 1:
            raise ValueError(f"EAM delta must lie in (0, 1), got {self.delta}")
        if not 0 < self.t_min < self.t_max < 1:
            raise ValueError(f"EAM times need 0 < t_min < t_max < 1, got {self.t_min}, {self.t_max}")
        if self.n_times < 1 or self.ode_steps < 1:
            raise ValueError("EAM n_times and ode_steps must be at least 1")
        n = self.times_per_forward
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ValueError(f"EAM times_per_forward must be a positive integer or null, got {self.times_per_forward!r}")
        n = self.anchor_batches
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
            raise ValueError(f"EAM anchor_batches must be a non-negative integer or null, got {n!r}")
        if isinstance(self.consistency, bool) or not isinstance(self.consistency, (int, float)) or not 0 <= self.consistency <= 1:
            raise ValueError(f"EAM consistency must lie in [0, 1], got {self.consistency!r}")

    @property
    def n_anchor(self) -> int:
        """Batches of the λ = 0 base gradient subtracted from every step (§5.6): `corrected` only, so that one
        settings file serves every variant."""
        if self.base_score != "corrected":
            return 0
        return 400 if self.anchor_batches is None else self.anchor_batches

    def nfe_per_sample(self, cost: int = 1) -> int:
        """Function evaluations per sample (x_1) and iteration, as `eam_loss` counts them."""
        sampling = self.ode_steps * (2 if self.ode_method == "heun" else 1)
        base = {"residual": 2, "corrected": 1 + 2 * self.n_times, "endpoint": 1, "exact": 0,
                "bridge": self.n_times}[self.base_score]
        return (sampling + base + self.n_times) * cost + 1  # + M training passes, 1 reward VJP


def base_score_endpoint(base: VelocityModel, x1: torch.Tensor, delta: float, cond=None) -> torch.Tensor:
    """∇log p_base(x_1) ≈ α' s_base(α' x_1, t'), t' = 1 - δ: the exact score of p_base * N(0, (β'/α')²I)."""
    t = torch.full((x1.shape[0],), 1.0 - delta, dtype=x1.dtype, device=x1.device)
    a = bcast(base.interpolant.alpha(t), x1)
    x = a * x1
    return a * base.interpolant.velocity_to_score(base(x, t, cond), x, t)


def eam_times(cfg: EAMConfig, n: int, generator=None, device=None, dtype=None) -> torch.Tensor:
    """n stratified times in [t_min, t_max]: one uniform draw in each of n equal strata, shuffled."""
    dtype = torch.promote_types(dtype or torch.float32, torch.float32)
    u = (torch.arange(n, dtype=dtype) + torch.rand(n, generator=generator, dtype=dtype)) / n
    u = u[torch.randperm(n, generator=generator)]
    return (cfg.t_min + (cfg.t_max - cfg.t_min) * u).to(device)


def eam_loss(model: VelocityModel, base: VelocityModel, reward: Reward, lam: float, x0: torch.Tensor,
             ref: LinearReference, cfg: EAMConfig, cond=None, exact_score=None,
             generator: torch.Generator | None = None, correction: VelocityModel | None = None) -> LossOutput:
    """L_EAM = mean ‖(2/σ_t)(v_θ(x_t, t) - v_lin(x_t, t)) + σ_t Φ(t) ∇g(x_1)‖², x_t = α x_1 + β ε.

    `residual` (the default, docs/method.md §5.4) regresses instead on sg(v_θ(x_t, t)) - (σ²/2)Φ(t) ∇log(p̂_θ/p̂*)(x_1),
    both scores at the same near-clean time: at λ = 0 the pretrained model is its exact fixed point whatever
    sampler drew x_1 (but networks inconsistent with their own flow are fixed points too; `consistency` mixes
    the endpoint target back in). `corrected` (§5.5) adds to the endpoint target the base's own inconsistency
    sg(v_base - u_ψ)(x_t, t), u_ψ = `correction`: the λ = 0 endpoint fit with the sampler frozen at the base."""
    cfg.__post_init__()  # fields may have been set after construction
    B, M = x0.shape[0], cfg.n_times
    interp = model.interpolant
    out = LossOutput(None, None)
    if cfg.base_score == "corrected" and correction is None:
        raise ValueError("base_score 'corrected' needs its correction network (eam.correction: a λ = 0 endpoint "
                         "run with eam.sampler: base, docs/method.md §5.5)")
    sampler = model if cfg.sampler == "model" else base
    with phase("sample"), torch.no_grad():
        x1 = ode_sample(sampler, x0, cfg.ode_steps, cfg.ode_method, cond)
    out.nfe["model_fwd" if cfg.sampler == "model" else "base_fwd"] += \
        cfg.ode_steps * B * (2 if cfg.ode_method == "heun" else 1) * sampler.cost
    with phase("reward_vjp"):
        r, grad_r = reward_grad(reward, x1, cond)
    out.nfe["reward_vjp"] += B

    # ∇g(x_1) = ∇log p_lin - ∇log p_base - λ∇r  (§4, §5); residual: ∇log p̂_θ - ∇log p̂_base - λ∇r  (§5.4)
    if cfg.base_score == "residual":
        with torch.no_grad(), phase("sample"):  # a no-grad model forward, priced as the sampling ones
            s_model = base_score_endpoint(model, x1, cfg.delta, cond)
        with torch.no_grad(), phase("base_fwd"):
            s_base = base_score_endpoint(base, x1, cfg.delta, cond)
            grad_g = s_model - s_base - lam * grad_r
            if cfg.consistency:
                grad_g_endpoint = ref.score_data(x1) - s_base - lam * grad_r
        out.nfe["model_fwd"] += B * model.cost
        out.nfe["base_fwd"] += B * base.cost
    elif cfg.base_score in ("endpoint", "corrected"):
        with torch.no_grad(), phase("base_fwd"):
            grad_g = ref.score_data(x1) - base_score_endpoint(base, x1, cfg.delta, cond) - lam * grad_r
        out.nfe["base_fwd"] += B * base.cost
    elif cfg.base_score == "exact":
        if exact_score is None:
            raise ValueError("base_score 'exact' needs an analytic base score (only benchmark bases have one)")
        grad_g = ref.score_data(x1) - exact_score(x1) - lam * grad_r
    else:  # bridge
        grad_g = -lam * grad_r

    t = eam_times(cfg, B * M, generator, x0.device, x0.dtype)
    x1m, gm, condm = x1.repeat(M, *[1] * (x1.dim() - 1)), grad_g.repeat(M, *[1] * (x1.dim() - 1)), _repeat_cond(cond, M)
    a, b = (bcast(c, x1m) for c in interp.coefficients(t)[:2])
    eps = torch.randn(x1m.shape, generator=generator, dtype=x1m.dtype).to(x1m.device)
    xt = a * x1m + b * eps
    sigma2 = bcast(interp.sigma(t) ** 2, xt)
    shift = 0.5 * sigma2 * ref.phi(t, xt) * gm  # (σ²/2) Φ(t) ∇g(x_1)
    if cfg.base_score == "bridge":
        # biased ablation: the pretrained control at x_t replaces the base part of the target
        with torch.no_grad(), phase("base_fwd"):
            target = base(xt, t, condm) - shift
        out.nfe["base_fwd"] += B * M * base.cost
    elif cfg.base_score in ("endpoint", "exact"):
        target = ref.velocity(xt, t) - shift
    elif cfg.base_score == "corrected":  # (5.5b): the endpoint target plus the base's inconsistency
        with torch.no_grad(), phase("base_fwd"):
            target = ref.velocity(xt, t) - shift + base(xt, t, condm) - correction(xt, t, condm)
        out.nfe["base_fwd"] += 2 * B * M * base.cost
    else:  # residual: sg(v_θ(x_t, t)) - shift, formed in `part` from the training forward itself
        target = -shift
        if cfg.consistency:
            gme = grad_g_endpoint.repeat(M, *[1] * (x1.dim() - 1))
            endpoint_target = ref.velocity(xt, t) - 0.5 * sigma2 * ref.phi(t, xt) * gme
    weight = 4 / sigma2.flatten() if cfg.weighting == "u" else torch.ones_like(t)
    out.nfe["model_train"] += B * M * model.cost
    out.reward = r

    def part(rows: slice) -> torch.Tensor:  # this part's share of the mean over all B·M rows
        with phase("train_fwd"):
            v_theta = model(xt[rows], t[rows], _slice_cond(condm, rows))
        tgt = target[rows]
        if cfg.base_score == "residual":
            tgt = tgt + v_theta.detach()
            if cfg.consistency:
                tgt = tgt + cfg.consistency * (endpoint_target[rows] - tgt)
        return (weight[rows] * _sqnorm(v_theta - tgt)).sum() / (B * M)

    n = cfg.times_per_forward or M
    if n >= M:
        out.loss = part(slice(None))
        return out
    # every per-row tensor (x_t, t, target, weight, conditioning) is sliced by the same rows
    out.parts = [lambda rows=slice(i * B, min(i + n, M) * B): part(rows) for i in range(0, M, n)]
    if not torch.is_grad_enabled():
        out.loss = sum(p() for p in out.parts)
        out.parts = []
    return out


def _slice_cond(cond, rows: slice):
    """Some rows of a stacked conditioning (None, a tensor, a list, or an object with its
    own `select(rows)` such as a PromptBatch)."""
    if cond is None or rows == slice(None):
        return cond
    if isinstance(cond, (torch.Tensor, list, tuple)):
        return cond[rows]
    return cond.select(rows)


def _repeat_cond(cond, n: int):
    """Conditioning repeated for n stacked copies of the batch (None, a tensor, a list, or an
    object with its own `repeat(n)` such as a PromptBatch)."""
    if cond is None:
        return None
    if isinstance(cond, torch.Tensor):
        return cond.repeat(n, *[1] * (cond.dim() - 1))
    if isinstance(cond, (list, tuple)):
        return list(cond) * n
    return cond.repeat(n)
