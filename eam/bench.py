"""`eam bench`: the per-iteration cost of AM and EAM on one model adapter, reward and shape, against
the floor of method.md's cost model, and the measured effect of the speed knobs.

For each method: W warm-up and R measured training iterations on the same batch, each the training loop's own
step (`loop.Trainer.step`: zero grads, the method's loss with AM's clipping where set, backward, gradient clipping
where set, Adam at lr 0, the schedule), recording wall-clock (median, min, max), function evaluations by kind and
peak memory
(allocated accelerator memory on a GPU; on the CPU the growth of the resident set during the measured
iterations). The floor prices each iteration's evaluations at unit costs measured on the same model
and batch: one sampling forward, one base VJP, one reward VJP and one training forward+backward per
sample, so that floor = Σ_kind NFE_kind × unit_cost_kind (AM: N forwards + N base VJPs + 1 reward VJP
+ |K| train rows; EAM: K forwards + 1 reward VJP + 1 base forward + M train rows). measured / floor is
the overhead that is ours; the AM/EAM ratio is reported next to the floor ratio. Unit costs are
measured on a call of batch B, so a loss that evaluates more rows in one call (AM's |K|·B training
rows) can come in slightly under its floor.

Knobs are named sets of setting overrides (`model.precision: bf16`, `eam.times_per_forward: 1`, ...);
each is run like the baseline and reported relative to it. Every (settings, method) pair runs in its
own process, so memory figures start clean. One more iteration per method is timed by phase (the
ranges of `phases.NAMES`: sampling, reward VJP, base VJPs or forwards, training forward+backward)
against that phase's floor; with `profile`, one under torch.profiler lists the top operators.
"""
from __future__ import annotations

import multiprocessing
import statistics
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from .finetune import FinetuneConfig, build_models, resolve_device
from .io import write_json, write_text
from .loop import Trainer
from .methods import Method, make_method
from .config import applied
from .phases import recording
from .prompts import PromptBatch, load_prompt_set
from .report.bench import bench_report
from .rewards import reward_grad

UNIT_OF = {"model_fwd": "forward", "base_fwd": "forward", "base_vjp": "vjp", "reward_vjp": "reward_vjp",
           "model_train": "train"}
PHASE_OF = {"model_fwd": "sample", "base_fwd": "base_fwd", "base_vjp": "base_vjp", "reward_vjp": "reward_vjp",
            "model_train": "train"}  # the loss's profiler range(s) that spend each kind of NFE


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device, repeats: int) -> float:
    """Median seconds of fn() after one untimed call."""
    fn()
    out = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def unit_costs(model, base, reward, x, cond, device, repeats: int = 3) -> dict:
    """Seconds per counted NFE of one sampling forward, one base VJP, one reward VJP and one training
    forward+backward, each measured on the batch x at t = 0.5. The losses count `cost` NFEs per
    sample-evaluation (2 denoiser rows under classifier-free guidance), so a call's time is divided
    by B × cost: NFEs × unit costs is then the floor whatever the guidance."""
    B = x.shape[0]
    t = torch.full((B,), 0.5, device=device)

    def forward():
        with torch.no_grad():
            model(x, t, cond)

    def vjp():
        with torch.enable_grad():
            xi = x.detach().requires_grad_(True)
            torch.autograd.grad(base(xi, t, cond), xi, torch.ones_like(xi))

    def train():
        model.zero_grad(set_to_none=True)
        model(x, t, cond).pow(2).mean().backward()

    costs = {"forward": _timed(forward, device, repeats), "vjp": _timed(vjp, device, repeats),
             "reward_vjp": _timed(lambda: reward_grad(reward, x, cond), device, repeats),
             "train": _timed(train, device, repeats)}
    model.zero_grad(set_to_none=True)
    rows = {"forward": B * model.cost, "vjp": B * base.cost, "reward_vjp": B, "train": B * model.cost}
    return {k: v / rows[k] for k, v in costs.items()}


class PeakMemory:
    """Peak memory over a block, in MiB: allocated accelerator memory on a GPU (weights included);
    on the CPU the growth of the resident set above its level at entry, sampled every 2 ms."""

    def __init__(self, device: torch.device):
        self.device, self.mb = device, 0.0

    @property
    def kind(self) -> str:
        return "peak GPU memory allocated" if self.device.type == "cuda" else "peak RSS growth during the iterations"

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        import psutil

        proc, self._stop = psutil.Process(), threading.Event()
        self._start = self._peak = proc.memory_info().rss

        def sample():
            while not self._stop.wait(0.002):
                self._peak = max(self._peak, proc.memory_info().rss)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self._stop.set()
            self._thread.join()
            self.mb = (self._peak - self._start) / 2**20


def knob_methods(overrides: dict) -> tuple[str, ...]:
    """The methods a knob affects: `am.*`-only knobs run AM, `eam.*`-only knobs EAM, others both."""
    sections = {str(k).split(".")[0] for k in overrides}
    return ("am",) if sections == {"am"} else ("eam",) if sections == {"eam"} else ("am", "eam")


def _iteration(trainer: Trainer, method: Method, cfg, model, x0, cond):
    """One training iteration on the fixed batch: the method's loss and backward, then the optimiser step."""
    def grads():
        o = method.loss(model, cfg.lam, x0, cond)
        o.backward()
        return o

    return trainer.step(grads)


def measure(settings: dict, method: str, names: tuple, prompts, warmup: int, repeats: int, device: str,
            units: bool = False, profile_dir=None) -> dict:
    """One method on freshly built models: W warm-up and R timed iterations (memory over both), one
    more with per-phase wall-clock, and with `profile_dir` one under torch.profiler (top operators)."""
    dev = torch.device(device)
    cfg = FinetuneConfig.from_dict(settings)
    if cfg.eam.base_score == "corrected" and not cfg.eam.correction:
        cfg.eam.correction = names[1]  # the base as correction network: its cost does not depend on its weights
    torch.manual_seed(cfg.seed)
    base, model, reward, correction = build_models(*names, cfg, dev)
    records = load_prompt_set(prompts)
    cond = PromptBatch.from_records([records[i % len(records)] for i in range(cfg.batch)]).to(dev)
    x0 = torch.randn(cfg.batch, *model.sample_shape, generator=torch.Generator().manual_seed(cfg.seed)).to(dev)
    res = {"shape": list(model.sample_shape), "batch": cfg.batch, "precision": cfg.model.get("precision", "fp32"),
           "guidance_scale": cfg.guidance_scale, "device": _device_name(dev)}
    objective = make_method(method, cfg.am, cfg.eam, base, reward, correction)
    # the training loop's step at lr 0: every iteration costs the same
    trainer = Trainer(model, model.trainable_parameters(), 0.0, cfg.lr_final, cfg.iters, cfg.grad_clip)
    times = []
    with PeakMemory(dev) as mem:
        for i in range(warmup + repeats):
            _sync(dev)
            t0 = time.perf_counter()
            o = _iteration(trainer, objective, cfg, model, x0, cond)
            _sync(dev)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    if not torch.isfinite(o.loss):
        raise FloatingPointError(f"non-finite {method} loss in the benchmark; check the model and reward")
    with recording(dev) as seconds:
        _iteration(trainer, objective, cfg, model, x0, cond)
    phases = dict(seconds)
    phases["train"] = phases.pop("train_fwd", 0.0) + phases.pop("train_bwd", 0.0)
    if profile_dir is not None:
        _profile(method, trainer, objective, cfg, model, x0, cond, dev, Path(profile_dir))
    if units:  # after the timed block, so that its memory figure starts as clean as the other method's
        res["unit_cost_s_per_nfe"] = unit_costs(model, base, reward, x0, cond, dev)
    res.update({"wall_clock_s": {"median": statistics.median(times), "min": min(times), "max": max(times)},
                "nfe_per_iter": dict(o.nfe), "nfe_per_iter_total": sum(o.nfe.values()),
                "peak_memory_mb": mem.mb, "memory_kind": mem.kind, "phase_s": phases})
    return res


def _profile(name, trainer, method, cfg, model, x0, cond, dev, out: Path):
    """One iteration under torch.profiler; the top operators by self time to profile_{method}.txt."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with profile(activities=acts) as prof:
        _iteration(trainer, method, cfg, model, x0, cond)
        _sync(dev)
    sort = "self_device_time_total" if dev.type == "cuda" else "self_cpu_time_total"
    write_text(out / f"profile_{name}.txt", prof.key_averages().table(sort_by=sort, row_limit=25) + "\n")


def _in_own_process(*args, **kw) -> dict:
    """`measure` in a fresh process: memory figures start clean and nothing (compiled graphs,
    allocator caches) carries over between methods and knobs."""
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=ctx) as pool:
        return pool.submit(measure, *args, **kw).result()


def bench(settings: dict, model_name: str, model_path, reward_name: str, reward_path, prompts, warmup: int,
          repeats: int, out, device: str = "auto", knobs: dict | None = None, profile: bool = False,
          isolate: bool = True) -> dict:
    """Run the benchmark (baseline settings, then each knob) and write bench.json, bench.md and
    bench.png (and profile_{am,eam}.txt with `profile`) under `out`. Each (settings, method) runs in
    its own process unless `isolate` is off."""
    if warmup < 0 or repeats < 1:
        raise ValueError(f"bench needs warmup >= 0 and repeats >= 1, got {warmup} and {repeats}")
    for name, overrides in (knobs or {}).items():
        if not isinstance(overrides, dict) or not overrides:
            raise ValueError(f"knob {name!r} must map setting names to values, e.g. {{model.precision: bf16}}")
        FinetuneConfig.from_dict(applied(settings, overrides))  # bad knob settings fail before any timing
    FinetuneConfig.from_dict(settings)
    dev = str(resolve_device(device))
    out = Path(out)
    run = _in_own_process if isolate else measure
    names = (model_name, model_path, reward_name, reward_path)
    methods = {m: run(settings, m, names, prompts, warmup, repeats, dev, units=m == "am",
                      profile_dir=out if profile else None) for m in ("am", "eam")}
    am, eam = methods["am"], methods["eam"]
    units = am.pop("unit_cost_s_per_nfe")
    for v in methods.values():
        common = {k: v.pop(k) for k in ("device", "batch", "shape", "precision", "guidance_scale")}
    result = {"model": model_name, "reward": reward_name, **common,
              "settings": settings, "warmup": warmup, "repeats": repeats, "unit_cost_s_per_nfe": units,
              "methods": methods, "knobs": []}
    for v in methods.values():
        v["floor_s"] = sum(n * units[UNIT_OF[k]] for k, n in v["nfe_per_iter"].items())
        v["measured_over_floor"] = v["wall_clock_s"]["median"] / v["floor_s"]
        v["floor_phase_s"] = {}
        for k, n in v["nfe_per_iter"].items():
            v["floor_phase_s"][PHASE_OF[k]] = v["floor_phase_s"].get(PHASE_OF[k], 0.0) + n * units[UNIT_OF[k]]
    result["am_over_eam"] = {"measured": am["wall_clock_s"]["median"] / eam["wall_clock_s"]["median"],
                             "floor": am["floor_s"] / eam["floor_s"],
                             "nfe": am["nfe_per_iter_total"] / eam["nfe_per_iter_total"]}
    for name, overrides in (knobs or {}).items():
        row = {"name": name, "settings": overrides, "methods": {}}
        for m in knob_methods(overrides):
            v = run(applied(settings, overrides), m, names, prompts, warmup, repeats, dev)
            for k in ("device", "batch", "shape", "precision", "guidance_scale"):
                v.pop(k)
            v["time_vs_baseline"] = v["wall_clock_s"]["median"] / methods[m]["wall_clock_s"]["median"]
            row["methods"][m] = v
        result["knobs"].append(row)
    write_json(out / "bench.json", result)
    bench_report(out / "bench.json", out)
    return result


def _device_name(d: torch.device) -> str:
    return torch.cuda.get_device_name(d) if d.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
