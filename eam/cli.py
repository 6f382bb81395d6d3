"""The `eam` command: one subcommand per pipeline step; errors print one line and exit 2."""
from __future__ import annotations

import argparse
import json
import sys

from . import config


def _gmm(args):
    from dataclasses import asdict

    from .bench_gmm import GMMTrainConfig, default_config, load_case, run
    from .io import write_json

    case = load_case(args.case)
    settings = asdict(default_config(args.method))
    if args.iters is not None:
        if args.iters < 1:
            raise ValueError(f"--iters must be at least 1, got {args.iters}")
        settings["iters"] = args.iters
    if args.method == "eam":
        settings["eam"]["base_score"] = args.base_score
        if args.delta is not None:
            settings["eam"]["delta"] = args.delta
    elif args.base_score != "endpoint" or args.delta is not None:
        raise ValueError("--base-score and --delta apply to --method eam only")
    for spec in args.set or []:
        config.apply(settings, *config.parse(spec))
    cfg = config.from_mapping(GMMTrainConfig, settings, "gmm")
    result = run(case, args.method, cfg, seed=args.seed, progress=not args.quiet)
    write_json(args.out, result)
    print(f"{case.name} {args.method}: sliced_w2 {result['sliced_w2']:.3f} (floor {result['sliced_w2_floor']:.3f}, "
          f"base {result['sliced_w2_base']:.3f}), reward {result['reward_mean']:.3f} "
          f"(exact {result['reward_mean_exact']:.3f}) in {result['wall_clock_s']:.0f} s -> {args.out}")


def _gmm_report(args):
    from .report.gmm import gmm_report

    for path in gmm_report(args.results, args.out):
        print(path)


def _prompts(args):
    from .prompts import prepare

    for path in prepare(args.src, args.out, args.domain, args.eval_per_label, args.eval_fraction, args.seed,
                        eval_src=args.eval_src):
        print(path)


def _pretrain(args):
    import torch

    from .digits import pretrain

    torch.manual_seed(args.seed)
    progress = not args.quiet
    if args.what == "flow":
        model = pretrain.train_flow(args.out, iters=args.iters or 2000, channels=args.channels, seed=args.seed,
                                    progress=progress)
        if args.check_with:
            from .rewards import load_reward

            acc = pretrain.base_accuracy(model, load_reward("digit_classifier", args.check_with))
            model.config["classifier_accuracy"] = acc
            model.save(args.out)
            print(f"base samples read as the prompted digit: {acc:.1%}")
            if acc < args.min_accuracy:
                raise ValueError(f"base model too weak: {acc:.1%} of samples read as the prompted digit "
                                 f"(< {args.min_accuracy:.0%}); train longer with --iters")
    elif args.what == "digit_clip":
        if not args.prompts:
            raise ValueError("digit_clip needs --prompts TRAIN.jsonl (the prepared training prompts)")
        _, acc = pretrain.train_clip(args.out, args.prompts, epochs=args.iters or 80, seed=args.seed, progress=progress)
        print(f"digit_clip zero-shot accuracy on the test split: {acc:.1%}")
    else:
        _, acc = pretrain.train_classifier(args.what, args.out, epochs=args.iters or 60, seed=args.seed,
                                           progress=progress)
        print(f"{args.what} accuracy on the test split: {acc:.1%}")


def _load_yaml(path):
    import yaml

    try:
        with open(path) as f:
            return yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None


def _finetune(args):
    from .finetune import FinetuneConfig, Preempted, finetune

    settings = _load_yaml(args.settings) if args.settings else {}
    if not isinstance(settings, dict):
        raise ValueError(f"{args.settings} must be a mapping of fine-tuning settings")
    method, _, variant = args.method.partition("-")  # eam-endpoint: EAM with that base-score estimator
    settings.update({"method": method, "lam": args.lam, "seed": args.seed})
    if variant and method != "eam":
        raise ValueError(f"--method {args.method}: only eam takes a variant (eam-residual, eam-endpoint, ...)")
    if variant:
        settings["eam"] = {**(settings.get("eam") or {}), "base_score": variant}
    for spec in args.set or []:
        if spec.partition("=")[0] in ("method", "lam", "seed"):
            raise ValueError(f"--set {spec}: use --{spec.partition('=')[0]} for that")
        config.apply(settings, *config.parse(spec))
        if spec.startswith("iters="):
            settings["budget_nfe"] = None  # as --iters: an explicit length replaces an NFE budget
        if spec.startswith("eval_every="):
            settings["eval_every_nfe"] = None  # likewise an explicit evaluation period
    if args.iters is not None:
        if args.iters < 1:
            raise ValueError(f"--iters must be at least 1, got {args.iters}")
        settings.update(iters=args.iters, budget_nfe=None)  # an explicit --iters replaces an NFE budget
    if args.guidance_scale is not None:
        settings["guidance_scale"] = args.guidance_scale
    if args.device is not None:
        settings["device"] = args.device
    cfg = FinetuneConfig.from_dict(settings)
    try:
        s = finetune(cfg, args.model, args.model_path, args.reward, args.reward_path, args.prompts, args.eval_prompts,
                     args.out, progress=not args.quiet, resume=args.resume, label=args.method,
                     anchor_only=args.anchor_only)
    except Preempted as e:
        print(f"eam: {e}", file=sys.stderr)
        raise SystemExit(128 + e.signum) from None
    if args.anchor_only:
        print(f"{args.method} anchor from {s['anchor_batches']} batches at the base in {s['wall_clock_s']:.0f} s "
              f"-> {args.out}")
        return
    print(f"{args.method} {args.reward} λ={args.lam:g} seed {args.seed}: {s['iters']} iterations in "
          f"{s['wall_clock_s']:.0f} s -> {args.out}")


def _bench(args):
    from .bench import bench

    settings = _load_yaml(args.settings) if args.settings else {}
    if not isinstance(settings, dict):
        raise ValueError(f"{args.settings} must be a mapping of fine-tuning settings")
    settings.update({"lam": args.lam, "method": "eam"})
    if args.batch:
        settings["batch"] = args.batch
    if args.guidance_scale is not None:
        settings["guidance_scale"] = args.guidance_scale
    knobs = _load_yaml(args.knobs) if args.knobs else None
    if knobs is not None and not isinstance(knobs, dict):
        raise ValueError(f"{args.knobs} must map knob names to settings, e.g. 'bf16: {{model.precision: bf16}}'")
    r = bench(settings, args.model, args.model_path, args.reward, args.reward_path, args.prompts, args.warmup,
              args.repeats, args.out, args.device, knobs=knobs, profile=args.profile)
    print(f"AM/EAM per iteration: measured {r['am_over_eam']['measured']:.2f}x, floor {r['am_over_eam']['floor']:.2f}x "
          f"-> {args.out}/bench.md")


def _random_weights(args):
    from .architectures import PIPELINES, random_pipeline, random_reward
    from .finetune import resolve_device

    dev = str(resolve_device(args.device))
    if args.arch in PIPELINES:
        random_pipeline(args.arch, args.out, seed=args.seed, with_t5=args.with_t5, device=dev)
    else:
        random_reward(args.arch, args.out, seed=args.seed, device=dev)
    print(args.out)


def _list(args):
    from .registry import catalogue

    cat = catalogue()
    if args.json:
        print(json.dumps(cat, indent=2))
        return
    for kind, entries in cat.items():
        print(f"{kind}s:")
        for name, info in entries.items():
            traits = ", ".join(f"{k} {v}" for k, v in info.items() if k != "class")
            print(f"  {name:20s} {traits:42s} {info['class']}")


def _sample(args):
    from .eval.samples import sample

    settings = _load_yaml(args.settings) if args.settings else {}
    options = settings.get("model") or {} if isinstance(settings, dict) else None
    if not isinstance(options, dict):
        raise ValueError(f"{args.settings}: the model section must be a mapping of model settings")
    if args.stream < 0:
        raise ValueError(f"--stream must be 0 (the evaluation noise) or a positive integer, got {args.stream}")
    sample(args.model, args.model_path, args.prompts, args.per_prompt, args.steps, args.guidance_scale, args.out,
           model_options=options, stream=args.stream)
    print(args.out)


def _named(spec: str) -> tuple[str, str | None]:
    name, _, path = spec.partition("=")
    return name, path or None


def _tilt_truth(args):
    from .eval.truth import tilt_truth

    if not (args.lam >= 0):
        raise ValueError(f"--lam must be a non-negative number, got {args.lam}")
    if args.per_prompt < 2:
        raise ValueError(f"--per-prompt must be at least 2, got {args.per_prompt}")
    res = tilt_truth(args.pool, _named(args.reward), args.lam, dict(map(_named, args.metric)), _named(args.features),
                     args.per_prompt, args.base_samples, args.out, seed=args.seed)
    flag = " (LOW ESS)" if res["low_ess"] else ""
    print(f"λ={args.lam:g}: ESS/N ≥ {res['ess_min_fraction']:.2f}{flag}; " + ", ".join(
        f"E_p*[{k}] {v['mean']:.4f} ± {v['se']:.4f}" for k, v in res["metrics"].items())
          + f"; distance floor {res['distance_floor']['mean']:.4f} -> {args.out}")


def _score(args):
    from .eval.metrics import score

    res = score(args.samples, args.base_samples, dict(map(_named, args.metric)), _named(args.features), args.out,
                pstar_path=args.pstar)
    print(", ".join(f"{k} {v['mean']:.3f}" for k, v in res.items() if isinstance(v, dict) and "mean" in v))


def _finetune_report(args):
    from .report.finetune import finetune_report

    grid = dict(spec.split("=", 1) for spec in args.grid or [])
    for path in finetune_report(args.runs, args.scores, args.base_scores, args.out, grid, truth_paths=args.truth):
        print(path)


def _model_and_reward(parser, weights_note: str = ""):
    """--model, --model-path, --reward, --reward-path: what `finetune` and `bench` train and time."""
    parser.add_argument("--model", required=True, help="registered model adapter, e.g. digits_flow or sd3 (eam list)")
    parser.add_argument("--model-path", required=True,
                        help=f"the base weights: a folder, or a cached hub repo id (offline){weights_note}")
    parser.add_argument("--reward", required=True, help="registered reward, e.g. digit_classifier (eam list)")
    parser.add_argument("--reward-path", default=None, help="the reward's weights folder (default: its HF cache entry)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="eam", description="Reward fine-tuning by (Efficient) Adjoint Matching.")
    sub = p.add_subparsers(dest="command", required=True)

    def command(name, help):
        """A subcommand whose --help starts with its description and shows every flag's default."""
        return sub.add_parser(name, help=help, description=help[0].upper() + help[1:] + ".",
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)

    g = command("gmm", help="fine-tune on a Gaussian-mixture case with an exact tilted target")
    g.add_argument("--case", required=True, help="case YAML (dim, components, reward, lambda)")
    g.add_argument("--method", required=True, choices=["am", "eam"], help="Adjoint Matching or Efficient Adjoint Matching")
    g.add_argument("--base-score", default="endpoint", choices=["endpoint", "residual", "corrected", "exact", "bridge"],
                   help="EAM's base-score term (docs/method.md §5; default endpoint: residual stalls on the mixtures, §5.4)")
    g.add_argument("--delta", type=float, default=None, help="residual, corrected, endpoint: scores at t' = 1 - δ (default 0.05)")
    g.add_argument("--iters", type=int, default=None, help="training iterations (default: the method's)")
    g.add_argument("--seed", type=int, default=0, help="seed of the network, the training noise and the evaluation")
    g.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a training setting of bench_gmm.GMMTrainConfig, e.g. lr=0.01 or eam.ode_steps=32")
    g.add_argument("--out", required=True, help="RESULT.json")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g.set_defaults(func=_gmm)

    r = command("gmm-report", help="plots and a table from `eam gmm` results")
    r.add_argument("results", nargs="+", help="RESULT.json files")
    r.add_argument("--out", required=True, help="output folder")
    r.set_defaults(func=_gmm_report)

    pp = command("prompts", help="parse a prompt file into train/eval prompt sets (JSONL, fixed seeds)")
    pp.add_argument("src", nargs="+", help="prompt files: .txt (one a line), .jsonl ({prompt}), .json (a list) "
                    "or .csv (Prompt/caption column)")
    pp.add_argument("--eval-src", nargs="*", help="prompt files of the eval split (default: a split of SRC)")
    pp.add_argument("--out", required=True, help="folder for train.jsonl and eval.jsonl")
    pp.add_argument("--domain", default="digits", choices=["digits", "text"], help="digits: prompts name a digit")
    pp.add_argument("--eval-per-label", type=int, default=1, help="digits: eval prompts per digit")
    pp.add_argument("--eval-fraction", type=float, default=0.2, help="text: share of the prompts held out for evaluation")
    pp.add_argument("--seed", type=int, default=0, help="seed of the split and of the per-prompt noise seeds")
    pp.set_defaults(func=_prompts)

    pt = command("digits-pretrain", help="train the digits base model or a digits reward model")
    pt.add_argument("what", choices=["flow", "digit_classifier", "heldout_classifier", "digit_clip"],
                    help="the base flow, or one of the reward models")
    pt.add_argument("--out", required=True, help="output folder (config.json + model.safetensors)")
    pt.add_argument("--iters", type=int, default=None, help="flow: iterations; others: epochs")
    pt.add_argument("--channels", type=int, default=32, help="flow: U-Net width")
    pt.add_argument("--prompts", help="digit_clip: prepared training prompts")
    pt.add_argument("--check-with", help="flow: digit_classifier folder to check the base samples with")
    pt.add_argument("--min-accuracy", type=float, default=0.8,
                    help="flow with --check-with: fail if fewer base samples read as their prompted digit")
    pt.add_argument("--seed", type=int, default=0, help="training seed")
    pt.add_argument("--quiet", action="store_true", help="no progress bar")
    pt.set_defaults(func=_pretrain)

    ft = command("finetune", help="fine-tune a registered model on a registered reward with AM or EAM")
    _model_and_reward(ft)
    ft.add_argument("--method", required=True,
                    help="am, eam (the settings' EAM variant) or eam-VARIANT with VARIANT a base-score estimator: "
                         "residual, corrected, endpoint, exact, bridge (docs/method.md §5)")
    ft.add_argument("--lam", type=float, required=True, help="reward multiplier λ (0: the no-reward control)")
    ft.add_argument("--seed", type=int, default=0, help="seed of the training noise and prompt draws")
    ft.add_argument("--iters", type=int, default=None, help="iterations (default: the settings' iters or budget_nfe)")
    ft.add_argument("--guidance-scale", type=float, default=None, help="CFG scale of base and model")
    ft.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: the settings' device, auto)")
    ft.add_argument("--settings", help="YAML of FinetuneConfig settings (lr, batch, model:, am:, eam:, ...)")
    ft.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="override one setting after --settings, dotted for sections (e.g. eam.sampler=base); repeatable")
    ft.add_argument("--prompts", required=True, help="prepared training prompts (train.jsonl)")
    ft.add_argument("--eval-prompts", required=True, help="prepared evaluation prompts (eval.jsonl)")
    ft.add_argument("--out", required=True, help="output folder; resumes from OUT.work/ when present")
    ft.add_argument("--resume", default="auto", choices=["auto", "never"],
                    help="auto: continue from the newest valid checkpoint in OUT.work/ (default); never: start over")
    ft.add_argument("--quiet", action="store_true", help="no progress bar: one line per evaluation instead")
    ft.add_argument("--anchor-only", action="store_true",
                    help="corrected: write the run's anchor (docs/method.md §5.6) to the file --out instead of "
                         "training; runs of the same base and settings then share it through eam.anchor=FILE")
    ft.set_defaults(func=_finetune)

    bp = command("bench", help="per-iteration cost of AM and EAM against the cost-model floor")
    _model_and_reward(bp, "; random weights: `eam random-weights`")
    bp.add_argument("--prompts", required=True, help="prepared prompts (train.jsonl)")
    bp.add_argument("--settings", help="fine-tuning settings YAML (batch, model:, am:, eam:)")
    bp.add_argument("--batch", type=int, default=None, help="samples per iteration (default: the settings')")
    bp.add_argument("--lam", type=float, default=10.0, help="reward multiplier λ (does not change the cost)")
    bp.add_argument("--guidance-scale", type=float, default=None, help="CFG scale (default: the settings')")
    bp.add_argument("--warmup", type=int, default=2, help="untimed iterations first")
    bp.add_argument("--repeats", type=int, default=5, help="timed iterations (the median is reported)")
    bp.add_argument("--device", default="auto", help="cpu, cuda, ... (auto: the GPU where there is one)")
    bp.add_argument("--knobs", help="YAML mapping knob names to setting overrides, e.g. 'bf16: {model.precision: bf16}'")
    bp.add_argument("--profile", action="store_true",
                    help="profile one more iteration per method: time per loss phase vs its floor, top operators")
    bp.add_argument("--out", required=True, help="folder for bench.json, bench.md, bench.png")
    bp.set_defaults(func=_bench)

    rw = command("random-weights", help="save a published architecture with random weights (for eam bench)")
    rw.add_argument("--arch", required=True, choices=["sd3-medium", "sd15", "clipscore", "pickscore"],
                    help="a pipeline (sd3-medium, sd15: diffusers folder) or a reward backbone (CLIP folder)")
    rw.add_argument("--with-t5", action="store_true", help="sd3-medium: include T5-XXL (4.8 B parameters)")
    rw.add_argument("--seed", type=int, default=0, help="initialisation seed")
    rw.add_argument("--device", default="auto", help="where to initialise (a GPU is much faster)")
    rw.add_argument("--out", required=True, help="output folder, in the architecture's own file layout")
    rw.set_defaults(func=_random_weights)

    sp = command("sample", help="samples of fixed seeds per evaluation prompt")
    sp.add_argument("--model", required=True, help="registered model adapter")
    sp.add_argument("--model-path", required=True, help="base weights, or a fine-tuned output folder")
    sp.add_argument("--prompts", required=True, help="prepared evaluation prompts (eval.jsonl)")
    sp.add_argument("--per-prompt", type=int, default=32, help="samples (fixed seeds) per prompt, at least 2")
    sp.add_argument("--steps", type=int, default=40, help="Heun steps")
    sp.add_argument("--guidance-scale", type=float, default=1.0, help="CFG scale (1: none)")
    sp.add_argument("--settings", help="fine-tuning settings YAML whose model: section (resolution, precision, ...) applies")
    sp.add_argument("--stream", type=int, default=0,
                    help="noise stream: 0 = the evaluation noise (default); 1, 2, ... independent draws (the tilted-law pool)")
    sp.add_argument("--out", required=True, help="samples .safetensors")
    sp.set_defaults(func=_sample)

    tt = command("tilt-truth", help="the tilted law p* ∝ p_base e^{λr} by importance sampling of a base sample pool")
    tt.add_argument("--pool", required=True, help="base samples of an independent noise stream (`eam sample --stream 1`)")
    tt.add_argument("--reward", required=True, help="NAME=WEIGHTS_DIR (or NAME) of the reward that defines the tilt")
    tt.add_argument("--lam", type=float, required=True, help="reward multiplier λ (0: p* is the base)")
    tt.add_argument("--metric", action="append", required=True, help="NAME=WEIGHTS_DIR (or NAME): E_p*[metric] ± SE")
    tt.add_argument("--features", required=True, help="NAME=DIR of the model whose features the distance to p* uses")
    tt.add_argument("--base-samples", required=True, help="the base's evaluation samples (their distance to p*)")
    tt.add_argument("--per-prompt", type=int, default=32, help="size per prompt of the resampled p* sets (default 32)")
    tt.add_argument("--seed", type=int, default=0, help="seed of the resampling")
    tt.add_argument("--out", required=True, help="folder for truth.json, pstar_a.safetensors, pstar_b.safetensors")
    tt.set_defaults(func=_tilt_truth)

    sc = command("score", help="every metric on a sample set")
    sc.add_argument("--samples", required=True, help="sample set (`eam sample`)")
    sc.add_argument("--base-samples", required=True, help="the base's sample set of the same seeds (paired distances)")
    sc.add_argument("--metric", action="append", required=True, help="NAME=WEIGHTS_DIR (or NAME for no weights)")
    sc.add_argument("--features", required=True, help="NAME=DIR of the classifier for the distance to the base")
    sc.add_argument("--pstar", default=None, help="resampled p* set (`eam tilt-truth`'s pstar_a): energy distance to it")
    sc.add_argument("--out", required=True, help="scores JSON")
    sc.set_defaults(func=_score)

    ls = command("list", help="the registered model adapters and rewards, with their declared traits")
    ls.add_argument("--json", action="store_true", help="as JSON (what the workflow checks config names against)")
    ls.set_defaults(func=_list)

    fr = command("finetune-report", help="figures and tables of a fine-tuning benchmark")
    fr.add_argument("--runs", nargs="+", required=True, help="fine-tuning run folders")
    fr.add_argument("--scores", nargs="+", required=True, help="their score files, in the same order")
    fr.add_argument("--base-scores", required=True, help="the base's score file")
    fr.add_argument("--grid", nargs="*", help="LABEL=SAMPLES rows of the sample grid")
    fr.add_argument("--truth", nargs="*", help="tilted-law estimates (`eam tilt-truth`'s truth.json), one per (reward, λ)")
    fr.add_argument("--out", required=True, help="output folder for the figures and tables")
    fr.set_defaults(func=_finetune_report)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, KeyError, OSError, FloatingPointError, TypeError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"eam {args.command}: error: {msg}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
