"""The `eam` command: one subcommand per pipeline step; errors print one line and exit 2."""
from __future__ import annotations

import argparse
import sys


def _gmm(args):
    from .bench_gmm import default_config, load_case, run
    from .io import write_json

    case = load_case(args.case)
    cfg = default_config(args.method)
    if args.iters is not None:
        if args.iters < 1:
            raise ValueError(f"--iters must be at least 1, got {args.iters}")
        cfg.iters = args.iters
    if args.method == "eam":
        cfg.eam.base_score = args.base_score
        if args.delta is not None:
            if not 0 < args.delta < 1:
                raise ValueError(f"--delta must lie in (0, 1), got {args.delta}")
            cfg.eam.delta = args.delta
    elif args.base_score != "endpoint" or args.delta is not None:
        raise ValueError("--base-score and --delta apply to --method eam only")
    result = run(case, args.method, cfg, seed=args.seed, progress=not args.quiet)
    write_json(args.out, result)
    print(f"{case.name} {args.method}: sliced_w2 {result['sliced_w2']:.3f} (floor {result['sliced_w2_floor']:.3f}, "
          f"base {result['sliced_w2_base']:.3f}), reward {result['reward_mean']:.3f} "
          f"(exact {result['reward_mean_exact']:.3f}) in {result['wall_clock_s']:.0f} s -> {args.out}")


def _gmm_report(args):
    from .report import gmm_report

    for path in gmm_report(args.results, args.out):
        print(path)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="eam", description="Reward fine-tuning by (Efficient) Adjoint Matching.")
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("gmm", help="fine-tune on a Gaussian-mixture case with an exact tilted target")
    g.add_argument("--case", required=True, help="case YAML (dim, components, reward, lambda)")
    g.add_argument("--method", required=True, choices=["am", "eam"])
    g.add_argument("--base-score", default="endpoint", choices=["endpoint", "exact", "bridge"],
                   help="EAM's estimator of ∇log p_base(x_1) (method.md §5)")
    g.add_argument("--delta", type=float, default=None, help="endpoint estimator: t' = 1 - δ (default 0.05)")
    g.add_argument("--iters", type=int, default=None, help="training iterations (default: the method's)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--out", required=True, help="RESULT.json")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g.set_defaults(func=_gmm)

    r = sub.add_parser("gmm-report", help="plots and a table from `eam gmm` results")
    r.add_argument("results", nargs="+", help="RESULT.json files")
    r.add_argument("--out", required=True, help="output folder")
    r.set_defaults(func=_gmm_report)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, KeyError, OSError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"eam {args.command}: error: {msg}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
