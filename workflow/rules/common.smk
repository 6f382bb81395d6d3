import shutil
from pathlib import Path

from snakemake.exceptions import WorkflowError


def validate_config(config, schema_path):
    """The config against its schema, the first problem as one line naming the key (config/README.md lists them)."""
    import jsonschema
    import yaml

    with open(schema_path) as f:
        schema = yaml.safe_load(f)
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(config))
    if error is not None:
        key = ".".join(str(k) for k in error.absolute_path) or "(top level)"
        raise WorkflowError(f"config {key}: {error.message.splitlines()[0]} (see config/README.md)")


TRAINED_REWARDS = ["digit_classifier", "heldout_classifier", "digit_clip"]  # digits rewards whose weights the DAG trains


def check_registered_names(config):
    """The digits and text-to-image sections' model and reward names against the registry (`eam list`), in one
    line; where Snakemake runs without `eam` importable the jobs check them."""
    digits, t2i = config.get("digits") or {}, config.get("t2i") or {}
    if not (digits or t2i):
        return
    try:
        from eam.registry import catalogue

        cat = catalogue()
    except ImportError:  # a bare Snakemake (e.g. --sdm conda): eam or its dependencies are not importable here
        return

    def registered(kind, domain, **traits):
        return [n for n, t in cat[kind].items() if t["domain"] == domain and all(t[k] == v for k, v in traits.items())]

    # a digits reward with weights must be one the DAG trains (TRAINED_REWARDS); the others need none
    digit_rewards = [n for n in registered("reward", "digits") if n in TRAINED_REWARDS or not cat["reward"][n]["weights"]]
    checks = [(f"digits.{key}", digits.get(key, []), digit_rewards, "digits reward") for key in ("rewards", "metrics")]
    checks += [("t2i.model", [t2i["model"]] if "model" in t2i else [], registered("model", "image"), "image model"),
               ("t2i.rewards", t2i.get("rewards", []), registered("reward", "image"), "image reward"),
               ("t2i.metrics", t2i.get("metrics", []), registered("reward", "image"), "image reward"),
               ("t2i.features", [t2i["features"]] if "features" in t2i else [],
                registered("reward", "image", features=True), "image reward with features"),
               ("t2i.weights", list(t2i.get("weights") or {}), registered("reward", "image"), "image reward")]
    for key, given, allowed, what in checks:
        for name in given:
            if name not in allowed:
                raise WorkflowError(f"config {key}: {name!r} is not a registered {what}; registered: "
                                    f"{', '.join(allowed)} (`eam list`)")


# before anything below reads the config; the schema beside the Snakefile, whatever --directory is
validate_config(config, Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml")
check_registered_names(config)


RESULTS = "results"
ENV = "../../environment.yml"  # every rule's software (the same pins as pyproject.toml), for --sdm conda
REPORT_FILES = ["reward_vs_time.png", "reward_vs_nfe.png", "tradeoff.png", "samples.png", "table.csv", "table.md",
                "table.tex", "time_to_threshold.csv", "time_to_quality.md", "time_to_quality.png"]
MODEL_FILES = ["config.json", "model.safetensors"]
RUN = "{method}/{reward}/lam{lam}/seed{seed}"
TRUTH = "{reward}/lam{lam}"
TRUTH_FILES = ["truth.json", "pstar_a.safetensors", "pstar_b.safetensors"]


def parent(path):
    """The folder of an input or output file (a command's --out or --model-path)."""
    return str(Path(path).parent)


def grid_args(paths, methods, lambdas):
    """`--grid` of the report: the base's samples, then each method's at the largest λ (first seed)."""
    top = max(lambdas)
    return " ".join([f"base={paths[0]}", *(f"{m.upper()}_lam{top}={p}" for m, p in zip(methods, paths[1:]))])


def check_files(paths, what):
    """Fail at parse time, in one line, when a configured input file is missing."""
    for p in paths:
        if not Path(p).is_file():
            raise WorkflowError(f"{what} {p} not found; add it or remove it from config/config.yaml")


def _settings(path):
    import yaml

    try:
        with open(path) as f:
            return yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}, line {mark.line + 1}" if mark else path
        raise WorkflowError(f"{where}: not valid YAML ({getattr(e, 'problem', None) or e})") from None


def check_settings(path):
    """A fine-tuning settings file, checked when the DAG is built rather than when the first job reads it."""
    settings, package = _settings(path), _eam_package()
    if package is None:
        return
    try:
        package.FinetuneConfig.from_dict(settings)
    except (ValueError, TypeError) as e:
        raise WorkflowError(f"{path}: {e}") from None


def _eam_package():
    """The installed `eam` package, or None where Snakemake runs without it (e.g. --sdm conda from a bare
    Snakemake): then settings are checked by the first job that reads them, and defaults come from the schema's
    documentation (the EAM variant `residual`)."""
    try:
        import eam.finetune

        return eam.finetune
    except ImportError:
        return None


def settings_anchor_batches(path):
    """The anchor batches a settings file asks of `corrected` (eam.anchor_batches; null: the default, §5.6)."""
    return (_settings(path).get("eam") or {}).get("anchor_batches")


def settings_base_score(path):
    """The EAM variant a fine-tuning settings file selects (its eam.base_score, else the default)."""
    chosen = (_settings(path).get("eam") or {}).get("base_score")
    if chosen:
        return chosen
    package = _eam_package()
    return package.EAMConfig().base_score if package else "residual"


# `corrected`: its correction network is fitted as long as a run (docs/method.md §5.5; its fit error is taken out to
# first order by the anchor, §5.6)
CORRECTION_FIT = 1


def correction_fit_args(path):
    """The correction fit's length: CORRECTION_FIT times the settings' NFE budget, or else its iterations."""
    settings, package = _settings(path), _eam_package()
    budget, iters = settings.get("budget_nfe"), settings.get("iters")
    if package is not None:
        cfg = package.FinetuneConfig.from_dict(settings)
        budget, iters = cfg.budget_nfe, cfg.iters
    # its evaluation reward means nothing (λ = 0 on base samples): evaluated only at the start and the end
    if budget is not None:
        n = CORRECTION_FIT * int(budget)
        return f"--set budget_nfe={n} --set eval_every_nfe={n}"
    return f"--iters {CORRECTION_FIT * int(iters)} --set eval_every={CORRECTION_FIT * int(iters)}" if iters is not None else ""


onstart:
    # the slurm executor otherwise fails on its first submission with "No such file or directory: 'sacct'"
    plugin = workflow.executor_plugin
    if plugin is not None and plugin.name == "slurm" and not shutil.which("sbatch"):
        raise WorkflowError(
            "the slurm profile needs SLURM's commands (sbatch, squeue) on PATH and none are installed here; "
            "run `snakemake --cores N all` on this machine, or submit from a SLURM login node"
        )


# -- digits (workflow/rules/digits.smk) ----------------------------------------------------------------
DIG = config.get("digits") or {}
DRES = f"{RESULTS}/digits"
def run_list(methods, seeds, control_seeds):
    """method × reward × λ × seed; λ = 0 (the no-reward control) on the first `control_seeds` seeds (null: all)."""
    return [RUN.format(method=m, reward=r, lam=lam, seed=s) for m in methods for r in DIG.get("rewards", [])
            for lam in DIG.get("lambdas", []) for s in (seeds[:control_seeds] if lam == 0 and control_seeds else seeds)]


# ablations (e.g. eam-endpoint: EAM with the old base-score estimator) run on the first seed only
RUNS = [*run_list(DIG.get("methods", []), DIG.get("seeds", []), DIG.get("control_seeds")),
        *run_list(DIG.get("ablations") or [], DIG.get("seeds", [])[:1], None)]
CORRECTION = f"{DRES}/models/correction"  # `corrected`'s correction network: one per base, shared by every run
ANCHOR = f"{DRES}/models/anchor.safetensors"  # and its anchor (docs/method.md §5.6), shared the same way


def needs_correction(method):
    """Whether an EAM run (eam: the settings file's variant; eam-VARIANT) uses the correction network."""
    if not method.startswith("eam"):
        return False
    return (method.partition("-")[2] or settings_base_score(DIG["settings"])) == "corrected"


def needs_anchor(method):
    """Whether a `corrected` run subtracts the shared anchor (unless its settings set eam.anchor_batches: 0)."""
    return needs_correction(method) and settings_anchor_batches(DIG["settings"]) != 0


def reward_dir(name):
    """Weights folder of a trained digits reward; None for analytic rewards."""
    return f"{DRES}/models/{name}" if name in TRAINED_REWARDS else None


def metric_args(names):
    return " ".join(f"--metric {n}={reward_dir(n)}" if reward_dir(n) else f"--metric {n}" for n in names)


def truth_dir(run):
    """The tilted-law folder of a run `method/reward/lamL/seedS`."""
    _, reward, lam, _ = run.split("/")
    return f"{DRES}/truth/{reward}/{lam}"


def model_dir(w):
    return f"{DRES}/models/base" if w.run == "base" else f"{DRES}/runs/{w.run}"


# -- Gaussian mixtures (workflow/rules/gmm.smk) --------------------------------------------------------
GMM = config.get("gmm") or {}


def gmm_method_args(wildcards):
    method, _, base_score = wildcards.variant.partition("-")
    args = f"--method {method}"
    if base_score:
        args += f" --base-score {base_score}"
        if base_score in ("endpoint", "residual", "corrected"):
            args += f" --delta {GMM.get('delta', 0.05)}"
    if GMM.get("iters"):
        args += f" --iters {GMM['iters']}"
    if GMM.get("eval_every"):
        args += f" --set eval_every={GMM['eval_every']}"
    return args


# -- eam bench (workflow/rules/bench.smk) --------------------------------------------------------------
BENCH = {name: b for name, b in (config.get("bench") or {}).items() if b}  # a null entry is switched off
BRES = f"{RESULTS}/bench"
RANDOM_MARKER = {"sd3-medium": "model_index.json", "sd15": "model_index.json", "clipscore": "config.json",
                 "pickscore": "config.json"}


def bench_path(path):
    """The folder a model_path / reward_path names ("random:ARCH": the random-weights folder)."""
    return f"{BRES}/weights/{path[7:]}" if path and path.startswith("random:") else path


def weight_files(name):
    """Weight folders the DAG makes: random architectures, and folders under results/ (e.g. the
    digits base model); other paths (HF repo ids, downloaded folders) are read as they are."""
    files = []
    for path in (BENCH[name]["model_path"], BENCH[name].get("reward_path")):
        if path and path.startswith("random:"):
            files.append(f"{bench_path(path)}/{RANDOM_MARKER[path[7:]]}")
        elif path and path.startswith(f"{RESULTS}/"):
            files.append(f"{path}/config.json")
    return files


def bench_inputs(w):
    names = list(BENCH)
    before = names[: names.index(w.name)]
    return [*OTHER_TARGETS, *(f for n in names for f in weight_files(n)),
            *(f"{BRES}/{n}/bench.json" for n in before[-1:])]


# -- text-to-image (workflow/rules/t2i.smk) -----------------------------------------------------------
T2I = config.get("t2i") or {}
TRES = f"{RESULTS}/{T2I.get('name')}"
TRUNS = expand(RUN, method=T2I.get("methods", []), reward=T2I.get("rewards", []), lam=T2I.get("lambdas", []),
               seed=T2I.get("seeds", []))
T2I_WEIGHTS = T2I.get("weights") or {}
T2I_TRUTH = T2I.get("truth")
T2I_RUNTIME = T2I.get("runtime_min") or {}
T2I_MEM = T2I.get("mem_mb", 64000)
GPU = T2I.get("gpus", 1)
T2I_FEATURES = f"{T2I.get('features')}={T2I_WEIGHTS[T2I['features']]}" if T2I_WEIGHTS.get(T2I.get("features")) \
    else T2I.get("features")


def weights_arg(name, flag):
    """`FLAG PATH` for a reward whose weights folder is configured; nothing for the HF cache."""
    return f"{flag} {T2I_WEIGHTS[name]}" if T2I_WEIGHTS.get(name) else ""


def t2i_metric_args():
    return " ".join(f"--metric {n}={T2I_WEIGHTS[n]}" if T2I_WEIGHTS.get(n) else f"--metric {n}" for n in T2I["metrics"])


def t2i_pstar(w):
    """The p* set a run's samples are compared with (none for the base, or without `truth:`)."""
    if w.run == "base" or not T2I_TRUTH:
        return []
    _, reward, lam, _ = w.run.split("/")
    return f"{TRES}/truth/{reward}/{lam}/pstar_a.safetensors"
