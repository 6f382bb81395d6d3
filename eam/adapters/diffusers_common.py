"""What the diffusers adapters share: loading a pipeline offline (local folder or Hugging Face
cache), prompt embeddings computed once per prompt, classifier-free guidance, precision,
gradient checkpointing, LoRA through peft with the base as the same network with the adapter
disabled, VAE decoding for the rewards, and saving / loading fine-tuned weights.

Subclasses say which pipeline class and denoiser they wrap (`pipeline_name`, `denoiser_name`), how
the scheduler maps to an interpolant (`make_interpolant`), how prompts are embedded (`encode`) and
how a denoiser output becomes the velocity v(x, t) of our time convention (`predict`).
"""
from __future__ import annotations

import copy
import json
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..checkpoint import MissingWeights
from ..config import from_mapping
from ..io import atomic_path, write_json
from ..models import VelocityModel

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
FINETUNED_WEIGHTS = "model.safetensors"


@dataclass
class LoRA:
    """peft LoRA on the denoiser: rank, alpha (scale alpha/rank) and the module names it wraps."""

    rank: int = 16
    alpha: float = 16.0
    target_modules: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])

    def __post_init__(self):
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"LoRA rank must be a positive integer, got {self.rank!r}")
        if not self.target_modules:
            raise ValueError("LoRA target_modules must name at least one module")


@dataclass
class DiffusersOptions:
    """Model settings of a diffusers adapter (the `model:` section of a config)."""

    guidance_scale: float = 1.0            # CFG v = v_∅ + g (v_c - v_∅); 1: conditional model alone
    resolution: int = 512                  # image side in pixels; latents are resolution / vae_scale_factor
    precision: str = "fp32"                # frozen weights and autocast: fp32 | bf16 | fp16
    gradient_checkpointing: bool = False
    lora: LoRA | None = None               # None: full fine-tuning of the denoiser
    negative_prompt: str = ""              # the unconditional prompt of CFG
    max_sequence_length: int = 256         # T5 tokens (SD3)
    drop_t5: bool = False                  # SD3 without its T5 encoder (zeros in its place)
    compile: bool = False                  # torch.compile the denoiser(s) for training (`pair`)
    channels_last: bool = False            # NHWC memory format for the denoiser, VAE and latents
    time_grid: str | None = None           # ODE sampling times: "scheduler" (the pipeline's own: SD3's shifted
                                           # σ's, SD1.5's DDIM trailing timesteps) or "uniform"; None: scheduler
    betas: tuple[float, float] | None = None  # DDPM beta_start, beta_end replacing the checkpoint's (SD1.5;
                                              # the official AM code uses 0.002, 0.009); None: the checkpoint's

    @classmethod
    def from_dict(cls, d: dict | None) -> "DiffusersOptions":
        opts = from_mapping(cls, d, "model")
        if opts.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {opts.precision!r}; expected one of {', '.join(PRECISIONS)}")
        if opts.time_grid not in (None, "scheduler", "uniform"):
            raise ValueError(f"unknown model time_grid {opts.time_grid!r}; expected 'scheduler' or 'uniform'")
        if opts.betas is not None:
            b = opts.betas
            if (not isinstance(b, (list, tuple)) or len(b) != 2 or not all(isinstance(v, (int, float)) for v in b)
                    or not 0 < b[0] < b[1] < 1):
                raise ValueError(f"model betas must be [beta_start, beta_end] with 0 < start < end < 1, got {b!r}")
            opts.betas = (float(b[0]), float(b[1]))
        if not opts.guidance_scale > 0 or opts.resolution < 8:
            raise ValueError("model guidance_scale must be positive and resolution at least 8")
        return opts


def resolve_pretrained(path_or_repo, what: str) -> Path:
    """A local pipeline folder, or the Hugging Face cache snapshot of a repo id (never downloads)."""
    p = Path(str(path_or_repo)).expanduser()
    if (p / "model_index.json").exists():
        return p
    if not p.exists() and str(path_or_repo).count("/") == 1:
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(str(path_or_repo), local_files_only=True))
        except Exception:  # noqa: BLE001  (several exception kinds mean "not in the cache")
            pass
    raise MissingWeights(f"{what}: model_index.json not found in {path_or_repo} (neither a pipeline folder nor a "
                         f"cached Hugging Face repo); download it with `hf download REPO_ID` and pass the "
                         f"repo id, or pass the folder written by `pipeline.save_pretrained`")


class DiffusersVelocity(VelocityModel):
    """v(x, t, cond) of a diffusers pipeline's denoiser on latents x, conditioned on `cond.texts`."""

    denoiser_name = ""

    def __init__(self, pipe, options: DiffusersOptions, source: str):
        if options.betas is not None:  # the official AM code fine-tunes SD1.5 on betas 0.002, 0.009
            if "beta_start" not in pipe.scheduler.config:
                raise ValueError(f"model betas apply to DDPM schedulers (SD1.5); {type(pipe.scheduler).__name__} "
                                 "has none: remove the setting")
            pipe.scheduler = type(pipe.scheduler).from_config(
                pipe.scheduler.config, beta_start=options.betas[0], beta_end=options.betas[1])
        super().__init__(self.make_interpolant(pipe.scheduler))
        self.options, self.source = options, str(source)
        self.dtype = PRECISIONS[options.precision]
        self.pipe = pipe  # not a Module: its components are registered below
        self.denoiser = getattr(pipe, self.denoiser_name)
        self.frozen = torch.nn.ModuleList([m for m in pipe.components.values()
                                           if isinstance(m, torch.nn.Module) and m is not self.denoiser])
        self.frozen.requires_grad_(False).eval()
        self.denoiser.requires_grad_(False)
        if options.lora is not None:
            from peft import LoraConfig

            self.denoiser.add_adapter(LoraConfig(r=options.lora.rank, lora_alpha=options.lora.alpha,
                                                 target_modules=list(options.lora.target_modules),
                                                 init_lora_weights=True))  # B = 0: the model starts as the base
            for n, p in self.denoiser.named_parameters():
                if "lora_" in n:
                    p.data = p.data.float()
        else:  # full fine-tuning: fp32 master weights (the frozen base copy stays in `precision`)
            self.denoiser.float().requires_grad_(True)
        if options.gradient_checkpointing:
            self.denoiser.enable_gradient_checkpointing()
        if options.channels_last:
            self.denoiser.to(memory_format=torch.channels_last)
            pipe.vae.to(memory_format=torch.channels_last)
        f = pipe.vae_scale_factor
        if options.resolution % f:
            raise ValueError(f"resolution {options.resolution} is not a multiple of the VAE's factor {f}")
        self.sample_shape = (self.denoiser.config.in_channels, options.resolution // f, options.resolution // f)
        self.guidance_scale = float(options.guidance_scale)
        self.config = {"model": self.registered_name, "base": self.source, "options": _jsonable(asdict(options))}
        self._cache: OrderedDict[str, tuple] = OrderedDict()

    # -- subclass hooks --------------------------------------------------------------------------
    pipeline_name: str  # the diffusers pipeline class, e.g. "StableDiffusion3Pipeline"

    @classmethod
    def pipeline_class(cls):
        """The diffusers pipeline class (imported on use: diffusers is slow to import)."""
        import diffusers

        return getattr(diffusers, cls.pipeline_name)

    @staticmethod
    def make_interpolant(scheduler):
        raise NotImplementedError

    def encode(self, texts: list[str]) -> tuple[torch.Tensor, ...]:
        """Per-prompt embeddings (tensors with the batch first) from the frozen text encoders."""
        raise NotImplementedError

    def predict(self, denoiser, x, t, emb) -> torch.Tensor:
        """The velocity in our convention from one denoiser call on x at times t [B]."""
        raise NotImplementedError

    # -- the model interface ---------------------------------------------------------------------
    def embed(self, texts: list[str]) -> tuple[torch.Tensor, ...]:
        """Embeddings of a batch of prompts, each prompt encoded once and kept (LRU, 4096 prompts)."""
        todo = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if todo:
            with torch.no_grad(), self.autocast():
                parts = self.encode(todo)
            for i, t in enumerate(todo):
                self._cache[t] = tuple(p[i] for p in parts)
        for t in texts:
            self._cache.move_to_end(t)
        while len(self._cache) > 4096:
            self._cache.popitem(last=False)
        rows = [self._cache[t] for t in texts]
        return tuple(torch.stack(col) for col in zip(*rows))

    def autocast(self):
        dev = next(self.denoiser.parameters()).device.type
        return torch.autocast(dev, dtype=self.dtype, enabled=self.dtype != torch.float32)

    def velocity(self, x, t, cond=None):
        return self.guided_velocity(self.denoiser, x, t, cond)

    def guided_velocity(self, denoiser, x, t, cond):
        texts = getattr(cond, "texts", None)
        if texts is None or len(texts) != x.shape[0]:
            raise ValueError(f"{self.registered_name} is text-conditional: pass a PromptBatch with one prompt per sample")
        with self.autocast():
            return self.guided(lambda x_, t_, e: self.predict(denoiser, x_, t_, e).to(x.dtype), x, t,
                               self.embed(list(texts)), lambda: self.embed([self.options.negative_prompt] * len(texts)),
                               lambda c, u: tuple(torch.cat([a, b]) for a, b in zip(c, u)))

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Latents → RGB images in [0, 1] through the VAE (differentiable, for the reward's VJP)."""
        vae = self.pipe.vae
        z = x / vae.config.scaling_factor + (getattr(vae.config, "shift_factor", None) or 0.0)
        with self.autocast():
            img = vae.decode(self.latents(z, vae.dtype)).sample
        return (img.to(x.dtype) / 2 + 0.5).clamp(0, 1)

    def frozen_base(self) -> "FrozenBase":
        """The base model: with LoRA the same network with the adapter disabled (no second copy),
        else a frozen copy of the denoiser; text encoders and VAE are shared either way."""
        if self.options.lora is not None:
            return FrozenBase(self, None)
        return FrozenBase(self, copy.deepcopy(self.denoiser).requires_grad_(False).eval().to(self.dtype))

    @classmethod
    def pair(cls, path, guidance_scale: float = 1.0, **options):
        model = cls.load(path, guidance_scale=guidance_scale, **options).train()
        base = model.frozen_base()
        if model.options.compile:  # after the base copy: each denoiser gets its own compiled forward
            for denoiser in (model.denoiser, base.denoiser):  # base.denoiser is None under LoRA
                if denoiser is not None:
                    denoiser.compile()
        return base, model

    def latents(self, x: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """x in the denoiser's (or the given) dtype and in the configured memory format."""
        x = x.to(dtype or self.dtype)
        return x.contiguous(memory_format=torch.channels_last) if self.options.channels_last else x

    # -- files -----------------------------------------------------------------------------------
    @classmethod
    def load(cls, path, guidance_scale: float | None = None, **options) -> "DiffusersVelocity":
        """A base pipeline (folder or cached repo id) or a fine-tuned output folder of ours
        (config.json naming its base + the trained weights)."""
        cfg_file = Path(str(path), "config.json")
        trained = None
        if cfg_file.exists() and not Path(str(path), "model_index.json").exists():
            saved = json.loads(cfg_file.read_text())
            if saved.get("model") != cls.registered_name:
                raise ValueError(f"{path} holds a {saved.get('model')!r} model, not {cls.registered_name!r}")
            options = {**saved["options"], **options}
            trained, path = Path(str(path), FINETUNED_WEIGHTS), saved["base"]
        if guidance_scale is not None:
            options["guidance_scale"] = guidance_scale
        opts = DiffusersOptions.from_dict(options)
        root = resolve_pretrained(path, f"{cls.registered_name} base model")
        extra = {"text_encoder_3": None, "tokenizer_3": None} if opts.drop_t5 else {}
        pipe = cls.pipeline_class().from_pretrained(root, local_files_only=True, dtype=PRECISIONS[opts.precision],
                                                    **cls.pipeline_kwargs(), **extra)
        model = cls(pipe, opts, path)
        if trained is not None:
            model.load_trainable_state(load_file(trained))
        return model

    @classmethod
    def pipeline_kwargs(cls) -> dict:
        return {}

    def save(self, directory):
        """config.json (base, options) + the trained weights only (LoRA or the full denoiser)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().float().contiguous() for k, v in self.trainable_state().items()}
        with atomic_path(directory / FINETUNED_WEIGHTS) as tmp:
            save_file(state, tmp)
        write_json(directory / "config.json", _jsonable(self.config))

    def trainable_state(self) -> dict:
        return {k: p.detach().clone() for k, p in self.denoiser.named_parameters() if p.requires_grad}

    def load_trainable_state(self, state: dict):
        own = {k: p for k, p in self.denoiser.named_parameters() if p.requires_grad}
        if set(own) != set(state):
            odd = sorted(set(own) ^ set(state))[0]
            raise ValueError(f"fine-tuned weights do not match the {self.registered_name} model's trainable parameters ({odd}, ...)")
        with torch.no_grad():
            for k, v in state.items():
                own[k].copy_(v)


class FrozenBase(VelocityModel):
    """The base velocity of a `DiffusersVelocity`: its own frozen denoiser copy, or (LoRA) the
    model's denoiser with the adapter disabled for the call."""

    def __init__(self, model: DiffusersVelocity, denoiser):
        super().__init__(model.interpolant)
        self._model = (model,)  # a tuple: not registered, so the model's weights are not duplicated here
        self.denoiser = denoiser
        self.sample_shape = model.sample_shape

    @property
    def cost(self) -> int:
        return self._model[0].cost

    def sampling_grid(self, steps: int, device=None, dtype=None) -> torch.Tensor:
        return self._model[0].sampling_grid(steps, device, dtype)

    def velocity(self, x, t, cond=None):
        model = self._model[0]
        if self.denoiser is not None:
            return model.guided_velocity(self.denoiser, x, t, cond)
        # With gradient checkpointing, a VJP through this call would recompute the forward after the
        # adapter is back on; the base's own (one-step) VJP graph is kept whole instead.
        recompute = torch.is_grad_enabled() and model.denoiser.is_gradient_checkpointing
        try:
            model.denoiser.disable_adapters()
            if recompute:
                model.denoiser.disable_gradient_checkpointing()
            return model.guided_velocity(model.denoiser, x, t, cond)
        finally:
            model.denoiser.enable_adapters()
            if recompute:
                model.denoiser.enable_gradient_checkpointing()


def _jsonable(d):
    return json.loads(json.dumps(d, default=lambda o: asdict(o) if hasattr(o, "__dataclass_fields__") else str(o)))
