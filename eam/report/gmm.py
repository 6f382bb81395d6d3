"""Figures and tables from `eam gmm` results."""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..io import save_figure, write_text  # noqa: E402


def variant(result: dict) -> str:
    """'am', or 'eam-{base_score}' with δ where it matters."""
    if result["method"] == "am":
        return "am"
    eam = result["config"]["eam"]
    return f"eam-{eam['base_score']}" + (f" (δ={eam['delta']:g})" if eam["base_score"] == "endpoint" else "")


def converged(result: dict, ratio: float = 1.5, slack: float = 0.02) -> dict | None:
    """The first curve point with sliced_w2 ≤ ratio × floor + slack (the benchmark's criterion)."""
    bound = ratio * result["sliced_w2_floor"] + slack
    return next((p for p in result["curve"] if p["sliced_w2"] <= bound), None)


def _plot_case(case: str, results: list[dict], path: Path):
    fig, axes = plt.subplots(2, 2, figsize=(11, 8), constrained_layout=True)
    panels = [("wall_clock_s", "sliced_w2", "training wall-clock [s]", "sliced W2 to exact p*"),
              ("nfe_total", "sliced_w2", "function evaluations (sample-evaluations, all kinds)", "sliced W2 to exact p*"),
              ("wall_clock_s", "reward_mean", "training wall-clock [s]", "mean reward"),
              ("nfe_total", "reward_mean", "function evaluations (sample-evaluations, all kinds)", "mean reward")]
    for ax, (xk, yk, xl, yl) in zip(axes.flat, panels):
        for res in sorted(results, key=variant):
            ax.plot([p[xk] for p in res["curve"]], [p[yk] for p in res["curve"]], marker="o", ms=3,
                    label=f"{variant(res)} seed {res['seed']}")
        ref = results[0]
        if yk == "sliced_w2":
            ax.axhline(ref["sliced_w2_floor"], color="k", ls=":", label="floor (two exact samples)")
            ax.axhline(1.5 * ref["sliced_w2_floor"] + 0.02, color="gray", ls="--", label="converged: 1.5×floor + 0.02")
            ax.set_yscale("log")
        else:
            ax.axhline(ref["reward_mean_exact"], color="k", ls=":", label="exact E_p*[r]")
            ax.axhline(ref["reward_mean_base"], color="gray", ls="-.", label="base E[r]")
        ax.set(xlabel=xl, ylabel=yl)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    axes[1, 0].legend(fontsize=8)
    fig.suptitle(f"{case}: AM vs EAM against the exact tilted target")
    save_figure(fig, path)


def _table(results: list[dict]) -> str:
    head = ("| case | method | batch | sliced W2 (floor) | base sliced W2 | mean reward (exact) | s / iter "
            "| NFE / sample / iter | NFE / iter | iters | s to converge | NFE to converge |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in sorted(results, key=lambda r: (r["case"], variant(r), r["seed"])):
        nfe_iter = sum(r["nfe"].values()) / r["iters"]
        per_sample = nfe_iter / r["batch"]
        c = converged(r)
        to_s, to_nfe = (f"{c['wall_clock_s']:.0f}", f"{c['nfe_total']:.3g}") if c else ("not reached",) * 2
        lines.append(
            f"| {r['case']} | {variant(r)} | {r['batch']} | {r['sliced_w2']:.3f} ({r['sliced_w2_floor']:.3f}) "
            f"| {r['sliced_w2_base']:.3f} | {r['reward_mean']:.3f} ({r['reward_mean_exact']:.3f}) "
            f"| {r['wall_clock_s'] / r['iters']:.3f} | {per_sample:.0f} | {nfe_iter:.3g} | {r['iters']} | {to_s} | {to_nfe} |")
    nfe_kinds = ", ".join(results[0]["nfe"])
    return ("\n".join(lines) + "\n\nNFE: function evaluations of every kind "
            f"({nfe_kinds}) counted once each, unweighted (a VJP or a training forward/backward costs more than a "
            "forward); 'NFE / iter' counts sample-evaluations (batch × per-sample), which compares methods with "
            "different batch sizes. Converged: first evaluation with sliced W2 ≤ 1.5 × floor + 0.02 (evaluations "
            "every `eval_every` iterations, so times are upper bounds). Wall-clock is training only, one thread.\n")


def gmm_report(paths: list[str], out: str) -> list[str]:
    results = []
    for p in paths:
        try:
            with open(p) as f:
                res = json.load(f)
            missing = {"case", "method", "seed", "batch", "nfe", "curve", "config"} - set(res)
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"cannot read result {p}: {e}") from None
        if missing:
            raise ValueError(f"{p} is not an `eam gmm` result (missing {', '.join(sorted(missing))}); rerun `eam gmm`")
        results.append(res)
    by_case = defaultdict(list)
    for r in results:
        by_case[r["case"]].append(r)
    out = Path(out)
    written = []
    for case, rs in sorted(by_case.items()):
        _plot_case(case, rs, out / f"{case}.png")
        written.append(str(out / f"{case}.png"))
    write_text(out / "table.md", _table(results))
    written.append(str(out / "table.md"))
    return written
