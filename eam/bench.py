"""`eam bench`: the per-iteration cost of AM and EAM on one model adapter, reward and shape, against
the floor of method.md's cost model.

For each method: W warm-up and R measured training iterations (loss, backward, optimiser step) on the
same batch, recording wall-clock (median, min, max), function evaluations by kind and peak memory
(accelerator memory on a GPU, the process's peak resident set on the CPU). The floor prices each
iteration's evaluations at unit costs measured on the same model and batch: one sampling forward,
one base VJP, one reward VJP and one training forward+backward per sample, so that
floor = Σ_kind NFE_kind × unit_cost_kind (AM: N forwards + N base VJPs + 1 reward VJP + |K| train rows;
EAM: K forwards + 1 reward VJP + 1 base forward + M train rows). measured / floor is the overhead
that is ours; the AM/EAM ratio is reported next to the floor ratio. Unit costs are measured on a
call of batch B, so a loss that evaluates more rows in one call (AM's |K|·B training rows) can come in
slightly under its floor.
"""
from __future__ import annotations

import resource
import statistics
import time
from pathlib import Path

import torch

from .finetune import FinetuneConfig, _build
from .io import atomic_path, write_json, write_text
from .losses import am_loss, eam_loss
from .prompts import PromptBatch, load_prompt_set
from .reference import LinearReference
from .rewards import reward_grad

UNIT_OF = {"model_fwd": "forward", "base_fwd": "forward", "base_vjp": "vjp", "reward_vjp": "reward_vjp",
           "model_train": "train"}


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
    """Seconds per sample of one sampling forward, one base VJP, one reward VJP and one training
    forward+backward, each measured on the batch x at t = 0.5."""
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
    return {k: v / B for k, v in costs.items()}


def _peak_memory_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def bench(cfg: FinetuneConfig, model_name: str, model_path, reward_name: str, reward_path, prompts, warmup: int,
          repeats: int, out, device: str = "auto") -> dict:
    """Run the benchmark and write bench.json, bench.md and bench.png under `out`."""
    if warmup < 0 or repeats < 1:
        raise ValueError(f"bench needs warmup >= 0 and repeats >= 1, got {warmup} and {repeats}")
    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
    torch.manual_seed(cfg.seed)
    base, model, reward = _build(model_name, model_path, reward_name, reward_path, cfg, dev)
    records = load_prompt_set(prompts)
    cond = PromptBatch.from_records([records[i % len(records)] for i in range(cfg.batch)]).to(dev)
    x0 = torch.randn(cfg.batch, *model.sample_shape, generator=torch.Generator().manual_seed(cfg.seed)).to(dev)
    ref = LinearReference(model.interpolant)
    units = unit_costs(model, base, reward, x0, cond, dev)
    result = {"model": model_name, "reward": reward_name, "device": torch.cuda.get_device_name(dev) if dev.type == "cuda"
              else f"cpu ({torch.get_num_threads()} threads)", "batch": cfg.batch, "shape": list(model.sample_shape),
              "precision": cfg.model.get("precision", "fp32"), "guidance_scale": cfg.guidance_scale,
              "warmup": warmup, "repeats": repeats, "unit_cost_s_per_sample": units, "methods": {}}
    for method in ("am", "eam"):
        opt = torch.optim.Adam(model.trainable_parameters(), lr=0.0)  # lr 0: every iteration costs the same
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        times, nfe = [], None
        for i in range(warmup + repeats):
            _sync(dev)
            t0 = time.perf_counter()
            if method == "am":
                o = am_loss(model, base, reward, cfg.lam, x0, cfg.am, cond)
            else:
                o = eam_loss(model, base, reward, cfg.lam, x0, ref, cfg.eam, cond)
            opt.zero_grad(set_to_none=True)
            o.loss.backward()
            opt.step()
            _sync(dev)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
                nfe = o.nfe
        if not torch.isfinite(o.loss):
            raise FloatingPointError(f"non-finite {method} loss in the benchmark; check the model and reward")
        floor = sum(n * units[UNIT_OF[k]] for k, n in nfe.items())
        median = statistics.median(times)
        result["methods"][method] = {
            "wall_clock_s": {"median": median, "min": min(times), "max": max(times)},
            "nfe_per_iter": dict(nfe), "nfe_per_iter_total": sum(nfe.values()),
            "floor_s": floor, "measured_over_floor": median / floor, "peak_memory_mb": _peak_memory_mb(dev)}
    am, eam = result["methods"]["am"], result["methods"]["eam"]
    result["am_over_eam"] = {"measured": am["wall_clock_s"]["median"] / eam["wall_clock_s"]["median"],
                             "floor": am["floor_s"] / eam["floor_s"],
                             "nfe": am["nfe_per_iter_total"] / eam["nfe_per_iter_total"]}
    out = Path(out)
    write_json(out / "bench.json", result)
    write_text(out / "bench.md", bench_table(result))
    _bar_chart(result, out / "bench.png")
    return result


def bench_table(r: dict) -> str:
    lines = [f"# eam bench: {r['model']} × {r['reward']}, batch {r['batch']}, shape {r['shape']}, {r['precision']}, "
             f"CFG {r['guidance_scale']:g}, on {r['device']}",
             "", f"{r['repeats']} measured iterations after {r['warmup']} warm-up.", "",
             "| method | s / iter (median) | min – max | floor s / iter | measured / floor | NFE / iter | peak memory MB |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for m, v in r["methods"].items():
        w = v["wall_clock_s"]
        kinds = ", ".join(f"{k} {n}" for k, n in v["nfe_per_iter"].items() if n)
        lines.append(f"| {m.upper()} | {w['median']:.4g} | {w['min']:.4g} – {w['max']:.4g} | {v['floor_s']:.4g} | "
                     f"{v['measured_over_floor']:.2f} | {v['nfe_per_iter_total']} ({kinds}) | {v['peak_memory_mb']:.0f} |")
    ratio = r["am_over_eam"]
    lines += ["", f"AM / EAM per iteration: measured {ratio['measured']:.2f}×, floor {ratio['floor']:.2f}×, "
              f"NFEs {ratio['nfe']:.2f}×.", "",
              "Unit costs (s per sample): " + ", ".join(f"{k} {v:.3g}" for k, v in r["unit_cost_s_per_sample"].items()),
              "Peak memory: accelerator memory on a GPU; on the CPU the process's peak resident set so far "
              "(AM runs first, so EAM's figure is at least AM's)."]
    return "\n".join(lines) + "\n"


def _bar_chart(r: dict, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    names = [m.upper() for m in r["methods"]]
    med = [v["wall_clock_s"]["median"] for v in r["methods"].values()]
    err = [[m - v["wall_clock_s"]["min"] for m, v in zip(med, r["methods"].values())],
           [v["wall_clock_s"]["max"] - m for m, v in zip(med, r["methods"].values())]]
    xs = range(len(names))
    axes[0].bar([x - 0.2 for x in xs], med, 0.4, yerr=err, label="measured (median, min–max)")
    axes[0].bar([x + 0.2 for x in xs], [v["floor_s"] for v in r["methods"].values()], 0.4, label="cost-model floor (NFEs × unit costs)")
    axes[0].set(xticks=list(xs), xticklabels=names, ylabel="seconds per iteration",
                title=f"AM/EAM {r['am_over_eam']['measured']:.2f}× (floor {r['am_over_eam']['floor']:.2f}×)")
    axes[0].legend()
    bottom = [0.0] * len(names)
    for kind in ("model_fwd", "base_fwd", "base_vjp", "reward_vjp", "model_train"):
        vals = [v["nfe_per_iter"].get(kind, 0) for v in r["methods"].values()]
        axes[1].bar(names, vals, bottom=bottom, label=kind)
        bottom = [b + v for b, v in zip(bottom, vals)]
    axes[1].set(ylabel="NFEs per iteration (sample-evaluations)", title="function evaluations by kind")
    axes[1].legend(fontsize=8)
    fig.suptitle(f"{r['model']} × {r['reward']}, batch {r['batch']}, {r['device']}")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
