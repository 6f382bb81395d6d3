"""The report of `eam bench`, from its bench.json only: bench.md (per-iteration cost against the cost-model floor,
time by phase, knobs) and bench.png."""
from __future__ import annotations

import json
from pathlib import Path

from ..io import save_figure, write_text


def bench_report(path, out) -> dict:
    """bench.md and bench.png under `out` from the results file `path` (bench.json)."""
    r = json.loads(Path(path).read_text())
    write_text(Path(out) / "bench.md", bench_table(r))
    _bar_chart(r, Path(out) / "bench.png")
    return r


def bench_table(r: dict) -> str:
    mem = next(iter(r["methods"].values()))["memory_kind"]
    lines = [f"# eam bench: {r['model']} × {r['reward']}, batch {r['batch']}, shape {r['shape']}, {r['precision']}, "
             f"CFG {r['guidance_scale']:g}, on {r['device']}",
             "", f"{r['repeats']} measured iterations after {r['warmup']} warm-up.", "",
             f"| method | s / iter (median) | min – max | floor s / iter | measured / floor | NFE / iter | {mem} MB |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for m, v in r["methods"].items():
        w = v["wall_clock_s"]
        kinds = ", ".join(f"{k} {n}" for k, n in v["nfe_per_iter"].items() if n)
        lines.append(f"| {m.upper()} | {w['median']:.4g} | {w['min']:.4g} – {w['max']:.4g} | {v['floor_s']:.4g} | "
                     f"{v['measured_over_floor']:.2f} | {v['nfe_per_iter_total']} ({kinds}) | {v['peak_memory_mb']:.0f} |")
    ratio = r["am_over_eam"]
    lines += ["", f"AM / EAM per iteration: measured {ratio['measured']:.2f}×, floor {ratio['floor']:.2f}×, "
              f"NFEs {ratio['nfe']:.2f}×.", "",
              "Unit costs (s per NFE, i.e. per sample and per denoiser row of CFG): "
              + ", ".join(f"{k} {v:.3g}" for k, v in r["unit_cost_s_per_nfe"].items())]
    lines += ["", "## Where the time goes (one more iteration, timed by phase; floor = the phase's NFEs × unit costs)", "",
              "| method | phase | measured s | floor s | measured / floor |", "| --- | --- | --- | --- | --- |"]
    for m, v in r["methods"].items():
        for p, s in v["phase_s"].items():
            fl = v["floor_phase_s"].get(p, 0.0)
            if s or fl:
                lines.append(f"| {m.upper()} | {p} | {s:.4g} | {fl:.4g} | {s / fl if fl else float('nan'):.2f} |")
    if r["knobs"]:
        lines += ["", "## Knobs (each alone on top of the baseline settings; time relative to the baseline)", "",
                  f"| knob | settings | AM s / iter | EAM s / iter | AM / EAM | AM {mem} MB | EAM {mem} MB |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for k in r["knobs"]:
            ms = k["methods"]

            def cell(m, ms=ms):
                return (f"{ms[m]['wall_clock_s']['median']:.4g} ({ms[m]['time_vs_baseline']:.2f}×)" if m in ms else "–")

            ratio = (f"{ms['am']['wall_clock_s']['median'] / ms['eam']['wall_clock_s']['median']:.2f}"
                     if {"am", "eam"} <= set(ms) else "–")
            mems = [f"{ms[m]['peak_memory_mb']:.0f}" if m in ms else "–" for m in ("am", "eam")]
            sets = ", ".join(f"{a}={b}" for a, b in k["settings"].items())
            lines.append(f"| {k['name']} | {sets} | {cell('am')} | {cell('eam')} | {ratio} | {mems[0]} | {mems[1]} |")
    return "\n".join(lines) + "\n"


def _bar_chart(r: dict, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 3 if r["knobs"] else 2
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4.2), constrained_layout=True)
    names = [m.upper() for m in r["methods"]]
    med = [v["wall_clock_s"]["median"] for v in r["methods"].values()]
    err = [[m - v["wall_clock_s"]["min"] for m, v in zip(med, r["methods"].values())],
           [v["wall_clock_s"]["max"] - m for m, v in zip(med, r["methods"].values())]]
    xs = range(len(names))
    axes[0].bar([x - 0.2 for x in xs], med, 0.4, yerr=err, label="measured (median, min–max)")
    axes[0].bar([x + 0.2 for x in xs], [v["floor_s"] for v in r["methods"].values()], 0.4, label="cost-model floor (NFEs × unit costs)")
    axes[0].set(xticks=list(xs), xticklabels=names, ylabel="seconds per iteration",
                title=f"AM/EAM {r['am_over_eam']['measured']:.2f}× (floor {r['am_over_eam']['floor']:.2f}×)")
    axes[0].legend(fontsize=8)
    bottom = [0.0] * len(names)
    for kind in ("model_fwd", "base_fwd", "base_vjp", "reward_vjp", "model_train"):
        vals = [v["nfe_per_iter"].get(kind, 0) for v in r["methods"].values()]
        axes[1].bar(names, vals, bottom=bottom, label=kind)
        bottom = [b + v for b, v in zip(bottom, vals)]
    axes[1].set(ylabel="NFEs per iteration (sample-evaluations)", title="function evaluations by kind")
    axes[1].legend(fontsize=8)
    if r["knobs"]:
        ax, labels = axes[2], [k["name"] for k in r["knobs"]]
        for j, (m, color) in enumerate((("am", "tab:blue"), ("eam", "tab:orange"))):
            vals = [k["methods"][m]["time_vs_baseline"] if m in k["methods"] else 0.0 for k in r["knobs"]]
            ax.barh([i + (j - 0.5) * 0.4 for i in range(len(labels))], vals, 0.4, color=color, label=m.upper())
        ax.axvline(1.0, color="k", lw=0.8)
        ax.set(yticks=list(range(len(labels))), yticklabels=labels, xlabel="time per iteration / baseline",
               title="knobs (< 1: faster)")
        ax.invert_yaxis()
        ax.legend(fontsize=8)
    fig.suptitle(f"{r['model']} × {r['reward']}, batch {r['batch']}, {r['precision']}, {r['device']}")
    save_figure(fig, path, dpi=120)
