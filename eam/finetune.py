"""The training loop shared by AM and EAM on any registered model adapter and reward.

Plain and linear, nanoGPT-style: build base (frozen) and model (trainable copy), then per iteration
draw prompts and noise, compute the method's loss, step. It logs one JSONL row per iteration
(training reward, loss, wall-clock, cumulative function evaluations by kind), evaluates the training
reward on a fixed evaluation batch every `eval_every` iterations, and checkpoints (weights,
optimiser, schedule, RNG, step, log position) every `ckpt_every` iterations so that a killed job
resumes where it stopped; SIGTERM/SIGUSR1 (a SLURM preemption) checkpoint at the end of the
iteration and stop. Outputs land only when training is complete.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import signal
import threading
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from .checkpoint import load_training_state, rng_state, save_training_state, set_rng_state, weights_stamp
from .config import check_positive, from_mapping
from .distributed import Group, check_device
from .eval.samples import eval_batch
from .io import write_json, write_text
from .loop import Trainer
from .loop import run as run_loop
from .losses import AMConfig, EAMConfig
from .methods import METHODS, make_method
from .prompts import PromptBatch, load_prompt_set
from .registry import lookup
from .rewards import load_reward
from .rewards.image import OnDecoded
from .samplers import ode_sample
from .train import Anchor, Ledger


@dataclass
class FinetuneConfig:
    method: str = "eam"
    lam: float = 10.0                 # reward multiplier λ
    iters: int = 300
    budget_nfe: int | None = None     # equal compute: iterations = budget_nfe // (the method's NFEs per sample and
                                      # iteration), replacing `iters`, so AM and EAM spend the same NFEs per sample
    batch: int = 32                   # prompts (and x_1 samples) per iteration, over all processes
    shards: int = 1                   # the batch's shards, each with its own random stream; processes
                                      # share them out, so results do not depend on the process count
    lr: float = 3e-4
    lr_final: float = 0.1             # cosine decay to lr × lr_final
    grad_clip: float | None = 1.0
    guidance_scale: float = 1.0       # CFG scale of base and model, in sampling and in the adjoint/base terms
    eval_every: int = 25
    eval_every_nfe: int | None = None  # evaluate every this many NFEs per sample instead (replacing eval_every), so
                                       # that every method's curve has the same points per unit of compute
    eval_per_prompt: int = 8          # fixed evaluation batch: this many seeds per evaluation prompt
    eval_steps: int = 20              # Heun steps of the evaluation sampler
    ckpt_every: int = 50
    seed: int = 0
    device: str = "auto"              # "auto": the GPU where there is one, else the CPU
    model: dict = field(default_factory=dict)  # adapter settings (diffusers: lora, precision, resolution, ...)
    am: AMConfig = field(default_factory=AMConfig)
    eam: EAMConfig = field(default_factory=EAMConfig)

    @classmethod
    def from_dict(cls, d: dict) -> "FinetuneConfig":
        """Build from a mapping (a YAML section); an unknown or mistyped key is a one-line error."""
        cfg = from_mapping(cls, d, "fine-tuning")
        cfg.validate()
        return cfg

    def validate(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; expected one of {', '.join(METHODS)}")
        check_positive(self, "fine-tuning", ints=("iters", "batch", "shards", "eval_every", "eval_per_prompt", "eval_steps",
                                                  "ckpt_every", "budget_nfe", "eval_every_nfe"),
                       numbers=("lr", "lr_final", "guidance_scale", "grad_clip"),
                       optional=("budget_nfe", "eval_every_nfe", "grad_clip"))
        if self.batch % self.shards:
            raise ValueError(f"fine-tuning batch {self.batch} must be a multiple of shards {self.shards}")
        lam = self.lam  # λ = 0: the no-reward control, which must not drift
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not math.isfinite(lam) or lam < 0:
            raise ValueError(f"fine-tuning setting lam must be a non-negative number, got {lam!r}")
        self.am.__post_init__()
        self.eam.__post_init__()

    def nfe_per_sample(self, cost: int = 1) -> int:
        """The method's function evaluations per sample and iteration."""
        return (self.am if self.method == "am" else self.eam).nfe_per_sample(cost)

    def with_budget(self, cost: int = 1) -> "FinetuneConfig":
        """A copy whose `iters` spends `budget_nfe` NFEs per sample (at least one iteration) and whose `eval_every`
        is `eval_every_nfe` in iterations, where those are set."""
        per_iter = self.nfe_per_sample(cost)
        out = self
        if self.budget_nfe is not None:
            out = replace(out, iters=max(1, int(self.budget_nfe) // per_iter))
        if self.eval_every_nfe is not None:
            out = replace(out, eval_every=max(1, round(int(self.eval_every_nfe) / per_iter)))
        return out


def build_models(model_name, model_path, reward_name, reward_path, cfg: "FinetuneConfig", device):
    """Base (frozen) and model from the adapter, and the reward, on latents where the model decodes."""
    base, model = lookup("model", model_name).pair(model_path, guidance_scale=cfg.guidance_scale, **cfg.model)
    reward = load_reward(reward_name, reward_path)
    if hasattr(model, "decode"):
        reward = OnDecoded(reward, model.decode)
    correction = None
    if cfg.method == "eam" and cfg.eam.base_score == "corrected":
        if not cfg.eam.correction:
            raise ValueError("eam.base_score corrected needs eam.correction: the folder of a λ = 0 run with "
                             "eam.base_score endpoint and eam.sampler base (docs/method.md §5.5)")
        correction = lookup("model", model_name).load(cfg.eam.correction, guidance_scale=cfg.guidance_scale, **cfg.model)
        correction = correction.requires_grad_(False).eval().to(device)
    return base.to(device), model.to(device), reward.to(device), correction


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return check_device(torch.device(name))



def run_identity(cfg: FinetuneConfig, model_name: str, model_path, reward_name: str) -> dict:
    """What a checkpoint must have been written with to be resumed: settings, model, reward, base weights
    (and, for `corrected`, the correction network's weights)."""
    identity = {"config": json.dumps(asdict(cfg), sort_keys=True), "model": model_name, "reward": reward_name,
                "base_weights_mtime": weights_stamp(model_path)}
    if cfg.method == "eam" and cfg.eam.base_score == "corrected":
        identity["correction_weights_mtime"] = weights_stamp(cfg.eam.correction)
    if cfg.method == "eam" and cfg.eam.n_anchor and cfg.eam.anchor:
        identity["anchor_mtime"] = Path(cfg.eam.anchor).stat().st_mtime if Path(cfg.eam.anchor).is_file() else 0.0
    return identity


class Preempted(Exception):
    """Training stopped on SIGTERM/SIGUSR1 after writing a checkpoint; re-running resumes it."""

    def __init__(self, signum: int, step: int, checkpoint: Path):
        super().__init__(f"stopped by {signal.Signals(signum).name} at iteration {step}; checkpoint {checkpoint} "
                         "written, run the same command again to resume")
        self.signum = signum


class StopSignals:
    """Within the block, SIGTERM and SIGUSR1 (SLURM's preemption and time-limit warnings) only set
    `signum`; the loop checkpoints and stops at the end of the iteration."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __enter__(self):
        self.signum, self._old = None, {}
        if threading.current_thread() is threading.main_thread():
            self._old = {s: signal.signal(s, self._note) for s in self.SIGNALS}
        return self

    def _note(self, signum, frame):
        self.signum = signum

    def __exit__(self, *exc):
        for s, handler in self._old.items():
            signal.signal(s, handler)


CKPT_KEEP = 2  # newest checkpoints kept in OUT.work/, so a corrupt newest one still leaves one


def _checkpoint_path(work: Path, step: int) -> Path:
    return work / f"ckpt-{step:08d}.pt"


def _resumable_state(work: Path, identity: dict, log_lines: int):
    """The newest readable checkpoint written with these settings and within the log; unreadable
    or foreign ones are skipped with a warning."""
    for path in sorted(work.glob("ckpt-*.pt"), reverse=True):
        state = load_training_state(path)
        if state is None:
            print(f"warning: checkpoint {path} is unreadable (truncated or corrupt); trying an older one")
        elif state.get("identity") != identity or log_lines < state.get("log_lines", 0):
            print(f"warning: checkpoint {path} was written with other settings, another base model or a longer "
                  "log; trying an older one")
        else:
            return path, state
    return None, None


def finetune(cfg: FinetuneConfig, model_name: str, model_path, reward_name: str, reward_path, train_prompts,
             eval_prompts, out, progress: bool = True, resume: str = "auto", label: str | None = None,
             anchor_only: bool = False) -> dict:
    """Fine-tune and write `out/` (model weights + config.json, metrics.jsonl). With resume="auto"
    it continues from the newest valid checkpoint in `out.work/`; "never" starts over. `label` names the
    run's method in reports (e.g. eam-endpoint for an ablation; default: the method). `anchor_only`: write
    the run's anchor (§5.6) to the file `out` instead of training, for runs to share through eam.anchor."""
    cfg.validate()
    if anchor_only and not (cfg.method == "eam" and cfg.eam.base_score == "corrected" and cfg.eam.n_anchor):
        raise ValueError("--anchor-only writes the anchor of eam.base_score corrected (docs/method.md §5.6); "
                         "use --method eam-corrected with eam.anchor_batches at least 1")
    if resume not in ("auto", "never"):
        raise ValueError(f"unknown resume mode {resume!r}; expected auto or never")
    group = Group()
    try:
        return _finetune(cfg, model_name, model_path, reward_name, reward_path, train_prompts, eval_prompts, out,
                         progress, resume, group, label or cfg.method, anchor_only)
    finally:
        group.close()


ANCHOR_STREAM = 10**9  # the anchor's batches: their own streams, whatever the run's seed, so a shared file and a
                       # fit inside the run are the same anchor and leave the training's streams as they were


def _shard_generator(cfg: FinetuneConfig, it: int, shard: int) -> torch.Generator:
    """The random stream of one shard of one iteration, whichever process computes it."""
    return torch.Generator().manual_seed((cfg.seed * 1_000_003 + it) * 1009 + shard)


def anchor_identity(cfg: FinetuneConfig, model_name: str, model_path, train: list) -> dict:
    """What an anchor file must have been computed with to serve a run: the loss's settings (not λ, the seed or
    the schedule), its batches (size, shards, count, training prompts), the model and the base and correction
    weights."""
    eam = {k: v for k, v in asdict(cfg.eam).items() if k not in ("anchor", "correction")}
    eam["anchor_batches"] = cfg.eam.n_anchor
    prompts = hashlib.sha256(json.dumps(train, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return {"model": model_name, "model_settings": cfg.model, "guidance_scale": cfg.guidance_scale, "eam": eam,
            "batch": [cfg.batch, cfg.shards], "training_prompts": prompts,
            "base_weights_mtime": weights_stamp(model_path), "correction_weights_mtime": weights_stamp(cfg.eam.correction)}


def _load_anchor(cfg: FinetuneConfig, model_name: str, model_path, train: list, params: list, device) -> Anchor:
    anchor, meta = Anchor.load(cfg.eam.anchor)
    want = json.loads(json.dumps(anchor_identity(cfg, model_name, model_path, train)))  # as the file's JSON reads
    got = meta.get("identity", {})
    for key in want:
        if got.get(key) != want[key]:
            raise ValueError(f"the anchor file {cfg.eam.anchor} was written for another {key.replace('_', ' ')} "
                             f"({got.get(key)!r}, this run: {want[key]!r}); write it again with --anchor-only")
    if [tuple(g.shape) for g in anchor.grads] != [tuple(p.shape) for p in params]:
        raise ValueError(f"the anchor file {cfg.eam.anchor} does not match this model's trainable tensors; "
                         "write it again with --anchor-only")
    return Anchor([g.to(device) for g in anchor.grads])


def _finetune(cfg, model_name, model_path, reward_name, reward_path, train_prompts, eval_prompts, out, progress,
              resume, group: Group, label: str, anchor_only: bool = False) -> dict:
    if cfg.shards % group.world:
        raise ValueError(f"fine-tuning shards {cfg.shards} must be a multiple of the number of processes {group.world}")
    out, work = Path(out), Path(str(out) + ".work")
    train, evals = load_prompt_set(train_prompts), load_prompt_set(eval_prompts)
    device = group.device(cfg.device)
    base, model, reward, correction = build_models(model_name, model_path, reward_name, reward_path, cfg, device)
    if not anchor_only:
        work.mkdir(parents=True, exist_ok=True)  # only once prompts, device and weights are known good
    cfg = cfg.with_budget(model.cost)
    shape = tuple(model.sample_shape)
    trainer = Trainer(model, model.trainable_parameters(), cfg.lr, cfg.lr_final, cfg.iters, cfg.grad_clip)
    method = make_method(cfg.method, cfg.am, cfg.eam, base, reward, correction, gather=group.gathered)
    ledger, step = Ledger(), 0
    log_path = work / "metrics.jsonl"
    my_shards, shard_size = range(group.rank, cfg.shards, group.world), cfg.batch // cfg.shards

    torch.manual_seed(cfg.seed)  # the same on every process: they draw the same global batch
    identity = run_identity(cfg, model_name, model_path, reward_name)
    lines = log_path.read_text().splitlines() if log_path.exists() else []
    state_path, state = _resumable_state(work, identity, len(lines)) \
        if resume == "auto" and not anchor_only else (None, None)
    group.barrier()  # every process has read the checkpoint before rank 0 changes the folder
    if state is not None:
        model.load_trainable_state(state["model"])
        trainer.load_state_dict(state)
        set_rng_state(state["rng"])
        ledger.nfe, ledger.seconds, step = state["nfe"], state["seconds"], state["step"]
        method.load_state(state["clipper"])
        if group.main:
            write_text(log_path, "".join(line + "\n" for line in lines[: state["log_lines"]]))  # later rows go
            print(f"resuming {out} at iteration {step} from {state_path.name}")
    elif group.main and not anchor_only:
        for old in work.glob("ckpt-*.pt"):
            old.unlink()
        write_text(log_path, "")

    x_eval, c_eval = eval_batch(evals, cfg.eval_per_prompt, shape)
    x_eval = x_eval.to(device)

    def evaluate() -> float:
        with torch.no_grad():
            x1 = ode_sample(model, x_eval, cfg.eval_steps, "heun", c_eval)
            return float(reward(x1, c_eval).mean())

    def checkpoint(it: int) -> Path:
        log.flush()
        path = _checkpoint_path(work, it)
        anchor = trainer.anchor
        save_training_state(
            path, identity=identity, step=it, model=model.trainable_state(), **trainer.state_dict(), rng=rng_state(),
            nfe=dict(ledger.nfe), seconds=ledger.seconds, clipper=method.state(),
            anchor=[g.cpu() for g in anchor.grads] if anchor and not cfg.eam.anchor else None,  # a file's: reread
            log_lines=sum(1 for _ in open(log_path)))
        for old in sorted(work.glob("ckpt-*.pt"), reverse=True)[CKPT_KEEP:]:
            old.unlink()
        return path

    def gradients(it: int, lam: float, draws: torch.Generator | None = None) -> dict:
        """The loss at `lam` on the global batch of iteration `it` (prompts and x_0 from `draws`, default the global
        stream): this process's shards backpropagated, gradients summed over processes. Returns the mean loss and
        training reward and the NFEs by kind, summed over processes."""
        recs = [train[i] for i in torch.randint(len(train), (cfg.batch,), generator=draws).tolist()]
        x0 = torch.randn(cfg.batch, *shape, generator=draws)
        loss_sum, reward_sum, nfe = torch.zeros(2, dtype=torch.float64), torch.zeros(1, dtype=torch.float64), {}
        for s in my_shards:
            part = slice(s * shard_size, (s + 1) * shard_size)
            g = _shard_generator(cfg, it, s) if draws is None else torch.Generator().manual_seed(it * 1009 + s)
            cond, xs = PromptBatch.from_records(recs[part]).to(device), x0[part].to(device)
            o = method.loss(model, lam, xs, cond, generator=g)
            o.backward(1 / cfg.shards)
            loss_sum += torch.tensor([o.loss.item(), float(not torch.isfinite(o.loss))], dtype=torch.float64)
            reward_sum += o.reward.double().sum().cpu()
            nfe = {k: nfe.get(k, 0) + v for k, v in o.nfe.items()}
        kinds = sorted(nfe or ledger.nfe)
        totals = torch.cat([loss_sum, reward_sum, torch.tensor([nfe.get(k, 0) for k in kinds], dtype=torch.float64)])
        totals = group.summed(totals, device)
        group.sum_grads(model.trainable_parameters())
        if totals[1] > 0:
            raise FloatingPointError(f"non-finite {cfg.method} loss at iteration {it}; lower lr or λ")
        return {"loss": float(totals[0]) / cfg.shards, "reward": float(totals[2]) / cfg.batch,
                "nfe": {k: int(round(float(v))) for k, v in zip(kinds, totals[3:])}}

    # corrected: the λ = 0 gradient at the base (§5.6), from a shared file (its cost is the file's), or fitted
    # here before the first step (its cost in this run's ledger) and checkpointed
    if cfg.method == "eam" and cfg.eam.n_anchor and cfg.eam.anchor and not anchor_only:
        trainer.anchor = _load_anchor(cfg, model_name, model_path, train, trainer.params, device)
    elif cfg.method == "eam" and cfg.eam.n_anchor:
        if state is not None:
            trainer.anchor = Anchor([g.to(device) for g in state["anchor"]])
        else:
            with ledger:
                trainer.fit_anchor(lambda i: ledger.add(gradients(
                    ANCHOR_STREAM + i, 0.0, torch.Generator().manual_seed(ANCHOR_STREAM + i))["nfe"]), cfg.eam.n_anchor)
            if group.main and not progress:
                print(f"{label} seed {cfg.seed}: anchor from {cfg.eam.n_anchor} batches at the base, "
                      f"{ledger.seconds:.0f} s", flush=True)
    if anchor_only:
        summary = {"anchor_batches": cfg.eam.n_anchor, "wall_clock_s": ledger.seconds, "nfe": dict(ledger.nfe),
                   "processes": group.world}
        if group.main:
            trainer.anchor.save(out, {"identity": anchor_identity(cfg, model_name, model_path, train), **summary})
        group.barrier()
        return {**summary, "iters": 0}

    with open(log_path if group.main else os.devnull, "a") as log, StopSignals() as stop:
        if step == 0:
            row = {"iter": 0, "wall_clock_s": ledger.seconds, "nfe_total": ledger.total(),  # the anchor's cost, if any
                   **{f"nfe_{k}": v for k, v in ledger.nfe.items()},
                   "eval_reward": evaluate() if group.main else None}
            log.write(json.dumps(row) + "\n")
        def after(it: int, stats: dict):
            """The iteration's log row (with the evaluation every eval_every), checkpoint and stop signals."""
            row = {"iter": it, "loss": stats["loss"], "reward": stats["reward"], "wall_clock_s": ledger.seconds,
                   "nfe_total": ledger.total(), **{f"nfe_{k}": v for k, v in ledger.nfe.items()}}
            if group.main and (it % cfg.eval_every == 0 or it == cfg.iters):
                row["eval_reward"] = evaluate()
                if not progress:  # a line per evaluation, so that a rule's log shows where the run is
                    print(f"{label} λ={cfg.lam:g} seed {cfg.seed}: iteration {it}/{cfg.iters}, loss {stats['loss']:.4g}, "
                          f"eval reward {row['eval_reward']:.4f}, {ledger.seconds:.0f} s", flush=True)
            log.write(json.dumps(row) + "\n")
            flag = group.summed(torch.tensor([float(stop.signum or 0)]), device)  # all stop at the same iteration
            signum = stop.signum or (int(signal.SIGTERM) if flag.item() else None)
            if it % cfg.ckpt_every == 0 or it == cfg.iters or signum:
                path = checkpoint(it) if group.main else _checkpoint_path(work, it)
                group.barrier()
                if signum and it < cfg.iters:
                    raise Preempted(signum, it, path)

        run_loop(trainer, ledger, lambda it: gradients(it, cfg.lam), cfg.iters, start=step, after=after,
                 desc=f"{cfg.method} {reward_name} λ={cfg.lam:g}", progress=progress and group.main)

    if group.main:
        model.config = {**model.config, "finetune": {**asdict(cfg), "reward": reward_name, "base": str(model_path),
                                                     "processes": group.world, "label": label}}
        model.save(out)
        shutil.copyfile(log_path, work / "metrics.done.jsonl")
        (work / "metrics.done.jsonl").replace(out / "metrics.jsonl")
    summary = {"iters": cfg.iters, "wall_clock_s": ledger.seconds, "nfe": dict(ledger.nfe), "processes": group.world}
    if group.main:
        write_json(out / "summary.json", summary)
        shutil.rmtree(work)
    group.barrier()
    return summary
