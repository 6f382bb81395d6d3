"""Figures and tables of a fine-tuning benchmark (method × reward × λ × seed): convergence curves
against wall-clock and function evaluations, the reward/distance-to-base trade-off across λ, sample
grids, every metric ± standard error in CSV, Markdown and LaTeX, and the AM/EAM time to quality
(wall-clock and NFEs to 90% of AM's final reward gain) as CSV, Markdown and a figure."""
from __future__ import annotations

import csv
import io
import json
import math
import textwrap
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import EngFormatter  # noqa: E402

from ..io import save_figure, write_text  # noqa: E402

COLORS = {"am": "tab:blue", "eam": "tab:orange", "eam-endpoint": "tab:green", "eam-residual": "tab:red",
          "eam-bridge": "tab:purple"}


def _color(method: str) -> str:
    return COLORS.get(method, "tab:gray")


def _methods(runs) -> list[str]:
    """Method labels present: AM, EAM, then ablations (e.g. eam-endpoint)."""
    order = list(COLORS)
    return sorted({r["method"] for r in runs}, key=lambda m: (order.index(m) if m in order else len(order), m))


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read {path} ({e}); re-run the rule that writes it") from None


def load_run(run_dir, score_path) -> dict:
    run_dir = Path(run_dir)
    ft = _read_json(run_dir / "config.json").get("finetune")
    if ft is None:
        raise ValueError(f"{run_dir} is not a fine-tuning run (config.json has no 'finetune'); re-run `eam finetune`")
    curve = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {"method": ft.get("label") or ft["method"], "reward": ft["reward"], "lam": ft["lam"], "seed": ft["seed"],
            "curve": [r for r in curve if "eval_reward" in r], "log": curve, "scores": _read_json(score_path)}


def time_to(curve: list[dict], level: float, key: str) -> float:
    """First `key` (wall-clock or NFEs) at which the eval reward reaches `level`, linear between
    evaluations; inf if never."""
    prev = None
    for p in curve:
        if p["eval_reward"] >= level:
            if prev is None:
                return float(p[key])
            f = (level - prev["eval_reward"]) / (p["eval_reward"] - prev["eval_reward"])
            return float(prev[key] + f * (p[key] - prev[key]))
        prev = p
    return math.inf


def time_to_threshold(runs: list[dict], fraction: float = 0.9, truth: dict | None = None) -> list[dict]:
    """Per (reward, λ, seed): wall-clock and NFEs each method needs to close `fraction` of the gap
    between the base and the tilted law, r0 + fraction · (E_p*[r] - r0), with r0 the curves' own starting
    value (the base on the evaluation batch; every run uses the same noise) and E_p*[r] from the pool of
    `truth[(reward, λ)]` (absolute: near p* the batch's mean has little spread, while the base's is wide);
    without a tilted-law estimate, `fraction` of AM's final gain over r0; and the AM/EAM ratios."""
    pairs = defaultdict(dict)
    for r in runs:
        pairs[(r["reward"], r["lam"], r["seed"])][r["method"]] = r
    rows = []
    for (reward, lam, seed), m in sorted(pairs.items()):
        if not {"am", "eam"} <= set(m) or lam == 0:  # λ = 0: the control has no gap to close
            continue
        am = m["am"]["curve"]
        t = (truth or {}).get((reward, lam))
        r0 = am[0]["eval_reward"]
        gain = (t["metrics"][reward]["mean"] if t is not None else am[-1]["eval_reward"]) - r0
        level = r0 + fraction * gain
        row = {"reward": reward, "lam": lam, "seed": seed, "threshold": level,
               "target": "tilted law" if t is not None else "AM's final value"}
        for method in ("am", "eam"):
            for key, name in (("wall_clock_s", "s"), ("nfe_total", "nfe")):
                row[f"{method}_{name}"] = time_to(m[method]["curve"], level, key)
        for name, key in (("s", "wall_clock_s"), ("nfe", "nfe_total")):  # where both reached it after some training
            am_t, eam_t = row[f"am_{name}"], row[f"eam_{name}"]
            ok = gain > 0 and math.isfinite(am_t) and math.isfinite(eam_t) and eam_t > 0
            row[f"ratio_{name}"] = am_t / eam_t if ok else math.nan
            # AM never got there: its whole run over EAM's time is a lower bound of the ratio (censored)
            censored = gain > 0 and math.isinf(am_t) and math.isfinite(eam_t) and eam_t > 0
            row[f"ratio_{name}_above"] = float(m["am"]["curve"][-1][key]) / eam_t if censored else math.nan
        rows.append(row)
    return rows


def ratio_summary(vals: list[float]) -> str:
    """mean ± SE and the 95% t-interval over seeds of a list of ratios."""
    from scipy import stats

    n, mean = len(vals), float(np.mean(vals))
    if n < 2:
        return f"{mean:.2f} (1 pair: no interval)"
    se = float(np.std(vals, ddof=1) / math.sqrt(n))
    h = float(stats.t.ppf(0.975, n - 1)) * se
    return f"{mean:.2f} ± {se:.2f}, 95% CI [{mean - h:.2f}, {mean + h:.2f}] over {n} pairs"


def time_to_quality_table(rows: list[dict], fraction: float = 0.9) -> str:
    """Markdown: per (reward, λ, seed) the wall-clock and NFEs each method needs to reach the
    threshold, the AM/EAM ratios, and their mean ± SE over the pairs where both reached it."""
    target = rows[0]["target"] if rows else "tilted law"
    what = "the gap between the base and the tilted law" if target == "tilted law" else "AM's final evaluation-reward gain"
    lines = [f"# Time to quality: {fraction:.0%} of {what}", "",
             "| reward | λ | seed | threshold | AM s | EAM s | AM/EAM (time) | AM NFEs | EAM NFEs | AM/EAM (NFEs) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]

    def num(v, fmt):  # inf: never reached; nan (ratios): undefined, e.g. AM gained nothing
        return format(v, fmt) if math.isfinite(v) else "not reached" if math.isinf(v) else "n/a"

    for r in rows:
        def ratio(name):
            above = r.get(f"ratio_{name}_above", math.nan)
            return f"> {above:.2f} (AM not reached)" if math.isfinite(above) else num(r[f"ratio_{name}"], ".2f")

        lines.append(f"| {r['reward']} | {r['lam']:g} | {r['seed']} | {r['threshold']:.4g} | {num(r['am_s'], '.1f')} | "
                     f"{num(r['eam_s'], '.1f')} | {ratio('s')} | {num(r['am_nfe'], '.3g')} | "
                     f"{num(r['eam_nfe'], '.3g')} | {ratio('nfe')} |")
    for (reward, lam), group in sorted(_by_setting(rows).items()):
        for key, name in (("ratio_s", "wall-clock"), ("ratio_nfe", "NFEs")):
            vals = [r[key] for r in group if math.isfinite(r[key])]
            if vals:
                lines.append(f"\n{reward}, λ = {lam:g}: AM/EAM in {name}: {ratio_summary(vals)} (of {len(group)}).")
    lines.append("\nThe threshold is reached where the evaluation reward of the training-time evaluation batch (logged "
                 "every `eval_every` iterations, linear in between) first crosses it; 'not reached' within the run's "
                 "budget; 'n/a': a ratio without two finite times.")
    return "\n".join(lines) + "\n"


def _by_setting(rows: list[dict]) -> dict:
    groups = defaultdict(list)
    for r in rows:
        groups[(r["reward"], r["lam"])].append(r)
    return groups


def _time_to_quality_figure(rows: list[dict], path: Path):
    """Per (reward, λ): AM and EAM bars per seed, in wall-clock and in NFEs, the ratio above each pair."""
    groups = defaultdict(list)
    for r in rows:
        groups[(r["reward"], r["lam"])].append(r)
    keys = sorted(groups) or [("none", 0)]
    fig, axes = plt.subplots(2, len(keys), figsize=(4.5 * len(keys), 6.5), constrained_layout=True, squeeze=False)
    for j, k in enumerate(keys):
        rs = groups.get(k, [])
        for i, (unit, label) in enumerate((("s", "wall-clock [s]"), ("nfe", "NFEs"))):
            ax = axes[i][j]
            xs = np.arange(len(rs))
            for d, m in ((-0.2, "am"), (0.2, "eam")):
                vals = [r[f"{m}_{unit}"] for r in rs]
                ax.bar(xs + d, [v if math.isfinite(v) else 0 for v in vals], 0.4, color=_color(m), label=m.upper())
            for x, r in zip(xs, rs):
                ratio = r[f"ratio_{unit}"]
                top = max((v for v in (r[f"am_{unit}"], r[f"eam_{unit}"]) if math.isfinite(v)), default=0)
                ax.annotate(f"{ratio:.1f}×" if math.isfinite(ratio) else "not reached", (x, top), ha="center",
                            va="bottom", fontsize=8)
            ax.set(xticks=xs, xticklabels=[f"seed {r['seed']}" for r in rs], ylabel=f"{label} to threshold",
                   title=f"{k[0]}, λ = {k[1]:g}" if i == 0 else None)
            ax.margins(y=0.15)
            ax.legend(fontsize=8)
    target = rows[0]["target"] if rows else "tilted law"
    fig.suptitle("time to 90% of the gap between the base and the tilted law (label: AM/EAM)" if target == "tilted law"
                 else "time to 90% of AM's final reward gain (label: AM/EAM)")
    save_figure(fig, path)


def _curves(runs, key, xlabel, path, truth=None):
    """Evaluation reward against wall-clock or NFEs per (reward, λ); the tilted law's value E_p*[r] as a
    horizontal line and the time-to-quality level (90% of the base → p* gap) dotted."""
    groups = defaultdict(list)
    for r in runs:
        groups[(r["reward"], r["lam"])].append(r)
    keys = sorted(groups)
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 4), constrained_layout=True, squeeze=False)
    for ax, k in zip(axes[0], keys):
        for method in _methods(runs):
            rs = [r for r in groups[k] if r["method"] == method]
            if not rs:
                continue
            n = min(len(r["curve"]) for r in rs)
            xs = np.array([[p[key] for p in r["curve"][:n]] for r in rs])
            ys = np.array([[p["eval_reward"] for p in r["curve"][:n]] for r in rs])
            x = xs.mean(0)
            ax.plot(x, ys.mean(0), color=_color(method), marker="o", ms=3, label=f"{method.upper()} " + (f"(mean of {len(rs)} seeds)" if len(rs) > 1 else "(1 seed)"))
            ax.fill_between(x, ys.min(0), ys.max(0), color=_color(method), alpha=0.2, lw=0)
        t = (truth or {}).get(k) if k[1] > 0 else None  # λ = 0: p* is the base itself
        if t is not None:
            star, start = t["metrics"][k[0]]["mean"], np.mean([r["curve"][0]["eval_reward"] for r in groups[k]])
            ax.axhline(star, color="k", ls="--", lw=1, label="tilted law p* (SNIS)")
            ax.axhline(start + 0.9 * (star - start), color="k", ls=":", lw=1, label="90% of the base → p* gap")
        ax.set(title=f"reward {k[0]}, λ = {k[1]:g}", xlabel=xlabel,
               ylabel=f"{k[0]}, training-time eval batch")
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))  # 20k, 1.5M: no offset text beside the axis label
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, title="band: min–max over seeds", title_fontsize=7)
    save_figure(fig, path)


def _tradeoff(runs, base, path):
    rewards = sorted({r["reward"] for r in runs})
    fig, axes = plt.subplots(1, len(rewards), figsize=(5.5 * len(rewards), 4.2), constrained_layout=True, squeeze=False)
    for ax, reward in zip(axes[0], rewards):
        ax.errorbar([0.0], [base[reward]["mean"]], yerr=[base[reward]["se"]], fmt="ks", label="base")
        for method in _methods(runs):
            pts = defaultdict(list)
            for r in runs:
                if r["reward"] == reward and r["method"] == method:
                    pts[r["lam"]].append((r["scores"]["fd_to_base"], r["scores"][reward]["mean"]))
            lams = sorted(pts)
            fd = [np.mean([p[0] for p in pts[lam]]) for lam in lams]
            rw = [np.mean([p[1] for p in pts[lam]]) for lam in lams]
            ax.plot(fd, rw, "-o", color=_color(method), label=method.upper())
            for lam, x, y in zip(lams, fd, rw):
                ax.annotate(f"λ={lam:g}", (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7)
        ax.set(title=f"{reward}: reward vs distance to the base (across λ)",
               xlabel="Fréchet distance to base samples (classifier features)", ylabel=f"{reward} (mean over eval samples)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    save_figure(fig, path)


def _row_label(label: str) -> str:
    """A grid row's label as a reader says it: AM_lam10 -> "AM, λ = 10"."""
    method, sep, lam = label.rpartition("_lam")
    return f"{method}, λ = {lam}" if sep and method else label


def _grid(samples: dict, path, per_prompt_shown: int = 4):
    """Rows: base and each shown run; columns: the evaluation prompts, a few seeds each."""
    from ..eval.samples import load_samples

    rows = []
    for label, p in samples.items():
        x, cond, meta = load_samples(p)
        k = int(meta["per_prompt"])
        x = x.view(-1, k, *x.shape[1:])[:, :per_prompt_shown]
        rows.append((label, x, cond.texts[::k]))
    n_prompts = rows[0][1].shape[0]
    fig, axes = plt.subplots(len(rows), n_prompts, figsize=(1.3 * n_prompts, 1.5 * len(rows)), squeeze=False)
    for i, (label, x, texts) in enumerate(rows):
        for j in range(n_prompts):
            tiles = x[j, :, 0].clamp(-1, 1)
            img = np.concatenate([np.concatenate(list(tiles[:2].numpy()), 1), np.concatenate(list(tiles[2:4].numpy()), 1)], 0) \
                if len(tiles) >= 4 else np.concatenate(list(tiles.numpy()), 1)
            ax = axes[i, j]
            ax.imshow(img, cmap="gray_r", vmin=-1, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(textwrap.fill(texts[j], 16), fontsize=6)
            if j == 0:
                ax.set_ylabel(_row_label(label), fontsize=7)
    fig.suptitle("evaluation samples (same seeds in every row)", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    save_figure(fig, path)


def _metric_names(scores: dict) -> list[str]:
    return [k for k, v in scores.items() if isinstance(v, dict) and "mean" in v]


def _seed_mean_se(values: np.ndarray, ses: np.ndarray) -> tuple[float, float]:
    """Mean over seeds. Every run is evaluated on the same fixed noise, so the sampling error is shared by
    the seeds (averaging seeds does not shrink it) while training noise is not:
    SE² = var(seed means) / R + mean(per-run sampling SE²)."""
    var = values.var(ddof=1) / len(values) if len(values) > 1 else 0.0
    return float(values.mean()), math.sqrt(var + (ses**2).mean())


def within_floor(distance: float, se: float, floor: float) -> bool:
    """The acceptance of a distance to p*: at most 1.5 × the floor (two independent p* sets) + its SE."""
    return distance <= 1.5 * floor + se


def _tables(runs, base, truth=None) -> tuple[str, str, str]:
    """Every metric ± SE per (method, reward, λ); with tilted-law estimates, a p* row above each (reward, λ)
    and the energy distance of the runs' samples to a resampled p* set against its floor."""
    metrics = _metric_names(base)
    truth = truth or {}
    groups = defaultdict(list)
    for r in runs:
        groups[(r["reward"], r["lam"], r["method"])].append(r)
    header = ["method", "reward", "λ", "seeds", *metrics, *(["ED to p*", "ED floor"] if truth else []),
              "fd_to_base", "s / iter", "NFE / sample / iter"]
    dist_blank = ["-", "-"] if truth else []
    rows = [["base", "-", "-", "-", *(f"{base[m]['mean']:.3f} ± {base[m]['se']:.3f}" for m in metrics), *dist_blank,
             "0", "-", "-"]]
    shown = set()
    for (reward, lam, method), rs in sorted(groups.items()):
        t = truth.get((reward, lam))
        if t is not None and (reward, lam) not in shown:
            shown.add((reward, lam))
            flag = " †" if t["low_ess"] else ""
            cells = [f"{t['metrics'][m]['mean']:.3f} ± {t['metrics'][m]['se']:.3f}{flag}" if m in t["metrics"] else "-"
                     for m in metrics]
            bd = t["base_distance_to_pstar"]
            rows.append([f"p* (SNIS, ESS/N ≥ {t['ess_min_fraction']:.2f})", reward, f"{lam:g}", "-", *cells,
                         f"base: {bd['mean']:.4f} ± {bd['se']:.4f}", f"{t['distance_floor']['mean']:.4f}", "-", "-", "-"])
        cells = []
        for m in metrics:
            mean, se = _seed_mean_se(np.array([r["scores"][m]["mean"] for r in rs]),
                                     np.array([r["scores"][m]["se"] for r in rs]))
            cells.append(f"{mean:.3f} ± {se:.3f}")
        dist = []
        if truth:
            if t is not None and all("distance_to_pstar" in r["scores"] for r in rs):
                d, dse = _seed_mean_se(np.array([r["scores"]["distance_to_pstar"]["mean"] for r in rs]),
                                       np.array([r["scores"]["distance_to_pstar"]["se"] for r in rs]))
                floor = t["distance_floor"]["mean"]
                dist = [f"{d:.4f} ± {dse:.4f} {'✓' if within_floor(d, dse, floor) else '✗'}", f"{floor:.4f}"]
            else:
                dist = dist_blank
        fds = np.array([r["scores"]["fd_to_base"] for r in rs])
        fd_se = fds.std(ddof=1) / math.sqrt(len(rs)) if len(rs) > 1 else 0.0
        last = [r["log"][-1] for r in rs]
        s_iter = np.mean([row["wall_clock_s"] / row["iter"] for row in last])
        batch = rs[0]["scores"].get("batch")
        nfe = np.mean([row["nfe_total"] / row["iter"] for row in last])
        rows.append([method, reward, f"{lam:g}", str(len(rs)), *cells, *dist, f"{fds.mean():.3f} ± {fd_se:.3f}",
                     f"{s_iter:.3f}", f"{nfe / batch:.0f}" if batch else f"{nfe:.0f} (per batch)"])
    buf = io.StringIO()
    csv.writer(buf).writerows([header, *rows])
    md = "| " + " | ".join(header) + " |\n|" + "---|" * len(header) + "\n" + \
        "".join("| " + " | ".join(r) + " |\n" for r in rows)
    esc = lambda s: (s.replace("±", r"$\pm$").replace("λ", r"$\lambda$").replace("_", r"\_").replace("✓", r"\checkmark")
                     .replace("✗", r"$\times$").replace("†", r"$^\dagger$").replace("≥", r"$\geq$"))  # noqa: E731
    tex = ("\\begin{tabular}{" + "l" * 4 + "r" * (len(header) - 4) + "}\n\\toprule\n" + " & ".join(map(esc, header))
           + " \\\\\n\\midrule\n" + "".join(" & ".join(map(esc, r)) + " \\\\\n" for r in rows) + "\\bottomrule\n\\end{tabular}\n")
    return buf.getvalue(), md, tex


def load_truth(paths) -> dict:
    """Tilted-law estimates (`eam tilt-truth`'s truth.json) keyed by (reward, λ)."""
    truth = {}
    for p in paths or []:
        t = _read_json(p)
        if "metrics" not in t or "distance_floor" not in t:
            raise ValueError(f"{p} is not a tilted-law estimate; re-run `eam tilt-truth`")
        truth[(t["reward"], t["lam"])] = t
    return truth


def verdict_table(runs: list[dict], truth: dict, tt: list[dict], base_scores: dict) -> str:
    """Markdown: per (training reward, λ), each method against the tilted law: the training reward with the
    fraction of the base → p* gap it closed, the energy distance to p* against its floor, and the AM/EAM time
    to quality with its interval over seeds."""
    groups = defaultdict(list)
    for r in runs:
        groups[(r["reward"], r["lam"], r["method"])].append(r)
    lines = ["| reward | λ | method | seeds | training reward | p* (SNIS) | gap closed | ED to p* | floor | "
             "λ = 0 / p* check | AM/EAM time to quality (wall-clock) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    tq = _by_setting(tt)
    for (reward, lam, method), rs in sorted(groups.items()):
        t = truth.get((reward, lam))
        if t is None:
            continue
        v, vse = _seed_mean_se(np.array([r["scores"][reward]["mean"] for r in rs]),
                               np.array([r["scores"][reward]["se"] for r in rs]))
        star, base = t["metrics"][reward], base_scores[reward]  # the base on the runs' own evaluation noise
        gap = star["mean"] - base["mean"]
        closed = f"{(v - base['mean']) / gap:.0%}" if lam > 0 and abs(gap) > 2 * (star["se"] + base["se"]) else "-"
        d, dse = _seed_mean_se(np.array([r["scores"]["distance_to_pstar"]["mean"] for r in rs]),
                               np.array([r["scores"]["distance_to_pstar"]["se"] for r in rs]))
        floor = t["distance_floor"]["mean"]
        ok = "within 1.5 × floor + SE" if within_floor(d, dse, floor) else "**off p***"
        ratios = [x["ratio_s"] for x in tq.get((reward, lam), []) if math.isfinite(x["ratio_s"])]
        pairs = tq.get((reward, lam), [])
        ttq = "-"
        if lam > 0 and method in ("am", "eam") and pairs:
            reached = sum(math.isfinite(x[f"{method}_s"]) for x in pairs)
            ttq = f"{method.upper()} reached in {reached}/{len(pairs)} seeds" + (
                f"; AM/EAM {ratio_summary(ratios)}" if method == "eam" and ratios else "")
        lines.append(f"| {reward} | {lam:g} | {method.upper()} | {len(rs)} | {v:.4f} ± {vse:.4f} | "
                     f"{star['mean']:.4f} ± {star['se']:.4f}{' †' if t['low_ess'] else ''} | {closed} | "
                     f"{d:.4f} ± {dse:.4f} | {floor:.4f} | {ok} | {ttq} |")
    lines.append("\np*: SNIS over a pool of fresh base samples (independent of the evaluation noise); "
                 "† marks ESS/N < 0.1. Gap closed: (run − base) / (p* − base) on the training reward, run and base on the same "
                 "evaluation noise. ED: energy distance "
                 "in the training classifier's features, between the run's evaluation samples and a p* set "
                 "resampled from the pool (pooled over prompts, ± jackknife SE over prompts); floor: the same distance between two "
                 "p* sets from disjoint halves of the pool.")
    return "\n".join(lines) + "\n"


def finetune_report(run_dirs, score_paths, base_score_path, out, grid: dict | None = None, truth_paths=None) -> list[str]:
    if len(run_dirs) != len(score_paths):
        raise ValueError(f"{len(run_dirs)} runs but {len(score_paths)} score files; pass them in the same order")
    runs = [load_run(d, s) for d, s in zip(run_dirs, score_paths)]
    for r, d in zip(runs, run_dirs):
        r["scores"]["batch"] = _read_json(Path(d) / "config.json")["finetune"]["batch"]
    base = _read_json(base_score_path)
    truth = load_truth(truth_paths)
    missing = sorted({r["reward"] for r in runs} - set(_metric_names(base)))
    if missing:
        raise ValueError(f"training reward(s) {', '.join(missing)} are not scored; add them to the metrics list")
    out = Path(out)
    written = []
    _curves(runs, "wall_clock_s", "training wall-clock [s] (evaluation excluded)", out / "reward_vs_time.png", truth)
    _curves(runs, "nfe_total", "function evaluations [sample-evaluations, all kinds]", out / "reward_vs_nfe.png", truth)
    _tradeoff(runs, base, out / "tradeoff.png")
    written += [str(out / n) for n in ("reward_vs_time.png", "reward_vs_nfe.png", "tradeoff.png")]
    if grid:
        _grid(grid, out / "samples.png")
        written.append(str(out / "samples.png"))
    table_csv, table_md, table_tex = _tables(runs, base, truth)
    tt = time_to_threshold(runs, truth=truth)
    ratios = [r["ratio_s"] for r in tt if math.isfinite(r["ratio_s"])]
    unreached = sum(not math.isfinite(r["eam_s"]) for r in tt)
    target = "the base → tilted-law gap" if truth else "AM's final gain"
    reached = {m: sum(math.isfinite(r[f"{m}_s"]) for r in tt) for m in ("am", "eam")}
    summary = (f"no AM/EAM pair reached the threshold (90% of {target}) in both methods: AM reached it in "
               f"{reached['am']}, EAM in {reached['eam']} of {len(tt)} (reward, λ, seed) pairs") if not ratios else (
        f"AM/EAM time-to-threshold ratio (wall-clock to 90% of {target}): {np.mean(ratios):.2f} ± "
        f"{(np.std(ratios, ddof=1) / math.sqrt(len(ratios)) if len(ratios) > 1 else 0):.2f} (mean ± SE over "
        f"{len(ratios)} (reward, λ, seed) pairs; min {min(ratios):.2f}, max {max(ratios):.2f})")
    if unreached and ratios:
        summary += f"; EAM did not reach the threshold in {unreached} of {len(tt)} pairs"
    buf = io.StringIO()
    if tt:
        w = csv.DictWriter(buf, fieldnames=list(tt[0]))
        w.writeheader()
        w.writerows(tt)
    write_text(out / "time_to_threshold.csv", buf.getvalue())
    write_text(out / "time_to_quality.md", time_to_quality_table(tt))
    _time_to_quality_figure(tt, out / "time_to_quality.png")
    write_text(out / "table.csv", table_csv)
    write_text(out / "table.tex", table_tex)
    pstar_note = ("p* rows: the tilted law by self-normalised importance sampling of a fresh base pool († ESS/N < 0.1); "
                  "ED to p*: energy distance (pooled over prompts, ± jackknife SE) in the training classifier's features to a resampled p* set, "
                  "✓ within 1.5 × its floor (two independent p* sets) + SE; " if truth else "")
    write_text(out / "table.md", table_md + "\nMetrics: mean ± standard error (training seeds, plus the evaluation-sample error the seeds share: every run uses the same evaluation noise); "
               + pstar_note + "fd_to_base: Fréchet distance to base samples in the training classifier's features; "
               f"guidance scale {base.get('guidance_scale')}. {summary}.\n")
    written += [str(out / n) for n in ("table.csv", "table.md", "table.tex", "time_to_threshold.csv",
                                       "time_to_quality.md", "time_to_quality.png")]
    if truth:
        write_text(out / "verdict.md", verdict_table(runs, truth, tt, base))
        written.append(str(out / "verdict.md"))
    return written
