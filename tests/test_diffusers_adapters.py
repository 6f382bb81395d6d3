"""SD3 and SD1.5 adapters on tiny random pipelines saved in the diffusers layout: the time and
prediction conventions against diffusers' own schedulers, AM and EAM iterations end to end with
LoRA and full fine-tuning, the frozen base, saving/loading, and the decoded reward's gradient."""
import pytest
import torch

from eam.checkpoint import MissingWeights
from eam.losses import AMConfig, EAMConfig, am_loss, eam_loss
from eam.prompts import PromptBatch
from eam.reference import LinearReference
from eam.registry import lookup
from eam.rewards import load_reward
from eam.rewards.image import OnDecoded
from tiny.diffusers_models import sd3_pipeline, sd15_pipeline
from tiny.fd import assert_reward_gradient
from tiny.hf import clip_model

PROMPTS = PromptBatch(["a red fox in the snow", "a bowl of fruit"])
LORA = {"rank": 4, "alpha": 4.0}


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("t2i")
    clip_model(root / "pickscore")
    return {"sd3": sd3_pipeline(root / "sd3"), "sd15": sd15_pipeline(root / "sd15"), "pickscore": root / "pickscore"}


def load(dirs, name, **options):
    return lookup("model", name).load(dirs[name], resolution=16, **options)


def test_sd3_velocity_is_the_flow_match_euler_step(dirs):
    """One step of diffusers' FlowMatchEulerDiscreteScheduler from σ to σ' equals x + (t' - t) v(x, t)
    with t = 1 - σ: the sign and time map of our convention."""
    model = load(dirs, "sd3")
    sched = model.pipe.scheduler
    sched.set_timesteps(4)
    x = torch.randn(2, *model.sample_shape)
    i = 1
    sigma, sigma_next = sched.sigmas[i], sched.sigmas[i + 1]
    with torch.no_grad():
        seq, pooled = model.embed(PROMPTS.texts)
        out = model.denoiser(hidden_states=x, timestep=sched.timesteps[i].expand(2), encoder_hidden_states=seq,
                             pooled_projections=pooled).sample
        ref = sched.step(out, sched.timesteps[i], x).prev_sample
        ours = x + (sigma - sigma_next) * model(x, 1 - sigma, PROMPTS)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_sd15_velocity_matches_a_small_ddim_step(dirs):
    """DDIM (η = 0) is exact along the probability-flow ODE for its own ε; over one training
    timestep its displacement is x + Δt v up to O(Δt²)."""
    from diffusers import DDIMScheduler

    model = load(dirs, "sd15")
    ddim = DDIMScheduler.from_config(model.pipe.scheduler.config, clip_sample=False)
    ddim.set_timesteps(1000)
    tau = 500
    x = torch.randn(2, *model.sample_shape)
    with torch.no_grad():
        (emb,) = model.embed(PROMPTS.texts)
        eps = model.denoiser(x, torch.tensor([tau, tau]), encoder_hidden_states=emb).sample
        ref = ddim.step(eps, tau, x).prev_sample  # to timestep τ - 1
        t, dt = 1 - tau / 999, 1 / 999
        ours = x + dt * model(x, t, PROMPTS)
    disp_ref, disp = ref - x, ours - x
    assert (disp - disp_ref).norm() < 0.02 * disp_ref.norm()


@pytest.mark.parametrize("name", ["sd3", "sd15"])
@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
@pytest.mark.parametrize("method", ["am", "eam"])
def test_training_iteration(dirs, name, lora, method):
    """Finite loss; gradients reach only the trainable parameters (only LoRA's with LoRA, never the
    text encoders or the VAE); one optimiser step changes the model and leaves the base bit-identical."""
    base, model = lookup("model", name).pair(dirs[name], guidance_scale=3.0, resolution=16,
                                             lora=LORA if lora else None)
    reward = OnDecoded(load_reward("pickscore", dirs["pickscore"]), model.decode)
    base_net = model.denoiser if lora else base.denoiser
    frozen = {k: v.clone() for k, v in base_net.state_dict().items() if "lora_" not in k}
    others = {k: v.clone() for k, v in model.frozen.state_dict().items()}
    x0 = torch.randn(2, *model.sample_shape)
    with torch.no_grad():
        v_base0 = base(x0, 0.5, PROMPTS)
    if method == "am":
        o = am_loss(model, base, reward, 2.0, x0, AMConfig(n_steps=4, n_last=2, n_random=1), PROMPTS)
    else:
        o = eam_loss(model, base, reward, 2.0, x0, LinearReference(model.interpolant), EAMConfig(ode_steps=2, n_times=2),
                     PROMPTS)
    assert torch.isfinite(o.loss) and o.loss > 0
    opt = torch.optim.SGD(model.trainable_parameters(), lr=1e-2)
    o.loss.backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert with_grad and with_grad <= trainable
    assert all(n.startswith("denoiser.") for n in trainable)
    if lora:
        assert all("lora_" in n for n in trainable)
        assert any("lora_B" in n for n in with_grad)
    opt.step()
    for k, v in base_net.state_dict().items():
        if "lora_" not in k:
            assert torch.equal(v, frozen[k]), k
    for k, v in model.frozen.state_dict().items():
        assert torch.equal(v, others[k]), k
    with torch.no_grad():
        assert torch.equal(base(x0, 0.5, PROMPTS), v_base0)
        assert not torch.allclose(model(x0, 0.5, PROMPTS), v_base0)
    assert o.nfe["model_train"] > 0 and o.nfe["reward_vjp"] == 2


def test_lora_model_starts_at_the_base_and_shares_its_weights(dirs):
    base, model = lookup("model", "sd3").pair(dirs["sd3"], resolution=16, lora=LORA)
    x = torch.randn(2, *model.sample_shape)
    with torch.no_grad():
        torch.testing.assert_close(model(x, 0.3, PROMPTS), base(x, 0.3, PROMPTS), rtol=0, atol=0)
    assert not list(base.parameters())  # no second copy of the network


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_fine_tuned_weights_round_trip(dirs, tmp_path, lora):
    model = load(dirs, "sd15", lora=LORA if lora else None, guidance_scale=2.0)
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(0.01 * torch.randn_like(p))
    model.save(tmp_path / "ft")
    again = lookup("model", "sd15").load(tmp_path / "ft")
    assert again.guidance_scale == 2.0 and again.sample_shape == model.sample_shape
    x = torch.randn(2, *model.sample_shape)
    with torch.no_grad():
        torch.testing.assert_close(again(x, 0.4, PROMPTS), model(x, 0.4, PROMPTS))


def test_decoded_reward_gradient_matches_finite_differences(dirs):
    """∇_x r(decode(x)) through the VAE decoder and the reward's torch preprocessing, in float64."""
    model = load(dirs, "sd3")
    model.pipe.vae.double()
    reward = OnDecoded(load_reward("pickscore", dirs["pickscore"]).double(), model.decode)
    x = torch.randn(2, *model.sample_shape, dtype=torch.float64)
    assert_reward_gradient(reward, x, PROMPTS, rtol=1e-5, atol=1e-8)


def test_prompts_are_encoded_once(dirs, monkeypatch):
    model = load(dirs, "sd15")
    calls = []
    encode = model.encode
    monkeypatch.setattr(model, "encode", lambda texts: calls.append(list(texts)) or encode(texts))
    x = torch.randn(4, *model.sample_shape)
    with torch.no_grad():
        model(x, 0.5, PROMPTS.repeat(2))
        model(x, 0.7, PROMPTS.repeat(2))
    assert calls == [PROMPTS.texts]


def test_missing_base_model_is_one_line(tmp_path):
    with pytest.raises(MissingWeights, match=r"model_index\.json not found in .*nowhere.*hf download") as e:
        lookup("model", "sd3").load(tmp_path / "nowhere")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("name", ["sd3", "sd15"])
def test_bf16_with_gradient_checkpointing_trains_lora_in_fp32(dirs, name):
    """precision bf16: frozen weights in bf16 under autocast, LoRA weights kept in fp32 and trained;
    gradient checkpointing on. The loss is finite and close to the fp32 loss on the same draw."""
    losses = {}
    for precision in ("fp32", "bf16"):
        base, model = lookup("model", name).pair(dirs[name], resolution=16, lora=LORA, precision=precision,
                                                 gradient_checkpointing=True)
        torch.manual_seed(0)
        o = eam_loss(model, base, OnDecoded(load_reward("pickscore", dirs["pickscore"]), model.decode), 2.0,
                     torch.randn(2, *model.sample_shape), LinearReference(model.interpolant),
                     EAMConfig(ode_steps=2, n_times=2), PROMPTS, generator=torch.Generator().manual_seed(0))
        o.loss.backward()
        losses[precision] = o.loss.item()
        assert model.denoiser.training and model.denoiser.is_gradient_checkpointing
        lora = [p for n, p in model.named_parameters() if "lora_" in n]
        assert all(p.dtype == torch.float32 and p.grad is not None for p in lora)
        if precision == "bf16":
            assert next(p for n, p in model.denoiser.named_parameters() if "lora_" not in n).dtype == torch.bfloat16
    assert torch.isfinite(torch.tensor(losses["bf16"]))
    assert abs(losses["bf16"] - losses["fp32"]) < 0.1 * abs(losses["fp32"])


@pytest.mark.parametrize("name", ["sd3", "sd15"])
def test_gradient_checkpointing_and_channels_last_keep_the_loss_and_gradient(dirs, name):
    """With LoRA the base is the model with its adapter off: a checkpointed recompute during AM's
    base VJPs must not see the adapter back on. Same AM/EAM losses and LoRA gradients with
    gradient checkpointing or channels-last as without (the LoRA B matrices are perturbed so
    model and base differ)."""
    reward = load_reward("pickscore", dirs["pickscore"])
    results = {}
    for variant in ({}, {"gradient_checkpointing": True}, {"channels_last": True}):
        torch.manual_seed(1)  # the LoRA A matrices are drawn when the adapter is added
        base, model = lookup("model", name).pair(dirs[name], resolution=16, lora=LORA, **variant)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.05)
        x0 = torch.randn(2, *model.sample_shape, generator=torch.Generator().manual_seed(0))
        for method in ("am", "eam"):
            model.zero_grad()
            rew = OnDecoded(reward, model.decode)
            if method == "am":
                o = am_loss(model, base, rew, 2.0, x0, AMConfig(n_steps=4, n_last=2, n_random=1), PROMPTS,
                            generator=torch.Generator().manual_seed(0))
            else:
                o = eam_loss(model, base, rew, 2.0, x0, LinearReference(model.interpolant),
                             EAMConfig(ode_steps=2, n_times=2), PROMPTS, generator=torch.Generator().manual_seed(0))
            o.backward()
            grad = torch.cat([p.grad.flatten() for n, p in model.named_parameters() if "lora_" in n])
            results.setdefault(method, []).append((o.loss.item(), grad))
    for method, runs in results.items():
        loss0, grad0 = runs[0]
        assert grad0.abs().sum() > 0
        for loss, grad in runs[1:]:
            assert abs(loss - loss0) <= 1e-4 * abs(loss0), method
            torch.testing.assert_close(grad, grad0, rtol=1e-3, atol=1e-5 * grad0.abs().max().item())


@pytest.mark.parametrize("steps,guidance", [(4, 1.0), (4, 4.5), (28, 1.0), (28, 4.5)])
def test_sd3_sampler_is_the_pipeline(dirs, steps, guidance):
    """Our K-step Euler ODE on SD3's default (scheduler) grid equals StableDiffusion3Pipeline with
    K inference steps, from the same initial latents and prompts, to 1e-5."""
    from diffusers import StableDiffusion3Pipeline

    from eam.samplers import ode_sample

    model = load(dirs, "sd3", guidance_scale=guidance)
    pipe = StableDiffusion3Pipeline.from_pretrained(dirs["sd3"])
    x0 = torch.randn(len(PROMPTS), *model.sample_shape, generator=torch.Generator().manual_seed(steps))
    with torch.no_grad():
        ours = ode_sample(model, x0, steps, "euler", PROMPTS)
        ref = pipe(PROMPTS.texts, num_inference_steps=steps, guidance_scale=guidance, latents=x0.clone(),
                   height=16, width=16, output_type="latent", max_sequence_length=model.options.max_sequence_length).images
    assert (ours - ref).abs().max().item() < 1e-5 * max(1.0, ref.abs().max().item())


@pytest.mark.parametrize("guidance", [1.0, 4.5])
@pytest.mark.parametrize("steps", [4, 50])
def test_sd15_sampler_is_the_pipeline_with_ddim(dirs, steps, guidance):
    """Our K-step `ddim` ODE on SD1.5's default (scheduler) grid equals StableDiffusionPipeline with
    DDIMScheduler (η = 0, trailing spacing) and K inference steps, from the same latents, to 1e-5;
    Euler steps on the same grid do not."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from eam.samplers import ode_sample

    model = load(dirs, "sd15", guidance_scale=guidance)
    pipe = StableDiffusionPipeline.from_pretrained(dirs["sd15"], safety_checker=None, feature_extractor=None,
                                                   requires_safety_checker=False)
    # clip_sample: false as in SD1.5's scheduler_config.json (our sampler does not clip x̂_0)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing", clip_sample=False)
    x0 = torch.randn(len(PROMPTS), *model.sample_shape, generator=torch.Generator().manual_seed(steps))
    with torch.no_grad():
        ours = ode_sample(model, x0, steps, "ddim", PROMPTS)
        ref = pipe(PROMPTS.texts, num_inference_steps=steps, guidance_scale=guidance, latents=x0.clone(), eta=0.0,
                   height=16, width=16, output_type="latent").images
        euler = ode_sample(model, x0, steps, "euler", PROMPTS)
    scale = max(1.0, ref.abs().max().item())
    assert (ours - ref).abs().max().item() < 1e-5 * scale
    assert (euler - ref).abs().max().item() > 1e-3 * scale
    if steps == 4:  # trailing: τ = 999, 749, 499, 249, then ᾱ_0
        torch.testing.assert_close(model.sampling_grid(4).double(),
                                   1 - torch.tensor([999, 749, 499, 249, 0], dtype=torch.float64) / 999)


def test_sd3_uniform_grid_is_an_option_and_differs(dirs):
    """`time_grid: uniform` restores t_k = k/K; the default grid is the scheduler's shifted one."""
    shifted, uniform = load(dirs, "sd3").sampling_grid(4), load(dirs, "sd3", time_grid="uniform").sampling_grid(4)
    assert torch.allclose(uniform, torch.linspace(0, 1, 5))
    # FlowMatchEulerDiscreteScheduler(shift=3): K σ's linspace(1, σ_min) mapped by σ → 3σ / (1 + 2σ), then 0,
    # with σ_min the shifted σ of its last training step (1/1000)
    shift = lambda s: 3 * s / (1 + 2 * s)  # noqa: E731
    sigma = torch.cat([shift(torch.linspace(1, shift(torch.tensor(1e-3, dtype=torch.float64)), 4, dtype=torch.float64)),
                       torch.zeros(1, dtype=torch.float64)])
    assert torch.allclose(shifted.double(), 1 - sigma, atol=1e-6)
    with pytest.raises(ValueError, match="time_grid"):
        load(dirs, "sd3", time_grid="karras")


def test_sd15_official_betas_are_an_option(dirs):
    """`betas: [0.002, 0.009]` (the official AM code's SD1.5 schedule) replaces the checkpoint's DDPM betas
    in the interpolant and the scheduler; SD3 has no betas and refuses it in one line."""
    default, official = load(dirs, "sd15"), load(dirs, "sd15", betas=[0.002, 0.009])
    abar = torch.cumprod(1 - torch.linspace(0.002**0.5, 0.009**0.5, 1000, dtype=torch.float64) ** 2, 0)
    torch.testing.assert_close(official.interpolant.alphas_cumprod, abar)
    assert official.pipe.scheduler.config.beta_start == 0.002 and default.pipe.scheduler.config.beta_start == 0.00085
    assert not torch.allclose(default.interpolant.alphas_cumprod, abar)
    with pytest.raises(ValueError, match="DDPM schedulers"):
        load(dirs, "sd3", betas=[0.002, 0.009])
    with pytest.raises(ValueError, match="beta_start, beta_end"):
        load(dirs, "sd15", betas=[0.009, 0.002])
